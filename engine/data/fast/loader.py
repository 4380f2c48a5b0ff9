"""``CachedLoader``: batches from the decoded-image cache, augmented on the training device.

A drop-in for the ``DataLoader`` in the trainer loop (``DataManager`` builds one per split when
``DATALOADER.CACHE.ENABLED``): ``len(loader)`` batches per pass, ``iter(loader)`` yielding dicts with
``img`` (float32, normalised, on the device), ``label``, ``domain``, ``index`` (int64 tensors on the
device) and ``impath`` (list of str); ``loader.sampler`` is the sampler the PIL path builds
(``build_sampler``), so for the same seed the samples come in the same order and batches;
``loader.generator`` is the augmentation generator on the device (``get_state`` / ``set_state``
for checkpoints); ``loader.dataset`` is the list of :class:`Datum`.

Two residencies of the uint8 array (``DATALOADER.CACHE.ON_DEVICE``):

- on the device: copied once; a batch is one gather there, no host work at all;
- memory-mapped on the host (default): a background thread gathers each batch's rows in sorted
  index order (sequential reads of the file) into pinned memory, up to ``prefetch`` batches ahead;
  the main thread copies a batch with ``non_blocking=True`` and restores the sampler's order on
  the device.

Random augmentation runs in the main thread, in batch order, when a batch is taken: the generator's
state therefore depends only on the batches consumed, never on how far the thread has read ahead,
and a checkpoint restores it exactly. Nothing per batch waits for the device: indices go to the
device once per pass, and labels and domains are gathered there.
"""
from __future__ import annotations

import copy
import logging
import math
import queue
import threading
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from engine.data.datasets import Datum
from engine.data.fast.augment import DeviceAugment
from engine.data.fast.cache import open_decoded_cache
from engine.data.fast.settings import FastPathSettings
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)

# Host memory per chunk when the whole array is copied to the device
_UPLOAD_CHUNK_BYTES = 256 * 2**20
# Seconds between checks that the gathering thread is still alive while waiting for a batch
_GET_TIMEOUT_S = 1.0


class CacheView:
    """A split's rows gathered from several decoded caches (a dataset's :meth:`cache_groups`): row ``i``
    is ``data_source[i]``'s image, held at row ``rows[i]`` of ``arrays[sources[i]]``. Read through
    :func:`take_rows`, like a plain array."""

    def __init__(self, arrays: Sequence[np.ndarray], sources: np.ndarray, rows: np.ndarray) -> None:
        self.arrays = list(arrays)
        self.sources = np.asarray(sources, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *self.arrays[0].shape[1:])
        self.nbytes = int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray, out: np.ndarray) -> None:
        """``out[k] = self[index[k]]``, reading each cache's rows in ``index`` order."""
        sources = self.sources[index]
        for a, array in enumerate(self.arrays):
            picked = np.flatnonzero(sources == a)
            if len(picked):
                out[picked] = array[self.rows[index[picked]]]


def take_rows(images: np.ndarray | CacheView, index: np.ndarray, out: np.ndarray) -> None:
    """``out[k] = images[index[k]]`` for a cache array or a :class:`CacheView`."""
    if isinstance(images, CacheView):
        images.take(index, out)
    else:
        # mode="clip" writes straight into ``out`` (mode="raise" buffers); indices are valid
        np.take(images, index, axis=0, out=out, mode="clip")


def open_cache_view(groups: Sequence[tuple[str, Sequence]], data_source: Sequence[Datum], directory: str,
                    dataset: str, size: int, interpolation: str, num_workers: int) -> np.ndarray | CacheView:
    """The decoded images of ``data_source`` from the caches of ``groups`` (each loaded or built once,
    whichever split asks first): the group's array itself when the split is exactly that group."""
    arrays, where = [], {}
    for a, (name, items) in enumerate(groups):
        arrays.append(open_decoded_cache(items, directory, dataset, name, size, interpolation,
                                         num_workers=num_workers))
        for row, item in enumerate(items):
            where.setdefault((item.impath, item.crop), (a, row))
    try:
        located = np.array([where[(item.impath, item.crop)] for item in data_source], dtype=np.int64).reshape(-1, 2)
    except KeyError as e:
        raise ValueError(f"{dataset}: image {e.args[0][0]} of the split is in none of its cache groups "
                         f"({', '.join(name for name, _ in groups)})") from None
    sources, rows = located[:, 0], located[:, 1]
    if len(arrays) == 1 and len(rows) == len(arrays[0]) and np.array_equal(rows, np.arange(len(rows))):
        return arrays[0]
    return CacheView(arrays, sources, rows)


