"""Domain readers: each turns one FER dataset on disk into train/test lists with canonical labels.

A reader is registered under the domain name users write in ``DATASET.SOURCE_DOMAINS`` /
``TARGET_DOMAINS``. A name no reader claims falls back to the generic folder reader when
``<DATASET.ROOT>/<name>`` is a folder, so users can add their own data without code.

A domain lives at ``<DATASET.ROOT>/<name>``. A reader that declares :attr:`DomainReader.config_keys` gets
its own config node ``DATASET.<NAME>`` (upper-cased domain name): those keys and ``DIR``; when ``DIR`` is
set the domain is read from there instead (``DATASET.RAFDB.DIR /data/RAF-DB``). The ranges of its numeric
keys (:attr:`DomainReader.config_ranges`) join the engine's table of ranges (:mod:`engine.config.checks`).

General keys every reader of listed files honours: ``DATASET.SKIP_MISSING_IMAGES`` (skip images a
label file lists but the disk lacks, with a warning, rather than stop) and ``DATASET.VERIFY_IMAGES``
(decode every image once up front, with a progress bar, so a truncated file is found before training).
"""
from __future__ import annotations

import os.path as osp
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from engine.config import Bounds, CfgNode, register_config_hook, register_value_rules
from engine.registry import Registry

DOMAIN_REGISTRY = Registry("DOMAIN READER")


@register_config_hook
def add_reader_config(cfg: CfgNode) -> None:
    """The keys every reader honours, and each registered reader's ``DATASET.<NAME>`` node."""
    # Images a label file lists but the disk lacks: False = stop with an error naming them,
    # True = skip them with a warning (with VERIFY_IMAGES, undecodable images are skipped too)
    cfg.DATASET.SKIP_MISSING_IMAGES = False
    # Decode every listed image once when the domain is read (slow on large sets; try it with --no-train)
    cfg.DATASET.VERIFY_IMAGES = False
    for name, reader in DOMAIN_REGISTRY:
        if reader.config_keys is not None:
            # DIR: the domain's folder ("" = DATASET.ROOT/<name>)
            cfg.DATASET[name.upper()] = CfgNode({"DIR": "", **reader.config_keys})
            register_value_rules(reader.option_ranges(name))


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
    """Base class. Subclasses implement :meth:`read`; ``self.domain_dir`` is where the data lives.

    ``config_keys``: the reader's own settings with their defaults (``{"IMAGE_VARIANT": "aligned"}``), which
    become ``DATASET.<NAME>.*`` beside ``DIR``; ``None`` (the default): no node of its own. ``config_ranges``:
    the ranges of the numeric ones, checked with every other key's (``engine.config.check_config_values``).
    """

    config_keys: ClassVar[dict[str, Any] | None] = None
    # The allowed values of numeric config_keys: {"TRAIN_CAP_PER_CLASS": Bounds(low=0, integer=True)}
    config_ranges: ClassVar[dict[str, Bounds]] = {}

    def __init__(self, cfg, name: str, root: str) -> None:
        self.cfg = cfg
        self.name = name
        self.root = root

    @classmethod
    def option_ranges(cls, name: str) -> dict[str, Bounds]:
        """``config_ranges`` under their full keys, ``DATASET.<NAME>.<KEY>``."""
        return {f"DATASET.{name.upper()}.{key}": bounds for key, bounds in cls.config_ranges.items()}

    @property
    def options(self) -> CfgNode | None:
        """The reader's own config node ``DATASET.<NAME>``, or None when it declares none."""
        node = self.cfg.DATASET.get(self.name.upper())
        return node if isinstance(node, CfgNode) else None

    @property
    def dir_override(self) -> str:
        """``DATASET.<NAME>.DIR`` when the reader has a node of its own and it is set, else ""."""
        return self.options.get("DIR", "") if self.options is not None else ""

    @property
    def domain_dir(self) -> str:
        """``DATASET.<NAME>.DIR`` when it is set, else ``<root>/<name>``."""
        override = self.dir_override
        return osp.expanduser(override) if override else osp.join(self.root, self.name)

    def read(self) -> DomainSplits:
        raise NotImplementedError
