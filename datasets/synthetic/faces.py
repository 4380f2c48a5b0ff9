"""What a face shows: expressions as FACS-inspired displacements of the neutral face (:class:`Expression`,
:func:`expression_for`) and person-specific geometry and colours (:class:`Identity`, :func:`random_identity`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from datasets.classes import CANONICAL_CLASSES
from datasets.synthetic.styles import DomainStyle


@dataclass
class Expression:
    """Facial-feature parameters; the defaults are the neutral face.

    Distances are in face units (face half-width = 1), y grows downwards.
    """

    brow_raise: float = 0.0  # both brows up (+) / down (-)
    brow_inner_raise: float = 0.0  # inner brow corners up (+) / down (-)
    brow_pull: float = 0.0  # inner brow corners pulled towards the midline
    brow_arch: float = 0.0  # extra upward curvature of the brow
    eye_open: float = 1.0  # eye-opening multiplier
    lid_inner: float = 0.1  # upper-lid cover at the inner corner (0..1)
    lid_outer: float = 0.1  # upper-lid cover at the outer corner (0..1)
    lower_lid: float = 0.05  # lower-lid cover from below (0..1)
    cheek_raise: float = 0.0  # cheek bulge / nasolabial folds (0..1)
    nose_wrinkle: float = 0.0  # wrinkles on the nose bridge (0..1)
    forehead_lines: float = 0.0  # horizontal forehead wrinkles (0..1)
    glabella_lines: float = 0.0  # vertical lines between the brows (0..1)
    mouth_width: float = 1.0  # width multiplier
    mouth_curve: float = 0.0  # corners up (+) / down (-)
    mouth_open_upper: float = 0.0  # opening above the lip line
    mouth_open_lower: float = 0.0  # opening below the lip line (jaw drop)
    mouth_asym: float = 0.0  # one corner up, the other down (sneer)
    lip_press: float = 0.0  # lips pressed thin (0..1)
    teeth: float = 0.0  # visible upper teeth (0..1)


_NEUTRAL = Expression()

#: Full-intensity prototypes as *displacements* from neutral (FACS-inspired).
_PROTOTYPES: dict[str, dict[str, float]] = {
    # AU1+2 (brows up, arched), AU5 (upper lid raiser), AU26/27 (jaw drop).
    "surprise": dict(
        brow_raise=0.17,
        brow_arch=0.07,
        eye_open=0.45,
        lid_inner=-0.1,
        lid_outer=-0.1,
        lower_lid=-0.05,
        forehead_lines=1.0,
        mouth_width=-0.3,
        mouth_open_upper=0.1,
        mouth_open_lower=0.3,
    ),
    # AU1+2+4 (brows up but pulled together, flat), AU5, AU20 (lip stretch), AU25.
    "fear": dict(
        brow_raise=0.09,
        brow_inner_raise=0.09,
        brow_pull=0.08,
        brow_arch=-0.05,
        eye_open=0.4,
        lid_inner=-0.1,
        lid_outer=-0.1,
        lower_lid=0.05,
        forehead_lines=0.6,
        glabella_lines=0.4,
        mouth_width=0.32,
        mouth_curve=-0.05,
        mouth_open_upper=0.02,
        mouth_open_lower=0.07,
        teeth=0.6,
    ),
    # AU9 (nose wrinkle), AU10 (upper lip raiser), AU4 (brows lowered).
    "disgust": dict(
        brow_raise=-0.07,
        brow_inner_raise=-0.03,
        brow_pull=0.03,
        eye_open=-0.15,
        lower_lid=0.3,
        lid_inner=0.1,
        cheek_raise=0.5,
        nose_wrinkle=1.0,
        mouth_width=-0.1,
        mouth_curve=-0.08,
        mouth_open_upper=0.07,
        mouth_asym=0.12,
        teeth=0.5,
    ),
    # AU6 (cheek raiser), AU12 (lip corner puller), AU25 (lips part).
    "happiness": dict(
        eye_open=-0.15,
        lower_lid=0.35,
        cheek_raise=1.0,
        mouth_width=0.3,
        mouth_curve=0.2,
        mouth_open_lower=0.14,
        teeth=1.0,
    ),
    # AU1+4 (inner brows up, oblique), lids drooping, AU15 (lip corner depressor).
    "sadness": dict(
        brow_inner_raise=0.13,
        brow_raise=-0.02,
        brow_pull=0.03,
        brow_arch=-0.04,
        eye_open=-0.1,
        lid_outer=0.45,
        lid_inner=0.1,
        glabella_lines=0.3,
        mouth_width=-0.05,
        mouth_curve=-0.17,
    ),
    # AU4 (brows lowered and together), AU5/7 (glare), AU23/24 (lips pressed).
    "anger": dict(
        brow_raise=-0.08,
        brow_inner_raise=-0.13,
        brow_pull=0.07,
        eye_open=-0.1,
        lid_inner=0.35,
        lid_outer=-0.05,
        lower_lid=0.2,
        glabella_lines=1.0,
        mouth_width=-0.2,
        mouth_curve=-0.03,
        lip_press=1.0,
    ),
    "neutral": dict(),
}


def expression_for(label: int, intensity: float, rng: np.random.Generator) -> Expression:
    """Neutral face + ``intensity`` x prototype of ``label`` + small idiosyncrasies.

    The idiosyncratic offsets (a face that looks a little sad or a little
    smiley when relaxed) make weak expressions genuinely ambiguous.
    """
    name = CANONICAL_CLASSES[label]
    values = asdict(_NEUTRAL)
    for key, delta in _PROTOTYPES[name].items():
        values[key] += intensity * delta
    # Resting-face idiosyncrasies, independent of the expression.
    values["brow_raise"] += rng.normal(0.0, 0.02)
    values["brow_inner_raise"] += rng.normal(0.0, 0.02)
    values["eye_open"] += rng.normal(0.0, 0.07)
    values["mouth_curve"] += rng.normal(0.0, 0.03)
    values["mouth_width"] += rng.normal(0.0, 0.05)
    return Expression(**values)


@dataclass
class Identity:
    """Random person-specific geometry and colours (face units)."""

    face_w: float  # half-width of the head ellipse
    face_h: float  # half-height of the head ellipse
    eye_y: float
    eye_sep: float  # x distance of each eye centre from the midline
    eye_w: float  # eye half-width
    eye_h: float  # eye half-height at rest
    brow_gap: float  # vertical gap brow -> eye centre
    brow_thick: float
    brow_len: float
    nose_len: float
    mouth_y: float
    mouth_w: float  # mouth half-width at rest
    lip_h: float  # lip thickness
    skin: tuple[int, int, int]
    hair_color: tuple[int, int, int]
    iris_color: tuple[int, int, int]
    lip_color: tuple[int, int, int]
    shirt_color: tuple[int, int, int]
    hair_style: int  # 0 = short, 1 = long, 2 = bald


def _jitter_color(rng: np.random.Generator, color: Sequence[int], std: float) -> tuple[int, int, int]:
    c = np.asarray(color, dtype=float) * (1.0 + rng.normal(0.0, std)) + rng.normal(0.0, std * 40.0, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A uniformly random RGB colour."""
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def random_identity(style: DomainStyle, rng: np.random.Generator) -> Identity:
    """Sample identity geometry and colours for one face."""
    skin = _jitter_color(rng, style.skin_palette[rng.integers(len(style.skin_palette))], 0.05)
    hair_base = [(30, 20, 15), (70, 45, 25), (120, 80, 40), (200, 170, 110), (90, 90, 90), (20, 20, 20)]
    lip = tuple(int(v) for v in np.clip(np.array(skin) * np.array([0.85, 0.55, 0.55]), 0, 255))
    return Identity(
        face_w=rng.uniform(0.88, 1.05),
        face_h=rng.uniform(1.18, 1.38),
        eye_y=rng.uniform(-0.22, -0.12),
        eye_sep=rng.uniform(0.36, 0.45),
        eye_w=rng.uniform(0.15, 0.2),
        eye_h=rng.uniform(0.075, 0.095),
        brow_gap=rng.uniform(0.2, 0.26),
        brow_thick=rng.uniform(0.045, 0.08),
        brow_len=rng.uniform(0.32, 0.4),
        nose_len=rng.uniform(0.3, 0.4),
        mouth_y=rng.uniform(0.5, 0.6),
        mouth_w=rng.uniform(0.28, 0.36),
        lip_h=rng.uniform(0.035, 0.06),
        skin=skin,
        hair_color=_jitter_color(rng, hair_base[rng.integers(len(hair_base))], 0.1),
        iris_color=_jitter_color(rng, [(60, 40, 20), (40, 80, 120), (60, 100, 60), (30, 25, 20)][rng.integers(4)], 0.1),
        lip_color=lip,
        shirt_color=random_color(rng),
        hair_style=int(rng.integers(3)),
    )
