"""Multi-process training with ``torchrun --nproc_per_node N train.py ...`` (and several machines, see the README).

The design keeps single-process semantics: N processes compute the losses and gradients one process computes on
the same global batch.

- Every rank builds the same model from the same seed and the same global data order; each takes a strided share
  of every global batch (``DATALOADER.*.BATCH_SIZE`` is the global batch size, :mod:`engine.data.samplers`).
- A trainer's trained parts are one module whose forward a training step calls, wrapped by :func:`data_parallel`
  in ``DistributedDataParallel`` (DDP): DDP averages the gradients over ranks during the backward pass, in buckets
  that overlap with it, and checks that every rank trains the same parameters.
- A loss that couples samples (an MMD between two batches, a mean per source, a class-confusion matrix,
  batch-level pseudo-label weights) is computed by every rank on every rank's rows, gathered by
  :func:`gather_rows`, which sends the gradient back to the rows each rank computed (see its docstring for why
  the averaged gradient is then the one-process gradient). Batch-norm statistics are those of the global batch
  (:class:`SyncedBatchNorm`).
- Evaluation gathers every rank's predictions, so metrics are computed on the whole test set; only rank 0 writes
  logs, checkpoints and results.
"""
from __future__ import annotations

import inspect
import os
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from engine.utils.errors import UserError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def training_device(use_cuda: bool = True) -> torch.device:
    """Where this process trains and its batches are made: its CUDA device (``LOCAL_RANK``'s under torchrun,
    set by :func:`init_distributed`) when ``use_cuda`` (``USE_CUDA``) and a GPU is present, else the CPU."""
    if use_cuda and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(use_cuda: bool = True) -> None:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


def shard_batch_size(batch_size: int) -> int:
    """The per-rank share of a global batch size (which must divide evenly)."""
    n = world_size()
    if batch_size % n:
        raise UserError(f"batch size {batch_size} does not split evenly over {n} processes")
    return batch_size // n


def broadcast_parameters(modules) -> None:
    """Make every rank start from rank 0's weights (and buffers)."""
    if world_size() == 1:
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def _communication_device() -> torch.device:
    # NCCL moves GPU tensors only, gloo CPU tensors
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor's rows from every rank (ranks may hold different numbers of rows); no gradient."""
    if world_size() == 1:
        return tensor
    device = _communication_device()
    local = tensor.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
    largest = int(max(s.item() for s in sizes))
    padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)]).to(tensor.device)


def gather_counts(counts: Sequence[int]) -> list[list[int]]:
    """Every rank's ``counts`` (a list of the same length on each rank), rank by rank: what :func:`gather_rows`
    needs when ranks hold different numbers of rows (one collective and a read back to the host)."""
    if world_size() == 1:
        return [list(counts)]
    local = torch.tensor(list(counts), dtype=torch.long, device=_communication_device())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return [part.tolist() for part in parts]


