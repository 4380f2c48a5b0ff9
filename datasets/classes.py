"""The seven basic expressions in the paper's canonical order, and the names users may call them.

``0 surprise, 1 fear, 2 disgust, 3 happiness, 4 sadness, 5 anger, 6 neutral`` (every table of the
paper uses this order). Aliases cover the spellings found in dataset folders and on command lines.
"""
from __future__ import annotations

from engine.utils.errors import UserError

CANONICAL_CLASSES: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")

# Short column headers used in the paper's tables
SHORT_NAMES = {"surprise": "Sur.", "fear": "Fea.", "disgust": "Dis.", "happiness": "Hap.", "sadness": "Sad.",
               "anger": "Ang.", "neutral": "Neu."}

_ALIASES = {
    "surprise": ("surprise", "surprised", "sur"),
    "fear": ("fear", "fearful", "afraid", "scared", "fea"),
    "disgust": ("disgust", "disgusted", "dis"),
    "happiness": ("happiness", "happy", "hap", "joy"),
    "sadness": ("sadness", "sad"),
    "anger": ("anger", "angry", "ang"),
    "neutral": ("neutral", "neu"),
}
ALIASES: dict[str, str] = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}

# Expressions some datasets label that are not among the seven; readers drop them with a warning.
KNOWN_OTHER_EXPRESSIONS = frozenset({"contempt", "unknown", "none", "uncertain", "non-face", "nf"})


def canonical_name(name: str) -> str | None:
    """The canonical class of ``name`` (case, spaces, dashes and a trailing ``.`` ignored), or None."""
    key = name.strip().lower().replace(" ", "").replace("-", "").replace("_", "").rstrip(".")
    return ALIASES.get(key)


def resolve_class(name: str, where: str = "DATASET.UNSEEN_CLASSES") -> str:
    """Canonical name of ``name``, or a :class:`UserError` naming the accepted names."""
    canonical = canonical_name(name)
    if canonical is None:
        raise UserError(f"unknown expression class '{name}' in {where}; "
                        f"expected one of {', '.join(CANONICAL_CLASSES)} (or an alias such as happy, sad, angry)")
    return canonical


def class_index(name: str) -> int:
    return CANONICAL_CLASSES.index(resolve_class(name))
