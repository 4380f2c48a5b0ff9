"""Optional bridge to a real Dassl.pytorch install: run this project's trainers from a Dassl-based
``train.py`` (Dassl's ``tools/train.py``, or a codebase built the same way).

It sits beside ``train.py``, above the engine, the datasets and the trainers, all of which it loads. Usage:
two lines (plus their import) in that ``train.py``, with this project installed (``pip install -e .`` in its
checkout)::

    from dassl_bridge import extend_dassl_cfg, register_with_dassl
    register_with_dassl()   # 1. at import, after the host's own trainer/dataset imports
    extend_dassl_cfg(cfg)   # 2. in the host's own extend_cfg(cfg), before any file is merged

then ``python train.py --trainer PromptEmo --dataset-config-file configs/datasets/mofer.yaml
--config-file configs/trainers/PromptEmo/vit_b32.yaml --root DATA --source-domains ... --target-domains ...``
(the config paths relative to this project's checkout).

What works
- :func:`register_with_dassl` imports this project's ``trainers`` and ``datasets`` packages and adds
  every trainer, dataset and evaluator of this project's registries (``Baseline``, ``CoOp``,
  ``PromptEmo``, ``ZSCLIP``; ``MOFER``; ``OpenSet``) to ``dassl.engine.TRAINER_REGISTRY``,
  ``dassl.data.datasets.DATASET_REGISTRY`` and ``dassl.evaluation.EVALUATOR_REGISTRY``, so Dassl's
  ``build_trainer(cfg)`` returns *this project's* class. Nothing is wrapped: the trainer brings its own
  epoch loop, data manager, evaluator, checkpoints and ``results.json``; Dassl only finds and builds it.
- :func:`extend_dassl_cfg` adds to the Dassl config every key of this project's config (defaults plus
  every trainer/reader hook, i.e. ``get_cfg_default()`` + ``extend_cfg``) that the Dassl config lacks,
  with this project's default value, recursively (``TRAINER.PROMPTEMO.*``, ``DATASET.UNSEEN_CLASSES``,
  ``DATASET.SYNTHETIC.*``, the readers' ``DATASET.<DOMAIN>.*``, ``DATALOADER.CACHE.*``,
  ``TRAIN.PRECISION``, ``TEST.NUM_THRESHOLDS``...). It also lets ``cfg.merge_from_file`` read this
  project's YAML files that start with ``_BASE_: other.yaml`` (``tiny.yaml``, the ablations): that one
  method of that one config object becomes this project's ``engine.config.merge_from_file`` (base file
  first, unknown keys reported with a did-you-mean hint); the class and all else stay yacs's.
- Tested (tests/test_dassl_bridge.py, where Dassl imports): Dassl's ``build_trainer`` on a config set
  up as Dassl's ``tools/train.py`` does trains PromptEmo and writes ``results.json``; Dassl's own
  ``tools/train.py`` ``main`` with the two lines trains, and its ``--eval-only`` (``load_model(); test()``)
  writes ``results.json`` too (this project's ``load_model`` makes the next ``test()`` report).

Decisions
- Keys Dassl already has keep Dassl's value, even where this project's default differs
  (:func:`differing_defaults` lists them: ``SEED``, ``INPUT.INTERPOLATION``, ``INPUT.TRANSFORMS``,
  ``INPUT.PIXEL_MEAN/STD``, ``MODEL.BACKBONE.NAME``, ``TEST.EVALUATOR``). Dassl's own trainers in the
  same program must see Dassl's defaults, and this project's YAML files set what a run needs
  (``vit_b32.yaml``: backbone, interpolation, transforms). Not set there: ``INPUT.PIXEL_MEAN/STD``, so
  under Dassl images are normalised with Dassl's ImageNet statistics unless the YAML or the command
  line sets CLIP's (``engine.config.CLIP_PIXEL_MEAN/STD``); this project's ``train.py`` uses CLIP's.
- Evaluator: ``TEST.EVALUATOR`` keeps Dassl's default ``Classification``; switching it globally would
  hand Dassl's closed-set trainers an open-set evaluator. This project's trainers build their evaluator
  from this project's registry, which has only ``OpenSet``, so a PromptEmo run needs
  ``TEST.EVALUATOR: "OpenSet"``, which both dataset YAML files here set (``configs/datasets/mofer.yaml``,
  ``synthetic.yaml``); a config without it fails when the trainer is built, naming ``Classification``.
  ``OpenSet`` is added to Dassl's registry for completeness; it takes probabilities, not Dassl's logits.
- Name clashes: a name Dassl's registry already holds for another object is skipped, with a warning
  (the host codebase's class wins: CoOp's codebase, for instance, registers its own ``CoOp``).
  Re-registering the same object is a no-op; an object of the same module and class name (a reloaded
  module) replaces the stale one (``force``), which is the only forced registration. Call
  :func:`register_with_dassl` after the host's own trainer imports, else the host's
  ``@TRAINER_REGISTRY.register()`` of a clashing name fails in Dassl's registry.
- Logging: this project reports through Python ``logging`` (progress, warnings, the results table).
  Importing Dassl calls ``logging.disable(logging.WARNING)`` (for WILDS), which hides all of that, and
  Dassl's ``train.py`` configures no logging (it prints). So :func:`register_with_dassl` lifts that
  ``logging.disable`` and, where the program has no root handler, sends this project's INFO records
  (``engine.*``, ``trainers.*``, ``datasets.*``) to the current ``sys.stdout``, which reaches the
  console and Dassl's ``log.txt`` tee. ``register_with_dassl(console_log=False)`` does neither.

Does not work
- A host codebase with its own top-level ``trainers`` or ``datasets`` package (CoOp's repository has
  both; Hugging Face's ``datasets`` library is another) shadows this project's packages of the same
  names: both calls then stop with an error naming both paths instead of loading the other modules.
- Dassl's own trainers (``Vanilla``, ``DAELDG``, ``DANN``...) on this project's ``MOFER`` dataset or with its
  ``OpenSet`` evaluator: they are closed-set (an unseen class's test images would count as errors; ``OpenSet``
  takes probabilities, not their logits) and write no ``results.json``. :func:`register_with_dassl` makes
  Dassl's ``SimpleTrainer.__init__`` refuse that combination first, with one line naming the trainer and what
  to run instead (:func:`refuse_dassl_trainer_on_project_data`), before a Dassl trainer's own ``check_cfg``
  (``DAELDG``'s bare ``AssertionError``). This project's trainers on Dassl's datasets do not work either (they
  read through this project's data manager and domain readers): an unknown dataset name, one line.
- Dassl's ``tools/train.py`` calls ``clean_cfg(cfg, args.trainer)``, which removes every
  ``TRAINER.<X>`` but the one named by ``--trainer``: pass ``--trainer PromptEmo`` (a name set only in
  the YAML leaves ``TRAINER.PROMPTEMO`` removed).
- Dassl's ``train.py`` has no error handler: :func:`register_with_dassl` installs a ``sys.excepthook`` that
  prints an uncaught :class:`engine.utils.errors.UserError` as one ``error: ...`` line (no traceback); the exit
  status is Python's for an uncaught exception, 1 (this project's ``train.py`` exits 2). Other exceptions
  keep their tracebacks.
- ``train.py``'s output-folder lock (``engine.utils.output_lock``) is taken by this project's ``train.py``,
  not by Dassl's: two Dassl programs into one ``OUTPUT_DIR`` are not refused.

Importing this module needs no Dassl; :func:`register_with_dassl` raises
:class:`DasslNotImportableError` when ``dassl`` (or a package its import needs) cannot be imported.
"""
from __future__ import annotations