class _GatherRows(torch.autograd.Function):
    """Forward: every rank's rows, concatenated in rank order. Backward: this rank's rows of the incoming gradient,
    times the number of ranks (see :func:`gather_rows`)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        device, me, world = _communication_device(), rank(), len(counts)
        rows = local.detach().to(device).contiguous()
        largest = max(counts)
        if rows.shape[0] < largest:  # all_gather moves equal shapes: pad, then cut each rank's rows back out
            rows = torch.cat([rows, rows.new_zeros((largest - rows.shape[0], *rows.shape[1:]))])
        parts = [torch.empty_like(rows) for _ in range(world)]
        dist.all_gather(parts, rows)
        ctx.start = sum(counts[:me])
        ctx.stop = ctx.start + counts[me]
        ctx.world = world
        return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(local.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad[ctx.start: ctx.stop] * ctx.world, None


def gather_rows(tensor: torch.Tensor, counts: Sequence[int] | None = None) -> torch.Tensor:
    """Every rank's rows of ``tensor``, concatenated in rank order, with the gradient flowing back to the rows this
    rank computed: what a loss that couples the samples of a batch takes, so that N processes compute the loss of
    the whole global batch, as one process does. In one process: ``tensor`` itself.

    ``counts``: every rank's number of rows, in rank order (:func:`gather_counts`); by default every rank holds as
    many rows as this one, as the training batches do (every global batch is shared equally). The rows come rank
    after rank, not in the order of the global batch (the samplers deal rows to ranks in turn): a permutation of the
    batch, which the losses here do not see (means, sums, kernel matrices and confusion matrices are invariant to
    it, up to rounding), provided that every tensor a loss pairs row by row (features, labels, domains) is gathered
    alike.

    Gradient scale. Every rank computes the same loss ``L`` from the gathered tensors, and DDP averages the
    ranks' gradients: the optimiser receives ``(1/N) sum_r g_r``. Two kinds of path lead from a parameter to ``L``:

    - through the rows of rank ``r`` (an image's feature): only rank ``r`` computed them, so only rank ``r``'s
      backward reaches the parameters through them. For the average to hold their whole contribution, rank ``r``
      must send ``N`` times ``dL/d(row)`` into its rows: this backward multiplies by the number of ranks. That is the
      exact adjoint of the gather (the sum over ranks of each rank's gradient for the row, as
      ``torch.distributed.nn.functional.all_gather`` computes with a second collective), because every rank's
      gradient for a row is the same when every rank computes the same ``L``; it saves that collective;
    - not through any rank's rows (a prompt learner's class text features, a head applied to the gathered features,
      L_ESS between the prompts): every rank computes the whole ``dL/d(parameter)``, and the average keeps it as it is.

    Scaling the *loss* by ``N`` instead would be right for the first kind and ``N`` times too large for the second.
    A loss that is a mean over the local rows only (no gather) needs nothing either: the average of the ranks' means
    over equal shares is the mean over the global batch. So the rule: gather every input of a coupled loss, compute
    the loss exactly as one process would, and leave its scale alone. It relies on every rank computing the same
    function of the gathered tensor (true of a loss; not of a batch-norm statistic, whose ranks normalise their own
    rows: :class:`SyncedBatchNorm` reduces its gradient over ranks instead)."""
    if world_size() == 1:
        return tensor
    counts = tuple(int(c) for c in counts) if counts is not None else (tensor.shape[0],) * world_size()
    if len(counts) != world_size() or counts[rank()] != tensor.shape[0]:
        raise ValueError(f"gather_rows: counts {counts} do not fit {world_size()} ranks with {tensor.shape[0]} rows "
                         f"on rank {rank()}")
    return _GatherRows.apply(tensor, counts)


def all_ranks_agree(flag: bool) -> bool:
    """Whether ``flag`` is true on every rank (a collective under torchrun): for decisions every rank must take
    alike, such as skipping a step, which would leave the other ranks waiting in DDP's gradient reduction."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=_communication_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