class CachedLoader:
    """Iterates batches of ``data_source`` in ``sampler`` order from ``images`` (see module docstring).

    Args:
        images: uint8 ``(N, S, S, 3)`` array, row ``i`` being ``data_source[i]`` (a memory map or not), or a
            :class:`CacheView` of several.
        data_source: the split's items.
        sampler: yields indices into ``data_source``; a new pass per ``iter(loader)``.
        batch_size: images per batch.
        augment: the transform applied to each batch on ``device``.
        device: where batches are produced.
        drop_last: drop a last incomplete batch (training).
        on_device: copy ``images`` to ``device`` once instead of gathering on the host per batch.
        seed: seeds the augmentation generator; negative for a random seed.
        k_transforms: ``DATALOADER.K_TRANSFORMS``; views 2..k are returned as ``img2``, ``img3``...
        img0_augment: when given, ``img0`` holds the batch through this (un-augmented) transform.
        prefetch: batches the host thread may read ahead (memory-mapped residency).
    """

    def __init__(self, images: np.ndarray | CacheView, data_source: Sequence[Datum], sampler: Sampler, batch_size: int,
                 augment: DeviceAugment, device: torch.device | str, *, drop_last: bool = False,
                 on_device: bool = False, seed: int = 0, k_transforms: int = 1,
                 img0_augment: DeviceAugment | None = None, prefetch: int = 2) -> None:
        if len(images) != len(data_source):
            raise ValueError(f"{len(images)} cached images for {len(data_source)} items")
        if batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.dataset = list(data_source)
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.augment = augment
        self.img0_augment = img0_augment
        self.k_transforms = max(1, int(k_transforms))
        self.device = torch.device(device)
        self.prefetch = max(1, int(prefetch))
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed if seed >= 0 else int(torch.randint(2**31, ()).item()))
        self.images = images
        self.images_on_device = _upload(images, self.device) if on_device else None
        self._impaths = [item.impath for item in self.dataset]
        self._labels = torch.tensor([item.label for item in self.dataset], dtype=torch.long).to(self.device)
        self._domains = torch.tensor([item.domain for item in self.dataset], dtype=torch.long).to(self.device)

    @property
    def on_device(self) -> bool:
        return self.images_on_device is not None

    def sibling(self, sampler: Sampler, batch_size: int, augment: DeviceAugment, seed: int = 0) -> "CachedLoader":
        """A loader over the same images in ``sampler``'s order with ``augment`` (one view, no ``img0``, the last
        batch kept), sharing this one's arrays, its copy on the device included: the training images evaluated,
        say, without a second copy of them on the device."""
        other = copy.copy(self)
        other.sampler, other.batch_size, other.augment, other.drop_last = sampler, batch_size, augment, False
        other.k_transforms, other.img0_augment = 1, None
        other.generator = torch.Generator(device=self.device)
        other.generator.manual_seed(seed)
        return other

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> "_CachedLoaderIter":
        return _CachedLoaderIter(self)

    def augment_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image entries of a batch from its uint8 pixels on the device."""
        out = {"img": self.augment(images, self.generator)}
        for k in range(2, self.k_transforms + 1):
            out[f"img{k}"] = self.augment(images, self.generator)
        if self.img0_augment is not None:
            out["img0"] = self.img0_augment(images, self.generator)
        return out


class _CachedLoaderIter:
    """One pass over the sampler's order (what ``iter(loader)`` returns)."""

    def __init__(self, loader: CachedLoader) -> None:
        self._stop = threading.Event()  # first: __del__ needs it even if the sampler raises
        self.loader = loader
        order = list(loader.sampler)  # starts the sampler's next pass, as a DataLoader iterator does
        bs = loader.batch_size
        n_batches = len(order) // bs if loader.drop_last else math.ceil(len(order) / bs)
        self._bounds = [(k * bs, min((k + 1) * bs, len(order))) for k in range(n_batches)]
        self._order = order
        self._order_device = _to_device(torch.tensor(order, dtype=torch.long), loader.device)
        self._next = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if not loader.on_device and self._bounds:
            self._queue = queue.Queue(maxsize=loader.prefetch)
            batches = [np.asarray(order[a:b], dtype=np.int64) for a, b in self._bounds]
            self._thread = threading.Thread(
                target=_gather_batches, name="CachedLoader-gather", daemon=True,
                args=(loader.images, batches, self._queue, self._stop, loader.device.type == "cuda"))
            self._thread.start()

    def __iter__(self) -> "_CachedLoaderIter":
        return self

    def __len__(self) -> int:
        return len(self._bounds)

    def __next__(self) -> dict:
        if self._next >= len(self._bounds):
            self.close()
            raise StopIteration
        start, stop = self._bounds[self._next]
        self._next += 1
        index = self._order_device[start:stop]
        images = self._images(index)
        loader = self.loader
        batch = {"label": loader._labels.index_select(0, index),
                 "domain": loader._domains.index_select(0, index),
                 "index": index,
                 "impath": [loader._impaths[i] for i in self._order[start:stop]]}
        batch.update(loader.augment_batch(images))
        return batch

    def _images(self, index: torch.Tensor) -> torch.Tensor:
        """The batch's uint8 pixels on the device, in sampler order."""
        if self.loader.on_device:
            return self.loader.images_on_device.index_select(0, index)
        rows = self._take().to(self.loader.device, non_blocking=True)
        # The thread read the rows in sorted index order; row k belongs at position perm[k].
        perm = torch.argsort(index, stable=True)
        return torch.empty_like(rows).index_copy_(0, perm, rows)

    def _take(self) -> torch.Tensor:
        while True:
            try:
                item = self._queue.get(timeout=_GET_TIMEOUT_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the cache gathering thread stopped without a batch") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop reading ahead (an abandoned pass frees its thread)."""
        self._stop.set()

    def __del__(self) -> None:
        self.close()


def _gather_batches(images: np.ndarray | CacheView, batches: list[np.ndarray], out: queue.Queue, stop: threading.Event,
                    pin: bool) -> None:
    """Thread body: each batch's rows, read in sorted index order, into (pinned) host tensors."""
    try:
        for index in batches:
            rows = torch.empty((len(index), *images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
            take_rows(images, np.sort(index), rows.numpy())
            if not _put(out, rows, stop):
                return
    except BaseException as e:  # handed to the consumer, which raises it
        _put(out, e, stop)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer stops first; True when it was put."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy without making the host wait: via pinned memory on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _upload(images: np.ndarray | CacheView, device: torch.device) -> torch.Tensor:
    """The whole array on ``device``, copied in chunks (bounded host memory beyond the memory map)."""
    try:
        out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"the decoded images ({images.nbytes / 2**30:.1f} GiB) do not fit on {device}: "
                        f"set DATALOADER.CACHE.ON_DEVICE False") from None
    row_bytes = max(1, int(np.prod(images.shape[1:])))
    rows = max(1, _UPLOAD_CHUNK_BYTES // row_bytes)
    for start in range(0, len(images), rows):
        # a copy out of the read-only memory map, into memory torch may own
        index = np.arange(start, min(start + rows, len(images)))
        chunk = np.empty((len(index), *images.shape[1:]), dtype=np.uint8)
        take_rows(images, index, chunk)
        out[start: start + rows].copy_(torch.from_numpy(chunk))
    return out


def build_cached_loader(fast: FastPathSettings, sampler: Sampler, data_source: Sequence[Datum], batch_size: int,
                        is_train: bool, drop_last: bool, split: str, seed: int = 0,
                        groups: Sequence[tuple[str, Sequence]] | None = None) -> CachedLoader:
    """A :class:`CachedLoader` for one split, its cache loaded or built (``build_data_loader``'s
    counterpart; it receives that function's sampler, batch size and ``drop_last``). With ``groups``
    (the dataset's :meth:`~engine.data.datasets.DatasetBase.cache_groups`) the images come from those
    shared caches."""
    if groups and data_source:
        images = open_cache_view(groups, data_source, fast.directory, fast.dataset, fast.size, fast.interpolation,
                                 fast.num_workers)
    else:
        images = open_decoded_cache(data_source, fast.directory, fast.dataset, split, fast.size, fast.interpolation,
                                    num_workers=fast.num_workers)
    return CachedLoader(images, data_source, sampler, batch_size, fast.augment(is_train), fast.device,
                        drop_last=drop_last, on_device=fast.on_device, seed=seed,
                        k_transforms=fast.k_transforms if is_train else 1, img0_augment=fast.img0_augment)