import copy
import functools
import importlib
import logging
import os
import sys
from typing import Any

from yacs.config import CfgNode

from engine.config import all_keys, extend_cfg, get_cfg_default
from engine.config import merge_from_file as _project_merge_from_file
from engine.utils.errors import UserError, user_error_line

__all__ = ["DasslNotImportableError", "register_with_dassl", "extend_dassl_cfg", "differing_defaults",
           "refuse_dassl_trainer_on_project_data"]

logger = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.abspath(__file__))
# The project's packages that register trainers, datasets, readers and their config hooks.
_PROJECT_PACKAGES = ("trainers", "datasets")
# (kind, this project's module holding the registry, Dassl's module holding the registry)
_REGISTRIES = (
    ("TRAINER", "engine.trainer", "dassl.engine"),
    ("DATASET", "engine.data.datasets", "dassl.data.datasets"),
    ("EVALUATOR", "engine.evaluation", "dassl.evaluation"),
)
_LOGGED_PACKAGES = ("engine", "trainers", "datasets", "dassl_bridge")
_BRIDGE_HANDLER_TAG = "_dassl_bridge_handler"


class DasslNotImportableError(ImportError, UserError):
    """``dassl`` (Dassl.pytorch) or something its import needs cannot be imported."""


# --------------------------------------------------------------------------- helpers
def _import_dassl_registries() -> dict[str, Any]:
    registries = {}
    for kind, _, dassl_module in _REGISTRIES:
        try:
            module = importlib.import_module(dassl_module)
        except ImportError as e:  # ModuleNotFoundError included
            raise DasslNotImportableError(
                f"dassl is not importable ({type(e).__name__}: {e}); register_with_dassl() needs "
                "Dassl.pytorch (https://github.com/KaiyangZhou/Dassl.pytorch) installed or on PYTHONPATH, "
                "with the packages its import needs (gdown, wilds, pandas, ...)") from e
        registries[kind] = getattr(module, f"{kind}_REGISTRY")
    return registries


