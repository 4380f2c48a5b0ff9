"""``Datum`` and ``DatasetBase`` with Dassl's attributes (``train_x, train_u, val, test...``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from engine.registry import Registry

DATASET_REGISTRY = Registry("DATASET")


@dataclass(frozen=True)
class Datum:
    """One image: its path, label, domain index, class name and an optional crop box.

    ``crop`` (``(left, upper, right, lower)`` pixels, or None) is applied when the image is read, for
    datasets that ship face boxes rather than face crops. Unlabelled items (the target training pool) carry
    ``label = -1`` and ``classname = ""``: their true labels never enter a batch, so no training step can
    read them.
    """

    impath: str
    label: int = 0
    domain: int = 0
    classname: str = ""
    crop: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class SplitInfo:
    """What a run's data is, as the engine records it (checkpoint signature, ``results.json``, the results
    table): the classes a model is trained on in label order, the classes held out of training (open set:
    test samples of these carry a label ``>= len(seen_classes)``), and the domains on each side."""

    seen_classes: tuple[str, ...]
    unseen_classes: tuple[str, ...] = ()
    source_domains: tuple[str, ...] = ()
    target_domains: tuple[str, ...] = ()


class DatasetBase:
    """A dataset split into labelled sources (``train_x``), an unlabelled pool (``train_u``),
    an optional ``val`` split and a ``test`` split.

    Subclasses build lists of :class:`Datum` and call ``super().__init__``. ``num_classes``,
    ``lab2cname`` and ``classnames`` describe the classes a model is trained on (the seen classes
    in open-set work) and are derived from ``train_x`` unless a subclass passes them. An open-set dataset
    also passes the names of its ``unseen_classnames``, and a domain-based one its ``source_domains`` and
    ``target_domains``; :meth:`split_info` hands all of it to the engine.
    """

    dataset_dir = ""
    domains: list[str] = []

    def __init__(self, train_x: list[Datum] | None = None, train_u: list[Datum] | None = None,
                 val: list[Datum] | None = None, test: list[Datum] | None = None,
                 lab2cname: dict[int, str] | None = None, *, unseen_classnames: Sequence[str] = (),
                 source_domains: Sequence[str] = (), target_domains: Sequence[str] = ()) -> None:
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        if lab2cname is None:
            lab2cname = {item.label: item.classname for item in (train_x or [])}
            lab2cname = dict(sorted(lab2cname.items()))
        self._lab2cname = lab2cname
        self._classnames = [lab2cname[k] for k in sorted(lab2cname)]
        self._num_classes = len(lab2cname)
        self._split_info = SplitInfo(tuple(self._classnames), tuple(unseen_classnames), tuple(source_domains),
                                     tuple(target_domains))

    def split_info(self) -> SplitInfo:
        """The classes and domains of this split (see :class:`SplitInfo`): what the trainer writes into
        checkpoints and ``results.json`` and shows above the results table."""
        return self._split_info

    @property
    def train_x(self) -> list[Datum] | None:
        return self._train_x

    @property
    def train_u(self) -> list[Datum] | None:
        return self._train_u

    @property
    def val(self) -> list[Datum] | None:
        return self._val

    @property
    def test(self) -> list[Datum] | None:
        return self._test

    @property
    def lab2cname(self) -> dict[int, str]:
        return self._lab2cname

    def cache_groups(self, split: str) -> list[tuple[str, Sequence]] | None:
        """The image lists whose decoded caches (``DATALOADER.CACHE``) hold ``split``'s images, as
        ``[(name, items)]``; an item needs ``impath`` and ``crop``. Each list should be complete for what it
        names (a domain's whole train split, say), so that runs using different parts of it (another unseen
        class, the domain as a source or as the target) share one cache. ``None`` (the default): the
        split's own items make its cache."""
        return None

    def run_files(self) -> dict[str, Any]:
        """Files that describe this split in a run's output folder, ``{file name: JSON-serialisable content}``
        (MO-FER: ``splits.json``, images per class). The trainer writes them beside ``config.yaml`` once the
        run is accepted (a checkpoint there resumed, or a model loaded for evaluation), never before, so that a
        refused run leaves a finished run's folder as it was."""
        return {}

    @property
    def classnames(self) -> list[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes


def split_info_of(dataset, cfg) -> SplitInfo:
    """``dataset.split_info()``; for a dataset from elsewhere (Dassl's, say) that lacks it, its class names
    and the config's domains, with no unseen class."""
    if hasattr(dataset, "split_info"):
        return dataset.split_info()
    lab2cname = dataset.lab2cname
    return SplitInfo(tuple(lab2cname[k] for k in sorted(lab2cname)), (), tuple(cfg.DATASET.SOURCE_DOMAINS),
                     tuple(cfg.DATASET.TARGET_DOMAINS))


def build_dataset(cfg) -> DatasetBase:
    """Instantiate the dataset registered under ``cfg.DATASET.NAME``."""
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
