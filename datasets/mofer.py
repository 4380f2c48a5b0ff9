"""MO-FER: multi-source, open-set facial expression recognition (``DATASET.NAME MOFER``).

Split construction (shared by every method; docs/datasets.md describes each dataset):

- sources: the train split of every ``DATASET.SOURCE_DOMAINS`` entry, unseen classes removed, labels
  re-indexed to seen indices ``0..K-1`` in canonical order;
- target train (``train_u``): the train split of the one ``DATASET.TARGET_DOMAINS`` entry, all classes,
  *unlabelled*: its items carry label -1. The true labels are kept apart in
  ``target_train_labels`` for diagnostics and never enter a batch;
- target test: the test split of the target, all seven classes; seen classes carry their seen index,
  unseen classes the label ``K`` (the open-set evaluator treats ``label >= K`` as unseen).

The split table is printed and, when a run starts, written to ``OUTPUT_DIR/splits.json``.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from collections import Counter

from tabulate import tabulate

from datasets import synthetic
from datasets.classes import CANONICAL_CLASSES, SHORT_NAMES, resolve_class
from datasets.readers import DomainSplits, build_domain_reader
from engine.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)


def check_domains(cfg) -> tuple[list[str], str]:
    """Sources and target from the config, or a :class:`UserError` saying what is wrong."""
    sources = list(cfg.DATASET.SOURCE_DOMAINS)
    targets = list(cfg.DATASET.TARGET_DOMAINS)
    if len(targets) != 1:
        raise UserError(f"MOFER needs exactly one target domain (DATASET.TARGET_DOMAINS / --target-domains), got {targets}")
    if not sources:
        raise UserError("MOFER needs at least one source domain (DATASET.SOURCE_DOMAINS / --source-domains)")
    target = targets[0]
    if target in sources:
        raise UserError(f"domain '{target}' is both a source and the target; leave it out of the sources")
    duplicates = [d for d, n in Counter(sources).items() if n > 1]
    if duplicates:
        raise UserError(f"source domain(s) listed twice: {', '.join(duplicates)}")
    return sources, target


def resolve_unseen(cfg) -> list[str]:
    """Canonical names of ``DATASET.UNSEEN_CLASSES`` in canonical order."""
    unseen = {resolve_class(name) for name in cfg.DATASET.UNSEEN_CLASSES}
    if len(CANONICAL_CLASSES) - len(unseen) < 2:
        raise UserError(f"DATASET.UNSEEN_CLASSES leaves fewer than two seen classes: {sorted(unseen)}")
    return [c for c in CANONICAL_CLASSES if c in unseen]


def _counts(labels: list[int]) -> dict[str, int]:
    c = Counter(labels)
    return {name: c.get(i, 0) for i, name in enumerate(CANONICAL_CLASSES)}


@DATASET_REGISTRY.register()
class MOFER(DatasetBase):
    """Leave-one-domain-out, hold-out-one-expression FER (see module docstring)."""

    def __init__(self, cfg) -> None:
        sources, target = check_domains(cfg)
        self.source_domains, self.target_domain = sources, target
        self.unseen_classnames = resolve_unseen(cfg)
        self.seen_classnames = [c for c in CANONICAL_CLASSES if c not in self.unseen_classnames]
        self.seen_to_canonical = [CANONICAL_CLASSES.index(c) for c in self.seen_classnames]
        to_seen = {canon: i for i, canon in enumerate(self.seen_to_canonical)}
        unseen_label = len(self.seen_classnames)
        self.domains = sources + [target]

        root = cfg.DATASET.ROOT
        if not root:
            raise UserError("no dataset root given: pass --root DIR (or set DATASET.ROOT)")
        if not osp.isdir(root):
            if all(d in synthetic.DOMAIN_STYLES for d in self.domains):
                os.makedirs(root, exist_ok=True)  # synthetic domains are generated there
            else:
                raise UserError(f"dataset root not found: {root} (--root / DATASET.ROOT must be an existing folder)")
        splits: dict[str, DomainSplits] = {d: build_domain_reader(cfg, d).read() for d in self.domains}

        train_x = []
        for m, name in enumerate(sources):
            items = [Datum(it.impath, to_seen[it.label], m, CANONICAL_CLASSES[it.label], it.crop)
                     for it in splits[name].train if it.label in to_seen]
            if not items:
                raise UserError(f"source domain '{name}' has no training images of the seen classes")
            train_x += items
        t = splits[target]
        m_t = len(sources)
        train_u = [Datum(it.impath, -1, m_t, "", it.crop) for it in t.train]
        self.target_train_labels = [it.label for it in t.train]  # diagnostics only, never batched
        test = [Datum(it.impath, to_seen.get(it.label, unseen_label), m_t, CANONICAL_CLASSES[it.label], it.crop)
                for it in t.test]
        if not test:
            raise UserError(f"target domain '{target}' has no test images")
        if not train_u:
            logger.warning("Target domain '%s' has no training images: methods that adapt to the target "
                           "have no unlabelled pool", target)

        # Decoded-image caches per domain split, unfiltered: every run that reads a domain's split (any
        # unseen class, the domain as a source or as the target) shares one cache of it.
        self._cache_groups = {"train_x": [(f"{name}-train", splits[name].train) for name in sources],
                              "train_u": [(f"{target}-train", t.train)],
                              "test": [(f"{target}-test", t.test)]}
        self.split_counts = {
            "sources": {name: _counts([it.label for it in splits[name].train if it.label in to_seen]) for name in sources},
            "target_train": _counts(self.target_train_labels),
            "target_test": _counts([it.label for it in t.test]),
        }
        super().__init__(train_x=train_x, train_u=train_u, test=test,
                         lab2cname={i: c for i, c in enumerate(self.seen_classnames)},
                         unseen_classnames=self.unseen_classnames, source_domains=sources, target_domains=[target])
        if cfg.VERBOSE:
            logger.info("MO-FER split (unseen: %s)\n%s", ", ".join(self.unseen_classnames) or "none", self.split_table())

    def run_files(self) -> dict[str, dict]:
        return {"splits.json": self.split_counts}

    def cache_groups(self, split: str):
        return self._cache_groups.get(split)

    def split_table(self) -> str:
        """Images per class for every part of the split (unseen classes marked with *)."""
        headers = ["domain", "split"] + [SHORT_NAMES[c] + ("*" if c in self.unseen_classnames else "")
                                         for c in CANONICAL_CLASSES] + ["total"]
        rows = [[name, "source train"] + list(c.values()) + [sum(c.values())]
                for name, c in self.split_counts["sources"].items()]
        for part, label in (("target_train", "target train (unlabelled)"), ("target_test", "target test")):
            c = self.split_counts[part]
            rows.append([self.target_domain, label] + list(c.values()) + [sum(c.values())])
        return tabulate(rows, headers=headers, tablefmt="simple")