def _same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _load_project() -> None:
    """Import this project's ``trainers`` and ``datasets`` (registering everything and every config
    hook), refusing a host codebase's packages of the same names."""
    for name in _PROJECT_PACKAGES:
        expected = os.path.join(PROJECT_ROOT, name)
        module = sys.modules.get(name)
        if module is None:
            try:
                module = importlib.import_module(name)
            except ImportError as e:
                raise UserError(f"cannot import this project's '{name}' package ({e}); install the project in "
                                f"this environment: pip install -e {PROJECT_ROOT}") from None
        found = os.path.dirname(getattr(module, "__file__", None) or "")
        if not found or not _same_path(found, expected):
            raise UserError(
                f"the package '{name}' imported here is {found or module!r}, not this project's {expected}: "
                f"another top-level '{name}' package (the host codebase's, or an installed library's) "
                "shadows this project's, so the bridge cannot load this project's trainers and datasets "
                "in this program")


def _registered(registry: Any) -> dict[str, Any]:
    return {name: registry.get(name) for name in registry.registered_names()}


def _same_definition(a: Any, b: Any) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", None), getattr(b, "__qualname__", None))


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record is emitted (Dassl replaces it with a tee
    into ``log.txt`` after the handler exists), and stays quiet once the root logger has handlers
    (the program configured logging itself; records propagate there)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        setattr(self, _BRIDGE_HANDLER_TAG, True)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        self.stream = sys.stdout
        super().emit(record)


def _route_project_logging_to_stdout() -> None:
    # Dassl's import runs logging.disable(logging.WARNING) (dassl/data/datasets/dg/wilds/wilds_base.py,
    # to quiet WILDS), which hides every INFO and WARNING record of every logger in the program.
    if logging.root.manager.disable >= logging.INFO:
        logging.disable(logging.NOTSET)
    if logging.getLogger().handlers:
        return
    for name in _LOGGED_PACKAGES:
        lg = logging.getLogger(name)
        if any(getattr(h, _BRIDGE_HANDLER_TAG, False) for h in lg.handlers):
            continue
        lg.addHandler(_CurrentStdoutHandler())
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)


