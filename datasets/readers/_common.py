"""Helpers shared by the readers of the official FER releases (RAF-DB, FERPlus, AffectNet, Oulu-CASIA) and
the folder reader.

Every user mistake becomes a one-line :class:`UserError` that names the file and what was expected;
a bad line in a label file is reported as ``file:line``. :func:`check_splits` runs the checks every
reader applies to its lists before returning them: listed images present on disk
(``DATASET.SKIP_MISSING_IMAGES``), optionally decodable (``DATASET.VERIFY_IMAGES``), and no class
left empty by the filtering. The folder reader applies the first two (:func:`usable_images`): a folder
domain need not hold every class.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from collections import Counter
from typing import Iterable, Sequence

from PIL import Image

from datasets.classes import CANONICAL_CLASSES
from datasets.readers.base import DomainReader, DomainSplits, Item
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)

# How many offending names an error message quotes (the count is always given in full)
N_QUOTED = 3


def require_domain_dir(reader: DomainReader, title: str, holding: str) -> str:
    """The reader's domain folder, or an error naming the domain, the expected path and its content."""
    path = reader.domain_dir
    if not osp.isdir(path):
        key = f"DATASET.{reader.name.upper()}.DIR"
        overridden = bool(reader.dir_override)
        where = f"{path} (from {key})" if overridden else path
        remedy = f"correct {key}" if overridden else f"put the dataset there or set {key} to where it is"
        raise UserError(f"dataset '{reader.name}' ({title}) not found: expected the folder {where} holding {holding}; "
                        f"{remedy}")
    return path


def require_file(path: str, what: str, expected: str) -> str:
    """``path`` if it is a file, else an error saying which file of which dataset is expected."""
    if not osp.isfile(path):
        raise UserError(f"{what} not found: {path} (expected {expected})")
    return path


def require_subdir(path: str, what: str, expected: str) -> str:
    """``path`` if it is a folder, else an error saying which folder is expected."""
    if not osp.isdir(path):
        raise UserError(f"{what} not found: {path} (expected {expected})")
    return path


def line_error(path: str, lineno: int, message: str) -> UserError:
    """An error about one line of a label file, in the ``file:line: message`` form editors understand."""
    return UserError(f"{path}:{lineno}: {message}")


def check_header(header: Sequence[str] | None, path: str, expected: Sequence[str], dataset: str) -> None:
    """An error at ``path:1`` unless ``header`` is ``expected`` (case and surrounding spaces ignored)."""
    if header is None or [h.strip().lower() for h in header] != [h.lower() for h in expected]:
        raise line_error(path, 1, f"header {','.join(header or [])!r} is not {dataset}'s; expected {','.join(expected)!r}")


def parse_int(text: str) -> int | None:
    """The integer written in ``text`` (ASCII digits, optional sign and surrounding spaces), or None.

    Label files are parsed row by row; testing the characters keeps exceptions out of the hot path.
    """
    text = text.strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    return int(text) if digits.isascii() and digits.isdecimal() else None


def checked_choice(value: str, key: str, allowed: Sequence[str]) -> str:
    """``value`` lower-cased if it is one of ``allowed``, else an error naming the config key."""
    chosen = str(value).strip().lower()
    if chosen not in allowed:
        raise UserError(f"{key} is '{value}'; expected one of {', '.join(allowed)}")
    return chosen


def sorted_frames(names: Iterable[str]) -> list[str]:
    """File names in numeric order of their stems where they are numbers (``9.jpg`` before ``10.jpg``)."""
    def key(name: str) -> tuple[int, int, str]:
        stem = osp.splitext(name)[0]
        return (0, int(stem), name) if stem.isascii() and stem.isdecimal() else (1, 0, name)
    return sorted(names, key=key)


def log_dropped(domain: str, dropped: Counter) -> None:
    """One log line saying how many listed images were left out, and why."""
    if dropped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))
        logger.info("Domain '%s': left out %s", domain, reasons)


def _all_items(splits: DomainSplits) -> list[Item]:
    return splits.train + splits.test + (splits.val or [])


def _without(splits: DomainSplits, paths: set[str]) -> DomainSplits:
    def keep(items: list[Item]) -> list[Item]:
        return [it for it in items if it.impath not in paths]
    return DomainSplits(train=keep(splits.train), test=keep(splits.test),
                        val=keep(splits.val) if splits.val is not None else None)


