"""Domain readers: each turns one FER dataset on disk into train/test lists with canonical labels.

A reader is registered under the domain name users write in ``DATASET.SOURCE_DOMAINS`` /
``TARGET_DOMAINS``. A name no reader claims falls back to the generic folder reader when
``<DATASET.ROOT>/<name>`` is a folder, so users can add their own data without code.
"""
from __future__ import annotations

import os.path as osp
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.registry import Registry
from engine.utils.errors import UserError

DOMAIN_REGISTRY = Registry("DOMAIN READER")

class Item(NamedTuple):
    """One labelled image of a domain: its path, canonical class index and optional face box
    ``(left, upper, right, lower)`` in pixels, cropped when the image is read (AffectNet's lists)."""

    impath: str
    label: int
    crop: tuple[int, int, int, int] | None = None


@dataclass
class DomainSplits:
    """A domain's labelled images per split, labels in the canonical order."""

    train: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)
    val: list[Item] | None = None


class DomainReader:
    """Base class. Subclasses implement :meth:`read`; ``self.domain_dir`` is where the data lives."""

    def __init__(self, cfg, name: str, root: str) -> None:
        self.cfg = cfg
        self.name = name
        self.root = root

    @property
    def domain_dir(self) -> str:
        return osp.join(self.root, self.name)

    def read(self) -> DomainSplits:
        raise NotImplementedError


def build_domain_reader(cfg, name: str) -> DomainReader:
    """The reader registered under ``name``, else the folder reader for ``<ROOT>/<name>``."""
    from datasets.readers.folder import FolderDomain

    root = cfg.DATASET.ROOT
    if name in DOMAIN_REGISTRY:
        return DOMAIN_REGISTRY.get(name)(cfg, name, root)
    if osp.isdir(osp.join(root, name)):
        return FolderDomain(cfg, name, root)
    raise UserError(f"unknown domain '{name}': no reader is registered under that name "
                    f"({', '.join(DOMAIN_REGISTRY.registered_names())}) and there is no folder {osp.join(root, name)}")
