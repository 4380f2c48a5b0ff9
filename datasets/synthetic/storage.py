"""Writing synthetic domains to disk in the generic folder layout, atomically, once per set of parameters.

``<root>/<domain>/{train,test}/<class>/<domain>_<class>_<i:04d>.png`` and a marker file
``<root>/<domain>/synthetic.json`` with the generation parameters: a folder whose marker matches is reused,
one with other parameters regenerated, one without a marker is the user's and never touched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from datasets.classes import CANONICAL_CLASSES
from datasets.synthetic.render import render_face
from datasets.synthetic.styles import DOMAIN_STYLES, DOMAINS, DomainStyle
from engine.utils.tools import remove_dead_leftovers

#: Bump whenever the rendering changes, so that old folders are regenerated.
GENERATOR_VERSION = 2

#: Name of the marker file written into every generated domain folder.
MARKER_FILE = "synthetic.json"

_SPLITS = ("train", "test")


def _stable_hash(text: str) -> int:
    """A process-independent 32-bit hash (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def _image_rng(seed: int, domain: str, split: str, label: int, index: int) -> np.random.Generator:
    """Independent generator per image: image i does not depend on the counts."""
    ss = np.random.SeedSequence([seed, _stable_hash(domain), _SPLITS.index(split), label, index])
    return np.random.default_rng(ss)


def _params(domain: str, n_train_per_class: int, n_test_per_class: int, size: int, seed: int) -> dict:
    return {
        "domain": domain,
        "n_train_per_class": int(n_train_per_class),
        "n_test_per_class": int(n_test_per_class),
        "size": int(size),
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
        "classnames": list(CANONICAL_CLASSES),
    }


def _style(domain: str) -> DomainStyle:
    try:
        return DOMAIN_STYLES[domain]
    except KeyError:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose from {', '.join(DOMAINS)}") from None


def _remove_stale_tmp(root: Path, domain: str) -> None:
    """Delete our own temporary folders of ``domain`` left by dead processes."""
    for kind in ("tmp", "old"):
        remove_dead_leftovers(root, f".{domain}.{kind}-")


def is_generated(
    root: str | Path,
    domain: str,
    n_train_per_class: int = 40,
    n_test_per_class: int = 20,
    size: int = 64,
    seed: int = 0,
) -> bool:
    """True iff ``<root>/<domain>/synthetic.json`` exists and matches the parameters."""
    marker = Path(root) / domain / MARKER_FILE
    try:
        with open(marker, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return False
    return found == _params(domain, n_train_per_class, n_test_per_class, size, seed)


def generate_domain(
    root: str | Path,
    domain: str,
    n_train_per_class: int = 40,
    n_test_per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write one synthetic domain to ``<root>/<domain>`` atomically.

    Images go to ``<root>/<domain>/{train,test}/<class>/<domain>_<class>_<i:04d>.png``.
    Everything, including ``synthetic.json``, is written into the temporary
    sibling ``<root>/.<domain>.tmp-<pid>`` which is then renamed into place,
    so a half-written folder is never taken for a finished one.  An existing
    generated folder (one holding ``synthetic.json``) is replaced; an existing
    folder without it is user data and raises :class:`FileExistsError`.
    Rendering is sequential (about 2 s per domain at the default counts).

    Returns:
        The path ``<root>/<domain>``.
    """
    style = _style(domain)
    if n_train_per_class < 0 or n_test_per_class < 0 or size < 8:
        raise ValueError("counts must be >= 0 and size >= 8")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / domain
    _check_not_user_data(target)
    _remove_stale_tmp(root, domain)
    tmp = root / f".{domain}.tmp-{os.getpid()}"
    counts = {"train": n_train_per_class, "test": n_test_per_class}
    jobs = [(split, label, i) for split in _SPLITS for label in range(len(CANONICAL_CLASSES)) for i in range(counts[split])]
    try:
        for split in _SPLITS:
            for name in CANONICAL_CLASSES:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
        it = jobs
        if progress:
            from tqdm import tqdm

            it = tqdm(jobs, desc=f"generating {domain}", unit="img", leave=False)
        for split, label, i in it:
            name = CANONICAL_CLASSES[label]
            img = render_face(label, style, _image_rng(seed, domain, split, label, i), size=size)
            img.save(tmp / split / name / f"{domain}_{name}_{i:04d}.png", optimize=False)
        with open(tmp / MARKER_FILE, "w", encoding="utf-8") as f:
            json.dump(_params(domain, n_train_per_class, n_test_per_class, size, seed), f, indent=2)
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_not_user_data(target: Path) -> None:
    if target.exists() and not (target / MARKER_FILE).is_file():
        raise FileExistsError(
            f"{target} exists but has no {MARKER_FILE}: it is not a generated synthetic domain; refusing to touch it"
        )


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` folder to ``target``, replacing an old generated one."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        _check_not_user_data(target)
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process finished the same domain in between: keep theirs.
        if not (target / MARKER_FILE).is_file():
            raise
    finally:
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)


def ensure_domains(
    root: str | Path,
    domains: Iterable[str],
    n_train_per_class: int = 40,
    n_test_per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Generate every domain of ``domains`` under ``root`` that is missing or stale.

    A folder whose ``synthetic.json`` records other parameters is regenerated;
    a folder without ``synthetic.json`` is user data: :class:`FileExistsError`
    is raised and the folder is left untouched.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    domains = list(domains)
    for domain in domains:  # validate all names before doing any work
        _style(domain)
        _check_not_user_data(root / domain)
    for domain in domains:
        if not is_generated(root, domain, n_train_per_class, n_test_per_class, size, seed):
            generate_domain(root, domain, n_train_per_class, n_test_per_class, size, seed, progress)
