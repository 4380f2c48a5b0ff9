"""What the epoch loop must remember to resume exactly, and to notice a non-finite loss cheaply.

:class:`LoaderCursor` walks a training loader, restarting it when it runs out, and knows where it is:
the sampler's state when the current pass began and how many batches of the pass were consumed. A run
killed in the middle of an epoch restores that position: the sampler replays the same pass (its order
is a function of seed and pass number) and skips the batches already trained on; augmentation is seeded
per sample, so the remaining batches are the ones the unbroken run would have seen.

:class:`NonFiniteWatch` records, on the device, the first step whose losses were not finite and their
values, so the loop learns about it at its next synchronisation point (a log line, a checkpoint, the
end of an epoch) without reading the loss back at every step.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch


class LoaderCursor:
    """Batches from ``loader`` without end (a new pass when one runs out), with a resumable position."""

    def __init__(self, loader: Any, state: dict[str, Any] | None = None) -> None:
        self.loader = loader
        self.consumed = 0
        self._iter: Iterator | None = None
        self._pass_start: dict[str, Any] | None = None
        if state is not None:
            # Replay the interrupted pass from its start, minus the batches already consumed.
            loader.sampler.load_state_dict(state["pass_start"])
            if state["consumed"]:
                loader.sampler.skip_next(state["consumed"] * loader.batch_size)
            self.consumed = int(state["consumed"])
            if state.get("generator") is not None and hasattr(loader, "generator"):
                loader.generator.set_state(state["generator"])

    def _start_pass(self) -> None:
        self._pass_start = self.loader.sampler.state_dict()
        self._iter = iter(self.loader)

    def next(self) -> dict:
        if self._iter is None:
            self._start_pass()  # keeps a restored ``consumed``
        try:
            batch = next(self._iter)
        except StopIteration:
            self.consumed = 0
            self._start_pass()
            batch = next(self._iter)
        self.consumed += 1
        return batch

    def state(self) -> dict[str, Any]:
        """Where the cursor is; a cursor that has not started reports the sampler's next pass."""
        generator = getattr(self.loader, "generator", None)
        return {"pass_start": self._pass_start if self._iter is not None else self.loader.sampler.state_dict(),
                "consumed": self.consumed if self._iter is not None else 0,
                "generator": generator.get_state() if generator is not None else None}


class NonFiniteWatch:
    """The first step (epoch, batch) whose loss terms were not all finite, kept on the device."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._first: torch.Tensor | None = None  # epoch * 10**7 + batch index, -1 while all finite
        self._values: torch.Tensor | None = None

    def observe(self, losses: dict[str, Any], epoch: int, batch_idx: int) -> None:
        tensors = {k: v for k, v in losses.items() if torch.is_tensor(v)}
        if not tensors:
            return
        values = torch.stack([v.detach().float().reshape(()) for v in tensors.values()])
        if self._first is None or list(tensors) != self.names:
            self.names = list(tensors)
            self._first = torch.full((), -1, dtype=torch.long, device=values.device)
            self._values = torch.zeros_like(values)
        newly = (~torch.isfinite(values).all()) & (self._first < 0)
        self._first.masked_fill_(newly, epoch * 10**7 + batch_idx)  # a scalar argument: no host transfer
        self._values = torch.where(newly, values, self._values)

    def first_bad(self) -> tuple[int, int, dict[str, float]] | None:
        """``(epoch, batch index, loss terms)`` of the first non-finite step, or None (synchronises)."""
        if self._first is None:
            return None
        code = int(self._first.item())
        if code < 0:
            return None
        return code // 10**7, code % 10**7, dict(zip(self.names, self._values.cpu().tolist()))
