"""Builds the data loaders a trainer uses: ``train_loader_x``, ``train_loader_u``, ``val_loader``,
``test_loader`` (Dassl's ``DataManager``). Batches are dicts with ``img, label, domain, impath, index``.
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Callable, Sequence

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset

from engine.data.datasets import DatasetBase, Datum, SplitInfo, build_dataset, split_info_of
from engine.data.fast import FastPathSettings, build_cached_loader
from engine.data.image_io import read_image
from engine.data.samplers import build_sampler
from engine.data.transforms import build_transform
from engine.utils import distributed
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)


class DatasetWrapper(Dataset):
    """Reads and transforms one :class:`Datum` into a batch item.

    Training augmentation is seeded per sample from ``(pass_seed, index)`` (``pass_seed`` is set by
    :class:`SeededDataLoader` at the start of every pass): an image's augmentation depends only on the
    seed, the pass and which image it is, not on the worker that loads it, the images before it or
    the number of processes. A run resumed in the middle of an epoch therefore augments exactly as
    one that never stopped.
    """

    def __init__(self, cfg, data_source: Sequence[Datum], transform: Callable | None = None,
                 is_train: bool = False) -> None:
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.pass_seed: int | None = None
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        self.to_tensor = build_transform(cfg, is_train=False, choices=["normalize"])

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> dict:
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath, item.crop)
        if self.transform is None:
            output["img"] = self.to_tensor(img0)
        else:
            with self._sample_rng(idx):
                for k in range(self.k_tfm):
                    output["img" if k == 0 else f"img{k + 1}"] = self.transform(img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _sample_rng(self, idx: int):
        """Torch's RNG seeded for this sample (and restored afterwards), during training passes."""
        if self.pass_seed is None:
            return contextlib.nullcontext()
        return _seeded_torch_rng((self.pass_seed * 1_000_003 + idx) % 2**63)


@contextlib.contextmanager
def _seeded_torch_rng(seed: int):
    with torch.random.fork_rng(devices=[]):  # transforms draw from the CPU generator only
        torch.manual_seed(seed)
        yield


class SeededDataLoader(DataLoader):
    """A DataLoader whose dataset gets a fresh augmentation seed at every pass, derived from the
    sampler's seed and pass number (see :class:`DatasetWrapper`)."""

    def __iter__(self):
        sampler = self.sampler
        if getattr(self.dataset, "is_train", False) and hasattr(sampler, "passes"):
            self.dataset.pass_seed = (sampler.seed * 7919 + sampler.passes + 1) % 2**31
        return super().__iter__()


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; python and numpy need the same.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_data_loader(cfg, sampler_type: str, data_source: Sequence[Datum], batch_size: int = 64,
                      n_domain: int = 0, tfm: Callable | None = None, is_train: bool = True,
                      dataset_wrapper: type[Dataset] | None = None, seed: int = 0, split: str = "data",
                      cache_groups: list[tuple[str, Sequence]] | None = None, fast: FastPathSettings | None = None):
    """A DataLoader over ``data_source`` with a named sampler (Dassl's ``build_data_loader``), or with
    ``DATALOADER.CACHE.ENABLED`` a ``CachedLoader`` with the same sampler, batches and ``drop_last``
    (``split`` names its cache; ``cache_groups``, from :meth:`DatasetBase.cache_groups`, the shared
    caches that hold its images instead). ``fast``: the fast path's settings, read from ``cfg`` when not
    given (a data manager reads them once for all its loaders)."""
    # Under torchrun the sampler yields this rank's share of the global order and a training batch
    # is this rank's share of the global batch (engine.utils.distributed).
    sampler = build_sampler(sampler_type, data_source, batch_size=batch_size, n_domain=n_domain,
                            domain_epoch=cfg.DATALOADER.DOMAIN_EPOCH, seed=seed,
                            rank=distributed.rank(), world=distributed.world_size())
    drop_last = is_train and len(data_source) >= batch_size
    if is_train:
        world = distributed.world_size()
        if not drop_last and len(data_source) % world:
            # a training set smaller than one batch makes one partial batch; the losses that couple samples gather
            # every rank's share of it, which must be equal
            raise UserError(f"the {split} split has {len(data_source)} images, fewer than its batch size {batch_size} "
                            f"and not divisible by the {world} processes: set its DATALOADER batch size to at most "
                            f"{len(data_source) - len(data_source) % world}")
        batch_size = distributed.shard_batch_size(batch_size)
    if cfg.DATALOADER.CACHE.ENABLED:
        if dataset_wrapper is not None:
            raise UserError("a custom dataset wrapper needs the PIL path: set DATALOADER.CACHE.ENABLED False")
        return build_cached_loader(fast or FastPathSettings.from_cfg(cfg), sampler, data_source, batch_size, is_train,
                                   drop_last, split, seed=seed, groups=cache_groups)
    wrapper = dataset_wrapper or DatasetWrapper
    num_workers = cfg.DATALOADER.NUM_WORKERS
    # Augmentation is seeded per sample (DatasetWrapper); this generator only seeds the workers' own
    # RNGs (python, numpy) for transforms written with them.
    generator = torch.Generator()
    generator.manual_seed(seed if seed >= 0 else int(torch.randint(2**31, ()).item()))
    return SeededDataLoader(
        wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
        worker_init_fn=_seed_worker,
        generator=generator,
    )