class FolderListing:
    """File names per folder, each folder listed once.

    AffectNet lists ~290k images: one ``os.listdir`` per folder instead of one ``stat`` per image
    makes the presence check cheap.
    """

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    def names(self, folder: str) -> frozenset[str]:
        """Entries of ``folder`` (empty when it does not exist), less symbolic links to nothing."""
        if folder not in self._names:
            if osp.isdir(folder):
                with os.scandir(folder) as entries:
                    self._names[folder] = frozenset(e.name for e in entries
                                                    if not e.is_symlink() or osp.exists(e.path))
            else:
                self._names[folder] = frozenset()
        return self._names[folder]

    def exists(self, path: str) -> bool:
        folder, name = osp.split(path)
        return name in self.names(folder)


def drop_missing_images(splits: DomainSplits, cfg, domain: str, listed_in: str) -> DomainSplits:
    """Splits without the images that are listed but absent: an error naming how many and the first
    few, or (``DATASET.SKIP_MISSING_IMAGES``) a warning."""
    listing = FolderListing()
    missing = sorted({it.impath for it in _all_items(splits) if not listing.exists(it.impath)})
    if not missing:
        return splits
    quoted = ", ".join(missing[:N_QUOTED]) + (", ..." if len(missing) > N_QUOTED else "")
    if not cfg.DATASET.SKIP_MISSING_IMAGES:
        raise UserError(f"{len(missing)} image(s) listed in {listed_in} for domain '{domain}' are missing: {quoted}; "
                        f"restore them, or set DATASET.SKIP_MISSING_IMAGES True to skip them with a warning")
    logger.warning("Domain '%s': skipping %d image(s) listed in %s but missing: %s", domain, len(missing),
                   listed_in, quoted)
    return _without(splits, set(missing))


def unreadable_reason(path: str) -> str | None:
    """Why the image at ``path`` cannot be decoded, or None when it can."""
    try:
        with Image.open(path) as img:
            # JPEG decodes at 1/8 scale here (the whole stream is still read, so truncation shows);
            # other formats ignore the draft request.
            img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except Exception as e:  # any failure to decode makes the image unusable; report PIL's reason
        return f"{type(e).__name__}: {e}"
    return None


def drop_unreadable_images(splits: DomainSplits, cfg, domain: str) -> DomainSplits:
    """With ``DATASET.VERIFY_IMAGES``, decode every image once (progress bar); undecodable ones are an
    error, or skipped with a warning under ``DATASET.SKIP_MISSING_IMAGES``."""
    if not cfg.DATASET.VERIFY_IMAGES:
        return splits
    from tqdm import tqdm

    paths = sorted({it.impath for it in _all_items(splits)})
    bad: dict[str, str] = {}
    for path in tqdm(paths, desc=f"verifying {domain} images", unit="img"):
        reason = unreadable_reason(path)
        if reason is not None:
            bad[path] = reason
    if not bad:
        return splits
    first = min(bad)
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    if not cfg.DATASET.SKIP_MISSING_IMAGES:
        raise UserError(f"cannot read image {first} of domain '{domain}' ({bad[first]}){more}; replace the "
                        f"file(s), or set DATASET.SKIP_MISSING_IMAGES True to skip unreadable images with a warning")
    logger.warning("Domain '%s': skipping %d unreadable image(s), e.g. %s (%s)", domain, len(bad), first, bad[first])
    return _without(splits, set(bad))


def require_every_class(splits: DomainSplits, domain: str, hint: str,
                        classes: Iterable[int] = range(len(CANONICAL_CLASSES))) -> None:
    """An error naming the class and the domain when a train or test split lacks one of ``classes``."""
    for part in ("train", "test"):
        present = {it.label for it in getattr(splits, part)}
        for label in classes:
            if label not in present:
                raise UserError(f"domain '{domain}' has no {part} images of class '{CANONICAL_CLASSES[label]}' "
                                f"after filtering ({hint})")


def usable_images(splits: DomainSplits, cfg, domain: str, listed_in: str) -> DomainSplits:
    """``splits`` less the images that are missing (``DATASET.SKIP_MISSING_IMAGES``) or, with
    ``DATASET.VERIFY_IMAGES``, undecodable: the filters every reader applies, the folder reader included."""
    splits = drop_missing_images(splits, cfg, domain, listed_in)
    return drop_unreadable_images(splits, cfg, domain)


def check_splits(splits: DomainSplits, cfg, domain: str, listed_in: str, hint: str,
                 classes: Iterable[int] = range(len(CANONICAL_CLASSES))) -> DomainSplits:
    """The checks every reader of a dataset's label files runs before returning its splits (see module
    docstring): :func:`usable_images`, then no class left empty."""
    splits = usable_images(splits, cfg, domain, listed_in)
    require_every_class(splits, domain, hint, classes)
    return splits
