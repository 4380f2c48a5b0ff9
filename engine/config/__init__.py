"""Configuration: Dassl's yacs keys, method hooks, and merging that reports typos clearly.

Merge order (as Dassl/CoOp): defaults -> :func:`extend_cfg` -> dataset yaml -> method yaml ->
command-line flags -> trailing ``KEY VALUE`` pairs -> value checks (:mod:`engine.config.checks`) -> freeze.
"""
from __future__ import annotations

import difflib
import os
from typing import Callable, Iterable

import yaml
from yacs.config import CfgNode

from engine.config.checks import Bounds, check_config_values, register_value_rules
from engine.config.defaults import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, get_cfg_default
from engine.utils.errors import UserError

__all__ = [
    "CfgNode", "CLIP_PIXEL_MEAN", "CLIP_PIXEL_STD", "get_cfg_default", "register_config_hook",
    "extend_cfg", "merge_from_file", "merge_from_list", "all_keys", "Bounds", "check_config_values",
    "register_value_rules",
]

_CONFIG_HOOKS: list[Callable[[CfgNode], None]] = []


def register_config_hook(fn: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Decorator for a function adding a method's keys (``TRAINER.<METHOD>.*``) to a config.

    Each trainer module declares its keys next to its class; :func:`extend_cfg` applies them all,
    so a new trainer needs no edit anywhere else.
    """
    _CONFIG_HOOKS.append(fn)
    return fn


def extend_cfg(cfg: CfgNode) -> CfgNode:
    """Add every registered method's keys to ``cfg`` (call before merging any file)."""
    for hook in _CONFIG_HOOKS:
        hook(cfg)
    return cfg


def all_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    """Every leaf key of ``cfg`` in dotted form."""
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys += all_keys(v, full + ".") if isinstance(v, CfgNode) else [full]
    return keys


def _unknown_key_message(cfg: CfgNode, key: str, where: str) -> str:
    close = difflib.get_close_matches(key, all_keys(cfg), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown config key {key} in {where}{hint}"


def _check_keys(root: CfgNode, other: CfgNode, where: str) -> None:
    # yacs raises a bare KeyError on the first unknown key; check first so the user gets a hint.
    known = set(all_keys(root))
    for key in all_keys(other):
        if key not in known and not any(k.startswith(key + ".") for k in known):
            raise UserError(_unknown_key_message(root, key, where))


BASE_KEY = "_BASE_"


def merge_from_file(cfg: CfgNode, path: str, _seen: tuple[str, ...] = ()) -> None:
    """Merge a YAML file into ``cfg``; a missing file or unknown key is a :class:`UserError`.

    A file may start from another with ``_BASE_: other.yaml`` (a path relative to the file): the base
    is merged first, then the file's own keys. Ablation configs are a few lines on top of the main one.
    """
    if os.path.isdir(path):
        raise UserError(f"config file {path} is a folder; expected a YAML file "
                        f"(such as {path.rstrip(os.sep)}/vit_b32.yaml)")
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    if os.path.abspath(path) in _seen:
        raise UserError(f"config file {path} includes itself through {BASE_KEY}")
    with open(path) as f:
        text = f.read()
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as e:  # syntax errors carry line numbers; keep them
        raise UserError(f"cannot parse config file {path}: {' '.join(str(e).split())}") from None
    if content is not None and not isinstance(content, dict):
        raise UserError(f"config file {path} holds a YAML {type(content).__name__} at the top level; expected "
                        f"KEY: value lines (a mapping, such as 'OPTIM:' followed by indented '  MAX_EPOCH: 10')")
    try:
        other = cfg.load_cfg(text)
    except Exception as e:  # noqa: BLE001  (yacs reports a bad file in several ways; keep its words)
        raise UserError(f"cannot parse config file {path}: {' '.join(str(e).split())}") from e
    base = other.pop(BASE_KEY, None)
    if base:
        merge_from_file(cfg, os.path.join(os.path.dirname(path), base), _seen + (os.path.abspath(path),))
    _check_keys(cfg, other, path)
    try:
        cfg.merge_from_other_cfg(other)
    except (ValueError, KeyError) as e:
        raise UserError(f"bad value in config file {path}: {' '.join(str(e).split())}") from e


def _lookup(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def merge_from_list(cfg: CfgNode, opts: Iterable[str], where: str = "the command line") -> None:
    """Merge trailing ``KEY VALUE`` pairs; unknown keys and odd counts are :class:`UserError`."""
    opts = list(opts)
    if len(opts) % 2:
        raise UserError(f"options on {where} must come in KEY VALUE pairs; got {len(opts)} items: {opts}")
    keys = set(all_keys(cfg))
    for key in opts[0::2]:
        if key not in keys:
            raise UserError(_unknown_key_message(cfg, key, where))
    # A single word for a list-valued key ("DATASET.UNSEEN_CLASSES fear") means a one-item list;
    # "a,b" means two items. yacs would reject both as a type mismatch.
    pairs = []
    for key, value in zip(opts[0::2], opts[1::2]):
        current = _lookup(cfg, key)
        if isinstance(current, (list, tuple)) and isinstance(value, str):
            decoded = CfgNode._decode_cfg_value(value)
            if isinstance(decoded, str):
                value = [v.strip() for v in decoded.split(",") if v.strip()]
        pairs += [key, value]
    try:
        cfg.merge_from_list(pairs)
    except (ValueError, KeyError, AssertionError) as e:
        raise UserError(f"bad value on {where}: {' '.join(str(e).split())}") from e