def warn_undefined_metrics(test: Sequence[Datum], num_classes: int, split: SplitInfo) -> None:
    """Say before any training when the test split cannot give the open-set metrics: without seen-class images
    every metric is undefined (n/a, null in results.json); without images of the unseen classes, all but the
    seen-class accuracies are."""
    if not test:
        return
    n_seen = sum(1 for item in test if 0 <= item.label < num_classes)
    target = ", ".join(split.target_domains) or "the target"
    if n_seen == 0:
        logger.warning("The test split of %s holds no images of the seen classes (%s), only of %s: every metric "
                       "will be n/a (null in results.json)", target, ", ".join(split.seen_classes),
                       ", ".join(split.unseen_classes) or "classes outside them")
    elif n_seen == len(test) and split.unseen_classes:
        logger.warning("The test split of %s holds no images of the unseen class(es) %s: only the seen-class "
                       "accuracies (acc_s, mcr, acc_<class>) will have values, the open-set metrics n/a", target,
                       ", ".join(split.unseen_classes))


class DataManager:
    """Builds the dataset named in the config and its loaders."""

    def __init__(self, cfg, custom_tfm_train: Callable | None = None, custom_tfm_test: Callable | None = None,
                 dataset_wrapper: type[Dataset] | None = None, dataset: DatasetBase | None = None) -> None:
        dataset = dataset if dataset is not None else build_dataset(cfg)
        fast = None
        if cfg.DATALOADER.CACHE.ENABLED:
            if custom_tfm_train or custom_tfm_test:
                raise UserError("custom transforms need the PIL path: set DATALOADER.CACHE.ENABLED False")
            fast = FastPathSettings.from_cfg(cfg)
        tfm_train = custom_tfm_train or build_transform(cfg, is_train=True)
        tfm_test = custom_tfm_test or build_transform(cfg, is_train=False)
        if not dataset.train_x and not dataset.test:
            raise UserError(f"dataset {cfg.DATASET.NAME} has neither training nor test images")
        loader_cfg = cfg.DATALOADER
        # Each training loader gets its own seed stream so adding one never shifts another's order.
        seed = cfg.SEED
        # a dataset from elsewhere (Dassl's, say) may lack cache_groups: its splits then make their own caches
        groups = getattr(dataset, "cache_groups", lambda split: None)

        self.train_loader_x = None
        if dataset.train_x:
            self.train_loader_x = build_data_loader(
                cfg, loader_cfg.TRAIN_X.SAMPLER, dataset.train_x, loader_cfg.TRAIN_X.BATCH_SIZE,
                loader_cfg.TRAIN_X.N_DOMAIN, tfm_train, True, dataset_wrapper, seed=seed, split="train_x",
                cache_groups=groups("train_x"), fast=fast)

        self.train_loader_u = None
        if dataset.train_u:
            u_cfg = loader_cfg.TRAIN_X if loader_cfg.TRAIN_U.SAME_AS_X else loader_cfg.TRAIN_U
            # The unlabelled pool is one domain: a domain sampler makes no sense for it.
            sampler_u = "RandomSampler" if u_cfg.SAMPLER == "RandomDomainSampler" else u_cfg.SAMPLER
            self.train_loader_u = build_data_loader(
                cfg, sampler_u, dataset.train_u, u_cfg.BATCH_SIZE, u_cfg.N_DOMAIN, tfm_train, True,
                dataset_wrapper, seed=seed + 1 if seed >= 0 else seed, split="train_u", cache_groups=groups("train_u"),
                fast=fast)

        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, loader_cfg.TEST.SAMPLER, dataset.val, loader_cfg.TEST.BATCH_SIZE, tfm=tfm_test,
                is_train=False, dataset_wrapper=dataset_wrapper, seed=seed, split="val", cache_groups=groups("val"),
                fast=fast)

        self.test_loader = build_data_loader(
            cfg, loader_cfg.TEST.SAMPLER, dataset.test or [], loader_cfg.TEST.BATCH_SIZE, tfm=tfm_test,
            is_train=False, dataset_wrapper=dataset_wrapper, seed=seed, split="test", cache_groups=groups("test"),
            fast=fast)

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.split_info: SplitInfo = split_info_of(dataset, cfg)
        warn_undefined_metrics(dataset.test or [], dataset.num_classes, self.split_info)
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        self._cfg, self._fast, self._dataset_wrapper = cfg, fast, dataset_wrapper
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    def labelled_eval_loader(self):
        """The labelled training images (``train_x``) in order with the test transform, batches of
        ``DATALOADER.TEST.BATCH_SIZE`` (each process its share, as the test loader): for methods that compare test
        images with the training images (a nearest-neighbour feature bank). On the fast path it shares the training
        loader's decoded images and their copy on the device (:meth:`CachedLoader.sibling`)."""
        cfg, items = self._cfg, self.dataset.train_x
        if not items:
            raise UserError(f"dataset {cfg.DATASET.NAME} has no labelled training images")
        batch_size = cfg.DATALOADER.TEST.BATCH_SIZE
        if self._fast is None:
            return build_data_loader(cfg, "SequentialSampler", items, batch_size, tfm=self.tfm_test, is_train=False,
                                     dataset_wrapper=self._dataset_wrapper, seed=cfg.SEED, split="train_x")
        sampler = build_sampler("SequentialSampler", items, rank=distributed.rank(), world=distributed.world_size())
        return self.train_loader_x.sibling(sampler, batch_size, self._fast.augment(False), seed=cfg.SEED)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> dict[int, str]:
        return self._lab2cname

    def show_dataset_summary(self, cfg) -> None:
        rows = [["Dataset", cfg.DATASET.NAME],
                ["Source", ", ".join(cfg.DATASET.SOURCE_DOMAINS)],
                ["Target", ", ".join(cfg.DATASET.TARGET_DOMAINS)],
                ["# classes", f"{self.num_classes:,}"],
                ["# train_x", f"{len(self.dataset.train_x or []):,}"]]
        if self.dataset.train_u:
            rows.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test or []):,}"])
        logger.info("\n" + tabulate(rows, tablefmt="simple"))