# --------------------------------------------------------------------------- registration
def register_with_dassl(console_log: bool = True) -> dict[str, dict[str, str]]:
    """Register this project's trainers, datasets and evaluators in Dassl's registries.

    Returns, per registry (``"TRAINER"``, ``"DATASET"``, ``"EVALUATOR"``), each of this project's
    names with what happened: ``"registered"``, ``"already registered"`` (same object; calling twice
    is harmless), ``"replaced stale copy"`` (same module and class name, e.g. after a reload) or
    ``"skipped: ..."`` (Dassl's registry holds another object under that name; it is kept).
    Raises :class:`DasslNotImportableError` when ``dassl`` cannot be imported.
    """
    dassl_registries = _import_dassl_registries()
    if console_log:  # first, so that the warnings below are shown
        _route_project_logging_to_stdout()
    _load_project()
    _guard_dassl_trainers()
    _report_user_errors_in_one_line()
    report: dict[str, dict[str, str]] = {}
    for kind, project_module, _ in _REGISTRIES:
        ours = getattr(importlib.import_module(project_module), f"{kind}_REGISTRY")
        theirs = dassl_registries[kind]
        present = _registered(theirs)
        outcome: dict[str, str] = {}
        for name, obj in ours:
            if name in present:
                other = present[name]
                if other is obj:
                    outcome[name] = "already registered"
                    continue
                if not _same_definition(other, obj):
                    where = f"{getattr(other, '__module__', '?')}.{getattr(other, '__qualname__', other)}"
                    outcome[name] = f"skipped: Dassl's {kind} registry already has {where}"
                    logger.warning("dassl bridge: %s '%s' not registered: Dassl's registry already has %s "
                                   "(kept)", kind.lower(), name, where)
                    continue
                outcome[name] = "replaced stale copy"
            else:
                outcome[name] = "registered"
            force = outcome[name] == "replaced stale copy"
            if getattr(obj, "__name__", None) == name:
                theirs.register(obj, force=force)
            else:  # Dassl's register() always uses __name__; register under this project's name
                theirs._do_register(name, obj, force=force)
        report[kind] = outcome
    return report


# --------------------------------------------------------------------------- what is refused
_GUARD_TAG = "_dassl_bridge_guard"


def _project_names(kind: str) -> list[str]:
    module = next(m for k, m, _ in _REGISTRIES if k == kind)
    return [name for name, _ in getattr(importlib.import_module(module), f"{kind}_REGISTRY")]


def _is_ours_in_dassl(kind: str, name: str) -> bool:
    """Whether Dassl's ``kind`` registry holds *this project's* object under ``name`` (not a host's of that name)."""
    ours_module, dassl_module = next((m, d) for k, m, d in _REGISTRIES if k == kind)
    ours = getattr(importlib.import_module(ours_module), f"{kind}_REGISTRY")
    theirs = getattr(importlib.import_module(dassl_module), f"{kind}_REGISTRY")
    return name in ours and name in theirs.registered_names() and theirs.get(name) is ours.get(name)


def refuse_dassl_trainer_on_project_data(cfg: CfgNode) -> None:
    """A :class:`UserError` when a config asks one of *Dassl's* trainers for this project's dataset or evaluator.

    Dassl's trainers are closed-set: on MOFER they count every test image of the unseen class as an error (with
    Dassl's ``Classification``), or hand logits to ``OpenSet``, which takes probabilities, and print metrics
    without ``results.json``; some (``DAELDG``) stop on a bare ``AssertionError`` about samplers first."""
    dataset, evaluator = cfg.DATASET.NAME, cfg.TEST.EVALUATOR
    if _is_ours_in_dassl("DATASET", dataset):
        what = f"dataset {dataset}"
    elif _is_ours_in_dassl("EVALUATOR", evaluator):
        what = f"evaluator {evaluator}"
    else:
        return
    raise UserError(f"Dassl's trainer {cfg.TRAINER.NAME} cannot run on this project's {what}: Dassl's trainers are "
                    f"closed-set (no unseen class, no open-set metrics, no results.json); train one of this project's "
                    f"trainers ({', '.join(_project_names('TRAINER'))}) on it, or Dassl's trainer on a Dassl dataset "
                    f"with TEST.EVALUATOR Classification")