class _NormaliseWithGlobalStatistics(torch.autograd.Function):
    """``y = (x - mean) * invstd * weight + bias`` with the global batch's ``mean`` and ``invstd``, and the backward
    of batch norm over the global batch: its two batch sums (of ``dy`` and ``dy * x_hat``) are summed over ranks.
    The weight's and the bias's gradients are this rank's share (DDP adds the shares up)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,  # type: ignore[override]
                mean: torch.Tensor, invstd: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        x_hat = (x.float() - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.count, ctx.has_bias, ctx.dtype = count, bias is not None, x.dtype
        y = x_hat if weight is None else x_hat * weight.view(shape) + bias.view(shape)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x_hat, weight, invstd = ctx.saved_tensors
        dims, shape = [0, *range(2, x_hat.dim())], [1, -1] + [1] * (x_hat.dim() - 2)
        dy = grad.float()
        # batch sums accumulated in float64, as the CPU kernel of batch norm does: they may cancel heavily
        sums = torch.stack([dy.sum(dims, dtype=torch.float64), (dy * x_hat).sum(dims, dtype=torch.float64)])
        local_sum_dy, local_sum_dy_xhat = sums[0].float(), sums[1].float()
        dist.all_reduce(sums)
        mean_dy, mean_dy_xhat = (sums / ctx.count).float()
        scale = invstd if weight is None else invstd * weight.float()
        grad_x = (dy - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)) * scale.view(shape)
        grad_weight = local_sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_bias = local_sum_dy.to(weight.dtype) if ctx.has_bias else None
        return grad_x.to(ctx.dtype), grad_weight, grad_bias, None, None, None


class SyncedBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch: the per-channel sums of every rank's
    rows are added up, so N processes normalise as one process does on the whole batch, and the running
    statistics follow it; its backward adds up the ranks' batch sums of the gradient as well, so the gradient is
    the one-process gradient too (the exact adjoint: each rank normalises its own rows with the shared statistics,
    so their gradients differ and must be summed, unlike :func:`gather_rows`'s). Ranks may hold different numbers
    of rows, none included, but every rank must call it, in the same order. Statistics and batch sums are
    accumulated in float64 (as the CPU kernel does; sums of gradients can cancel heavily). Evaluation, and a single
    process, use ``nn.BatchNorm``'s computation unchanged.

    ``torch.nn.SyncBatchNorm`` does the same with CUDA kernels, on GPUs only; this one runs on any backend (the CPU
    tests run it on gloo), with the same two all-reduces per layer and step."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected a batch of at least 2 dimensions (N, C, ...), got {input.dim()}")

    @classmethod
    def replacing(cls, bn: _BatchNorm) -> "SyncedBatchNorm":
        """A synced batch norm with ``bn``'s parameters and buffers (the same tensors: optimisers and checkpoint
        keys are unaffected)."""
        synced = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(synced, name, getattr(bn, name))
        return synced.train(bn.training)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        with torch.no_grad():
            x = input.detach().float()
            totals = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64),
                                x.new_full((1,), input.numel() // max(input.shape[1], 1), dtype=torch.float64)])
            dist.all_reduce(totals)
            channels = input.shape[1]
            count = totals[-1]
            mean = totals[:channels] / count
            var = (totals[channels: 2 * channels] / count - mean * mean).clamp_min(0)  # biased: what it normalises
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
            invstd = torch.rsqrt(var + self.eps).float()
        return _NormaliseWithGlobalStatistics.apply(input, self.weight, self.bias, mean.float(), invstd, count)


def sync_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every batch norm inside ``module`` by a :class:`SyncedBatchNorm` on the same tensors (in place;
    returns ``module``). A module reached twice (a compiled wrapper and the module it wraps) is converted once."""
    replaced: dict[int, SyncedBatchNorm] = {}

    def convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, _BatchNorm) and not isinstance(child, SyncedBatchNorm):
                if id(child) not in replaced:
                    replaced[id(child)] = SyncedBatchNorm.replacing(child)
                setattr(parent, name, replaced[id(child)])
            else:
                convert(child)

    convert(module)
    return module


def data_parallel(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """The module a training step calls: ``module`` itself in one process; under torchrun ``module`` with its batch
    norms synced (:func:`sync_batch_norms`), wrapped in ``DistributedDataParallel``, which averages the gradients of
    its parameters over ranks during the backward pass.

    ``module`` holds every part the step trains (and may hold frozen ones, and compiled forms of its parts: compile
    the inner module, never the DDP wrapper, as torch's documentation advises) and is called once per step; the
    trainer registers and saves the trained parts themselves, so checkpoints keep their keys. Its buffers are not
    broadcast at every step (DDP's default): every rank computes the same ones (batch-norm statistics of the global
    batch, statistics of gathered features). ``find_unused_parameters``: for a module some of whose parameters may
    get no gradient in a step (DUML's classifier of a source absent from the batch); its forward must then return
    the loss, so that DDP finds them from it."""
    if world_size() == 1:
        return module
    sync_batch_norms(module)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # buffers are synced once, at the start: `forward_sync_buffers` (torch >= 2.14) replaces `broadcast_buffers`
    new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
                                   **no_buffer_sync)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
