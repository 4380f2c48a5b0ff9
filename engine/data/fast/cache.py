"""Decoded-image cache: every image of a split decoded once to uint8 ``(N, S, S, 3)``, memory-mapped.

PIL decoding caps a data loader at about 1.3k images/s on 16 cores (``docs/performance.md``); a
GPU trains several times faster. With ``DATALOADER.CACHE.ENABLED True`` each split is decoded once
(in parallel, with a progress bar) and later runs read pixels straight from a ``.npy`` file, while
augmentation runs on the training device (:mod:`engine.data.fast.augment`,
:mod:`engine.data.fast.loader`). The config keys are described in :mod:`engine.data.fast.settings`.

What an entry holds: image ``i`` of the split is ``read_image(impath, crop)`` (upright as its EXIF
orientation says, then cropped) converted to RGB,
``T.Resize(S, INPUT.INTERPOLATION)`` (short side to S), ``T.CenterCrop(S)``, as uint8 HWC. With
``S = INPUT.SIZE`` that is exactly the PIL test transform before ``ToTensor``.

Files, for split ``<split>`` of dataset ``<name>``: ``<name>-<split>-<S>px-<interp>-<key>.npy`` and a
JSON metadata file of the same stem. ``<key>`` hashes the dataset name, split, S, interpolation and
the file list (path, crop box, modification time in ns and size in bytes of every image), so a
changed, added or removed image gives a new key and a new cache. A cache is used only when its
metadata exists and matches (key, N, S) and the array has the expected shape. The array is written
under a temporary name, renamed when complete, and the metadata written last, so an interrupted
build is never used (it is rebuilt). Caches with other keys are left alone, never deleted: another
configuration (other source domains, another size) may still use them; delete the folder, or the
files of one stem, to reclaim the space. Temporary files of builds that died on this host are
removed by the next build of the same cache.

A dataset may name shared lists instead (:meth:`DatasetBase.cache_groups`): MO-FER caches each domain's
train and test split whole (``MOFER-<domain>-train-...``, ``MOFER-<domain>-test-...``), so the runs of a
protocol share them whatever the unseen class and whether the domain is a source or the target (28
cells of the paper's protocol would otherwise each decode their own copy of AffectNet); a split then
reads its rows from those caches (:class:`engine.data.fast.loader.CacheView`).

Decoding processes come from ``multiprocessing``'s default start method (fork on Linux before
Python 3.14, as DataLoader workers), each opening the temporary array itself; they never use CUDA.

Under ``torchrun`` the local rank 0 process of each machine builds a missing cache while the other
ranks wait for its metadata file, so the images are decoded once per machine.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import multiprocessing
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.lib.format import open_memmap
from torchvision import transforms as T
from tqdm import tqdm

from engine.data.datasets import Datum
from engine.data.image_io import read_image
from engine.data.transforms import INTERPOLATION_MODES
from engine.utils.errors import UserError
from engine.utils.tools import mkdir_if_missing, remove_dead_leftovers, write_json

logger = logging.getLogger(__name__)

# Bump when the content of an entry changes for the same inputs (a new decoding recipe). 2: images turned
# upright by their EXIF orientation (engine.data.image_io.read_image).
CACHE_FORMAT = 2
# Images per task of a decoding worker: large enough to amortise inter-process traffic, small
# enough for a smooth progress bar and balanced workers.
CHUNK = 64
# Seconds between checks while another process of this machine builds the cache.
WAIT_POLL_S = 2.0


def decode_image(item: Datum, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """One cache entry: the image read (and cropped), RGB, short side resized to ``size``, centre
    square cropped; uint8 ``(size, size, 3)``. The PIL test transform's steps, with its rounding."""
    img = read_image(item.impath, item.crop)
    if img.mode != "RGB":  # grey (FERPlus), palette and RGBA images, as the PIL path's _to_rgb
        img = img.convert("RGB")
    img = T.Resize(size, interpolation=INTERPOLATION_MODES[interpolation])(img)
    return np.asarray(T.CenterCrop(size)(img), dtype=np.uint8)


