"""Samplers by name, as in Dassl: ``RandomSampler``, ``SequentialSampler``, ``RandomDomainSampler``.

Unlike torch's and Dassl's samplers, the random ones here draw their order from a private
generator seeded by ``(seed, number of passes started)``. The order of every epoch therefore
depends only on the seed and the epoch, and a resumed run can restore it (``state_dict``).

With several processes (torchrun), every rank computes the same global order and keeps every
``world``-th index from position ``rank``: with per-rank batches of ``global batch / world``, rank r's
k-th batch is a strided share of the global k-th batch, so the ranks together see exactly the
single-process batches.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from engine.data.datasets import Datum
from engine.utils.errors import UserError

SAMPLERS = ("RandomSampler", "SequentialSampler", "RandomDomainSampler")


class _ShardedSampler(Sampler):
    """Keeps this rank's strided share of a global order (and can skip the start of a pass)."""

    rank, world = 0, 1
    _skip = 0

    def shard(self, rank: int, world: int) -> "_ShardedSampler":
        self.rank, self.world = rank, world
        return self

    def skip_next(self, n: int) -> None:
        """Drop the first ``n`` indices (of this rank's share) of the next pass: a run resumed in the
        middle of an epoch replays the pass and skips what it already trained on."""
        self._skip = int(n)

    def _share(self, order: list[int]) -> list[int]:
        share = order[self.rank:: self.world] if self.world > 1 else order
        skip, self._skip = self._skip, 0
        return share[skip:]

    def _share_len(self, n: int) -> int:
        return len(range(self.rank, n, self.world))


class _SeededSampler(_ShardedSampler):
    """Base for samplers whose n-th pass is a pure function of (seed, n)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) if seed >= 0 else int(torch.randint(2**31, ()).item())
        self.passes = 0

    def _next_generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.passes) % 2**63)
        self.passes += 1
        return g

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.passes = int(state["passes"])


class RandomSampler(_SeededSampler):
    """A new random permutation of the whole data source at every pass."""

    def __init__(self, data_source: Sequence[Datum], seed: int = 0) -> None:
        super().__init__(seed)
        self.n = len(data_source)

    def __iter__(self) -> Iterator[int]:
        return iter(self._share(torch.randperm(self.n, generator=self._next_generator()).tolist()))

    def __len__(self) -> int:
        return self._share_len(self.n)


class SequentialSampler(_ShardedSampler):
    """Indices in order (evaluation); with several ranks, each evaluates a strided share."""

    def __init__(self, data_source: Sequence[Datum]) -> None:
        self.n = len(data_source)

    def __iter__(self) -> Iterator[int]:
        return iter(self._share(list(range(self.n))))

    def __len__(self) -> int:
        return self._share_len(self.n)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class RandomDomainSampler(_SeededSampler):
    """Every batch holds ``n_domain`` domains equally (all domains when ``n_domain <= 0``).

    ``batch_size`` need not divide evenly: the remainder goes one image each to the first domains
    of the batch (256 over 3 sources is 86 + 85 + 85). Two epoch definitions:

    - ``"smallest"`` (Dassl): sample without replacement and stop when a domain of the next batch
      has too few images left, so an epoch is as long as the smallest domain allows;
    - ``"all"``: ``len(data_source) // batch_size`` batches, i.e. one pass over the images in
      total; each domain's images come from its own shuffled stream, reshuffled whenever it runs
      out, so small domains are repeated and large ones keep their share.
    """

    def __init__(self, data_source: Sequence[Datum], batch_size: int, n_domain: int = 0,
                 epoch: str = "all", seed: int = 0) -> None:
        super().__init__(seed)
        self.domain_dict: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(data_source):
            self.domain_dict[item.domain].append(i)
        self.domains = sorted(self.domain_dict)
        if n_domain <= 0 or n_domain > len(self.domains):
            n_domain = len(self.domains)
        if batch_size < n_domain:
            raise UserError(f"batch size {batch_size} is smaller than the {n_domain} domains each batch must hold")
        if epoch not in ("all", "smallest"):
            raise UserError(f"DATALOADER.DOMAIN_EPOCH must be 'all' or 'smallest', got '{epoch}'")
        self.n_domain = n_domain
        self.batch_size = batch_size
        self.epoch = epoch
        self.n_total = len(data_source)
        self._length = self._count_length()

    def _split(self) -> list[int]:
        base, extra = divmod(self.batch_size, self.n_domain)
        return [base + (1 if i < extra else 0) for i in range(self.n_domain)]

    def _shuffled(self, domain: int, g: torch.Generator) -> list[int]:
        idxs = self.domain_dict[domain]
        return [idxs[i] for i in torch.randperm(len(idxs), generator=g).tolist()]

    def _batches(self, g: torch.Generator) -> Iterator[list[int]]:
        pools = {d: self._shuffled(d, g) for d in self.domains}
        cursor = {d: 0 for d in self.domains}
        n_batches = self.n_total // self.batch_size if self.epoch == "all" else None
        made = 0
        while n_batches is None or made < n_batches:
            chosen = [self.domains[i] for i in torch.randperm(len(self.domains), generator=g)[: self.n_domain].tolist()]
            chosen.sort()
            batch = []
            for d, n in zip(chosen, self._split()):
                if cursor[d] + n > len(pools[d]) and self.epoch == "smallest":
                    return
                take = pools[d][cursor[d]: cursor[d] + n]
                cursor[d] += len(take)
                while len(take) < n:  # "all": the domain's pass is over, start a new shuffled one
                    pools[d] = self._shuffled(d, g)
                    cursor[d] = min(n - len(take), len(pools[d]))
                    take += pools[d][: cursor[d]]
                batch += take
            made += 1
            yield batch

    def _count_length(self) -> int:
        if self.epoch == "all":
            return (self.n_total // self.batch_size) * self.batch_size
        g = torch.Generator()
        g.manual_seed(self.seed)
        return sum(len(b) for b in self._batches(g))

    def __iter__(self) -> Iterator[int]:
        g = self._next_generator()
        return iter(self._share([i for batch in self._batches(g) for i in batch]))

    def __len__(self) -> int:
        return self._share_len(self._length)


def build_sampler(sampler_type: str, data_source: Sequence[Datum], batch_size: int = 32, n_domain: int = 0,
                  domain_epoch: str = "all", seed: int = 0, rank: int = 0, world: int = 1) -> Sampler:
    """Build a sampler by its Dassl name; ``batch_size`` is the global batch size, and with
    ``world > 1`` the sampler yields rank ``rank``'s share (see module docstring)."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source, seed=seed).shard(rank, world)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source).shard(rank, world)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain, epoch=domain_epoch, seed=seed).shard(rank, world)
    raise UserError(f"unknown sampler '{sampler_type}' (DATALOADER.*.SAMPLER); choose from {', '.join(SAMPLERS)}")