def _guard_dassl_trainers() -> None:
    """Make Dassl's ``SimpleTrainer.__init__`` (the start of every Dassl trainer, before its ``check_cfg``) call
    :func:`refuse_dassl_trainer_on_project_data`. This project's trainers do not derive from it; once is enough."""
    trainer_module = importlib.import_module("dassl.engine.trainer")
    base = trainer_module.SimpleTrainer
    if getattr(base.__init__, _GUARD_TAG, False):
        return
    original = base.__init__

    @functools.wraps(original)
    def __init__(self, cfg, *args, **kwargs):
        refuse_dassl_trainer_on_project_data(cfg)
        original(self, cfg, *args, **kwargs)

    setattr(__init__, _GUARD_TAG, True)
    base.__init__ = __init__


def _report_user_errors_in_one_line() -> None:
    """Dassl's ``train.py`` catches nothing: a :class:`UserError` (a user's mistake, with a message naming what
    to fix) would end in a traceback. Print it as ``error: <message>`` on stderr instead, as this project's
    ``train.py`` does; the exit status stays Python's for an uncaught exception (1). Other exceptions keep the
    previous hook."""
    if getattr(sys.excepthook, _GUARD_TAG, False):
        return
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        if isinstance(value, UserError):
            print(f"error: {user_error_line(value)}", file=sys.stderr)
            return
        previous(kind, value, traceback)

    setattr(excepthook, _GUARD_TAG, True)
    sys.excepthook = excepthook


# --------------------------------------------------------------------------- config
def _project_cfg() -> CfgNode:
    _load_project()
    cfg = get_cfg_default()
    extend_cfg(cfg)
    return cfg


def _add_missing(dst: CfgNode, src: CfgNode, prefix: str, added: list[str]) -> None:
    for key, value in src.items():
        if key not in dst:
            dst[key] = copy.deepcopy(value)
            added.append(prefix + key)
        elif isinstance(value, CfgNode) and isinstance(dst[key], CfgNode):
            _add_missing(dst[key], value, f"{prefix}{key}.", added)
        # else: Dassl already has the key (a leaf, or a node where ours is a leaf): Dassl's stays


def extend_dassl_cfg(cfg: CfgNode, base_files: bool = True) -> CfgNode:
    """Add to a Dassl config every key of this project's config that it lacks, with this project's
    default (recursively); keys it has keep their values. Call it in the host's ``extend_cfg``,
    before any file is merged. With ``base_files`` (default), ``cfg.merge_from_file`` becomes this
    project's :func:`engine.config.merge_from_file`: it follows ``_BASE_: other.yaml`` (merged first)
    and reports an unknown key with a did-you-mean hint (a :class:`engine.utils.errors.UserError`)
    instead of yacs's bare ``KeyError``. Returns ``cfg``."""
    if not isinstance(cfg, CfgNode):
        raise TypeError(f"extend_dassl_cfg expects a yacs CfgNode (Dassl's config), got {type(cfg).__name__}")
    if cfg.is_frozen():
        raise UserError("extend_dassl_cfg: the config is frozen; call it in extend_cfg, before cfg.freeze()")
    added: list[str] = []
    _add_missing(cfg, _project_cfg(), "", added)
    if base_files:
        # An instance attribute shadows the class's method; it lives in the node's __dict__ (as
        # yacs's own flags do: yacs's __setattr__ would make it a config key), so cfg.clone() and
        # pickling carry it, bound to the copy. The keys, the class and every other method are yacs's.
        cfg.__dict__["merge_from_file"] = functools.partial(_project_merge_from_file, cfg)
    logger.debug("dassl bridge: added %d config keys: %s", len(added), ", ".join(added))
    return cfg


def differing_defaults(cfg: CfgNode) -> dict[str, tuple[Any, Any]]:
    """Keys present in both ``cfg`` and this project's config whose values differ:
    ``{key: (value in cfg, this project's default)}`` (after :func:`extend_dassl_cfg`, on a fresh
    Dassl config: the defaults Dassl keeps, see the module notes)."""
    ours = _project_cfg()
    theirs = set(all_keys(cfg))
    out = {}
    for key in all_keys(ours):
        if key not in theirs:
            continue
        a, b = cfg, ours
        for part in key.split("."):
            a, b = a[part], b[part]
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out[key] = (a, b)
    return out
