"""Multi-process training with ``torchrun --nproc_per_node N train.py ...``.

The design keeps single-process semantics:

- every rank builds the same model from the same seed and the same global data order; each takes a
  strided share of every global batch (``DATALOADER.*.BATCH_SIZE`` is the global batch size);
- gradients are averaged over ranks after each backward pass (one all-reduce of a flat buffer),
  so a loss that is a mean over the batch gives the single-process gradient;
- evaluation gathers every rank's predictions, so metrics are computed on the whole test set;
- only rank 0 writes logs, checkpoints and results.

Gradients are reduced explicitly rather than through ``DistributedDataParallel``: trainers call their
sub-modules directly (an image encoder here, a prompt learner there), which DDP's wrapper does not see.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

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


def average_gradients(parameters) -> None:
    """All-reduce the gradients of ``parameters`` and divide by the number of ranks."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(modules) -> None:
    """Make every rank start from rank 0's weights (and buffers)."""
    if world_size() == 1:
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor's rows from every rank (ranks may hold different numbers of rows)."""
    if world_size() == 1:
        return tensor
    nccl = dist.get_backend() == "nccl"  # NCCL moves GPU tensors only, gloo CPU tensors
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    local = tensor.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
    largest = int(max(s.item() for s in sizes))
    padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)]).to(tensor.device)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
