"""What keeps a weights file from loading strictly into a network, said in words an error line can quote
(shared by every backbone that loads a local file: the ResNet trunks, DINO's ViT)."""
from __future__ import annotations

from typing import Callable, Mapping

import torch

# How many keys an error message quotes
N_QUOTED = 3


def first_keys(keys: list[str]) -> str:
    """The first :data:`N_QUOTED` of ``keys``, with ``...`` when there are more."""
    return ", ".join(keys[:N_QUOTED]) + (", ..." if len(keys) > N_QUOTED else "")


def mismatched_keys(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                    ignore_unexpected: Callable[[str], bool] = lambda k: False,
                    ignore_missing: Callable[[str], bool] = lambda k: False) -> tuple[list[str], list[str]]:
    """``(problems, wrong_shapes)``: ``problems`` says how many keys of ``state`` are missing, unexpected or of
    another shape than the network's ``own`` (each with the first few keys; empty when ``state`` loads
    strictly), ``wrong_shapes`` the ``"key (shape) (expected ...)"`` of the last kind."""
    missing = [k for k in own if k not in state and not ignore_missing(k)]
    unexpected = [k for k in state if k not in own and not ignore_unexpected(k)]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {what} ({first_keys(keys)})" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if keys]
    return problems, wrong