def cache_key(items: Sequence[Datum], dataset: str, split: str, size: int, interpolation: str) -> str:
    """A hash of everything an entry depends on: names, size, interpolation and each file's identity
    (path, crop box, modification time, byte size). Stats every file once."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, dataset, split, size, interpolation]).encode())
    for item in items:
        try:
            st = os.stat(item.impath)
        except FileNotFoundError:
            raise UserError(f"image not found: {item.impath}") from None
        crop = list(item.crop) if item.crop is not None else None
        digest.update(json.dumps([item.impath, crop, st.st_mtime_ns, st.st_size]).encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class DecodedCache:
    """The cache of one split: where it lives and how to load or build it."""

    items: tuple[Datum, ...] = field(repr=False)
    directory: str
    dataset: str
    split: str
    size: int
    interpolation: str
    key: str

    @classmethod
    def for_items(cls, items: Sequence[Datum], directory: str, dataset: str, split: str, size: int,
                  interpolation: str = "bicubic") -> "DecodedCache":
        items = tuple(items)
        key = cache_key(items, dataset, split, size, interpolation)
        return cls(items, os.path.expanduser(directory), dataset, split, size, interpolation, key)

    @property
    def stem(self) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.dataset}-{self.split}")
        return os.path.join(self.directory, f"{name}-{self.size}px-{self.interpolation}-{self.key}")

    @property
    def array_path(self) -> str:
        return self.stem + ".npy"

    @property
    def meta_path(self) -> str:
        return self.stem + ".json"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.items), self.size, self.size, 3)

    def metadata(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "key": self.key, "dataset": self.dataset, "split": self.split,
                "num_images": len(self.items), "size": self.size, "interpolation": self.interpolation,
                "dtype": "uint8", "shape": list(self.shape),
                "created": datetime.datetime.now().isoformat(timespec="seconds")}

    def load(self) -> np.ndarray | None:
        """The cached array (read-only memory map), or None unless a complete, matching cache exists."""
        try:
            with open(self.meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        expected = {"format": CACHE_FORMAT, "key": self.key, "num_images": len(self.items), "size": self.size}
        if any(meta.get(k) != v for k, v in expected.items()):
            return None
        try:
            array = open_memmap(self.array_path, mode="r")
        except (OSError, ValueError):
            return None
        if array.shape != self.shape or array.dtype != np.uint8:
            return None
        return array

    def build(self, num_workers: int = 1, progress: bool = True) -> np.ndarray:
        """Decode every image into a new cache (see the module docstring) and return it loaded."""
        mkdir_if_missing(self.directory)
        self._remove_dead_temporaries()
        # Metadata first: from here until the new one is written, this cache reads as absent.
        _remove(self.meta_path)
        tmp = f"{self.array_path}.tmp-{socket.gethostname()}-{os.getpid()}"
        logger.info("Decoding %d %s images of %s at %d px into %s (%d process%s)", len(self.items), self.split,
                    self.dataset, self.size, self.array_path, num_workers, "" if num_workers == 1 else "es")
        try:
            open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape).flush()
            self._decode_all(tmp, num_workers, progress)
            os.replace(tmp, self.array_path)
        except BaseException:
            _remove(tmp)
            raise
        write_json(self.metadata(), self.meta_path)
        array = self.load()
        if array is None:  # another process replaced the files in between; its cache is as good
            raise RuntimeError(f"decoded cache {self.array_path} vanished right after it was written")
        return array

    def _decode_all(self, path: str, num_workers: int, progress: bool) -> None:
        tasks = list(_chunks(self.items, CHUNK))
        num_workers = min(num_workers, len(tasks))
        args = (path, self.size, self.interpolation)
        if num_workers <= 1:  # no process start-up for small splits or a single worker
            _init_worker(*args)
            try:
                self._consume(map(_decode_chunk, tasks), progress)
            finally:
                _WORKER.clear()
            return
        # Workers open the temporary file themselves (r+) and write their rows in place, so no
        # pixels travel between processes. The pool exists before the progress bar's thread does.
        with multiprocessing.get_context().Pool(num_workers, initializer=_init_worker, initargs=args) as pool:
            self._consume(pool.imap_unordered(_decode_chunk, tasks), progress)

    def _consume(self, results: Iterator[int], progress: bool) -> None:
        # disable is passed only to silence: passing False would override TQDM_DISABLE=1
        quiet = {} if progress else {"disable": True}
        with tqdm(total=len(self.items), desc=f"decode {self.dataset} {self.split}", unit="img",
                  dynamic_ncols=True, leave=False, **quiet) as bar:
            for done in results:
                bar.update(done)

    def _remove_dead_temporaries(self) -> None:
        """Delete temporaries of this cache left by processes of this host that no longer run."""
        remove_dead_leftovers(self.directory, os.path.basename(self.array_path) + f".tmp-{socket.gethostname()}-")


def open_decoded_cache(items: Sequence[Datum], directory: str, dataset: str, split: str, size: int,
                       interpolation: str = "bicubic", num_workers: int = 1, progress: bool = True) -> np.ndarray:
    """The decoded ``(N, size, size, 3)`` uint8 array of ``items``: loaded when a matching cache exists,
    built otherwise (by local rank 0 alone under torchrun). A read-only memory map unless N is 0."""
    if not items:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    cache = DecodedCache.for_items(items, directory, dataset, split, size, interpolation)
    array = cache.load()
    if array is not None:
        logger.info("Using the decoded %s images of %s in %s", split, dataset, cache.array_path)
        return array
    if not _is_local_builder():
        return _wait_for(cache)
    return cache.build(num_workers, progress)


def _is_local_builder() -> bool:
    """False on every process but local rank 0 of an initialised process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def _wait_for(cache: DecodedCache) -> np.ndarray:
    # No collective barrier: decoding a large split can outlast a process group's timeout.
    logger.info("Waiting for local rank 0 to decode %s %s into %s", cache.dataset, cache.split, cache.array_path)
    while (array := cache.load()) is None:
        time.sleep(WAIT_POLL_S)
    return array


# ------------------------------------------------------------------ decoding workers
_WORKER: dict[str, Any] = {}


def _init_worker(path: str, size: int, interpolation: str) -> None:
    _WORKER.update(out=open_memmap(path, mode="r+"), size=size, interpolation=interpolation)


def _decode_chunk(task: tuple[int, tuple[Datum, ...]]) -> int:
    start, items = task
    out = _WORKER["out"]
    for offset, item in enumerate(items):
        out[start + offset] = decode_image(item, _WORKER["size"], _WORKER["interpolation"])
    out.flush()
    return len(items)


def _chunks(items: Sequence[Datum], size: int) -> Iterator[tuple[int, tuple[Datum, ...]]]:
    for start in range(0, len(items), size):
        yield start, tuple(items[start: start + size])


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

