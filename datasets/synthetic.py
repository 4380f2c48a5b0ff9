"""Synthetic multi-domain facial-expression data ("synthetic domains").

Real FER datasets (RAF-DB, FERPlus, AffectNet, Oulu-CASIA) cannot be shipped, so
the demo and the tests use generated domains instead.  Every domain holds all
seven basic expressions drawn as schematic faces and is written to disk as
ordinary PNG files in the project's generic folder layout::

    <root>/<domain>/{train,test}/<class>/<domain>_<class>_<i:04d>.png
    <root>/<domain>/synthetic.json          # generation parameters (marker)

so that it goes through exactly the same reading code as real data.

The four domains imitate the way the real datasets differ from one another:

``synth_color``  colour "in the wild" photos (like RAF-DB): varied skin tones,
                 coloured cluttered backgrounds, moderate pose, mild noise.
``synth_gray``   low-resolution greyscale (like FERPlus / FER2013): rendered,
                 converted to grey, down-sampled to 24-32 px and back up,
                 low contrast, some noise.
``synth_lab``    laboratory captures (like Oulu-CASIA): frontal, centred,
                 constant scale, plain dark background, strong directional
                 light, almost no noise, near-monochrome tint.
``synth_wild``   hard wild images (like AffectNet): strong pose / rotation /
                 scale / translation variation, partial crops, heavy noise and
                 colour jitter, random occluders.

Each face is drawn from an expression *prototype* (FACS-inspired displacement
of brows, lids, cheeks and mouth from the neutral face) scaled by a random
intensity, on top of random identity geometry, so that similar pairs
(fear/surprise, disgust/anger, sadness/neutral) are genuinely confusable at low
intensity.

Command line::

    python scripts/make_synthetic.py --root data --preview preview.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CLASSNAMES",
    "DOMAIN_STYLES",
    "DOMAINS",
    "GENERATOR_VERSION",
    "MARKER_FILE",
    "DomainStyle",
    "Expression",
    "Identity",
    "render_face",
    "generate_domain",
    "is_generated",
    "ensure_domains",
    "make_preview",
]

#: Canonical class order; the folder names of the classes.
CLASSNAMES: tuple[str, ...] = (
    "surprise",
    "fear",
    "disgust",
    "happiness",
    "sadness",
    "anger",
    "neutral",
)

#: Bump whenever the rendering changes, so that old folders are regenerated.
GENERATOR_VERSION = 2

#: Name of the marker file written into every generated domain folder.
MARKER_FILE = "synthetic.json"

#: Supersampling factor used for anti-aliasing.
SUPERSAMPLE = 4

_SPLITS = ("train", "test")


# ----------------------------------------------------------------------------
# Domain styles
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainStyle:
    """Parameters describing the look of one synthetic domain.

    Ranges are ``(low, high)`` tuples sampled uniformly per image.
    """

    name: str
    #: ``"clutter"`` (random coloured shapes), ``"plain"`` (uniform + vignette).
    background: str = "clutter"
    #: Number of random background shapes for ``"clutter"``.
    n_background_shapes: tuple[int, int] = (6, 12)
    #: Background brightness (0..255) for ``"plain"`` backgrounds.
    background_level: tuple[float, float] = (20.0, 50.0)
    #: Candidate skin tones (RGB); one is picked and jittered per image.
    skin_palette: tuple[tuple[int, int, int], ...] = (
        (255, 224, 196),
        (241, 194, 160),
        (224, 172, 130),
        (198, 134, 96),
        (160, 102, 66),
        (110, 70, 45),
    )
    #: Face scale relative to the canvas (1 = face fills ~70% of the height).
    scale: tuple[float, float] = (0.85, 1.05)
    #: In-plane rotation in degrees (symmetric, +-).
    rotation_deg: float = 10.0
    #: Translation as a fraction of the image size (symmetric, +-).
    shift: float = 0.06
    #: Head yaw in [-1, 1] (moves features sideways, narrows the face).
    yaw: float = 0.3
    #: Render as greyscale (all channels equal).
    grayscale: bool = False
    #: Mix towards grey before tinting: 0 = full colour, 1 = monochrome.
    desaturate: float = 0.0
    #: Per-channel multiplier applied after desaturation (colour tint).
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: If set, down-sample to a random side length in this range and back up.
    low_res: tuple[int, int] | None = None
    #: Contrast factor around the image mean.
    contrast: tuple[float, float] = (0.9, 1.1)
    #: Brightness offset (added, 0..255 scale).
    brightness: tuple[float, float] = (-10.0, 10.0)
    #: Std of an independent gain per RGB channel (colour jitter).
    color_jitter: float = 0.05
    #: Std of additive Gaussian pixel noise (0..255 scale).
    noise_std: tuple[float, float] = (2.0, 6.0)
    #: Strength of a linear directional-light gradient (multiplicative).
    light_gradient: tuple[float, float] = (0.0, 0.15)
    #: Probability of drawing a random occluding shape over the face.
    occlusion_prob: float = 0.0
    #: Whether the figure has hair / shoulders drawn.
    hair: bool = True


DOMAIN_STYLES: dict[str, DomainStyle] = {
    "synth_color": DomainStyle(
        name="synth_color",
        background="clutter",
        n_background_shapes=(6, 12),
        scale=(0.85, 1.05),
        rotation_deg=10.0,
        shift=0.06,
        yaw=0.3,
        contrast=(0.9, 1.15),
        brightness=(-10.0, 15.0),
        color_jitter=0.05,
        noise_std=(2.0, 5.0),
        light_gradient=(0.0, 0.15),
    ),
    "synth_gray": DomainStyle(
        name="synth_gray",
        background="clutter",
        n_background_shapes=(3, 7),
        scale=(0.9, 1.05),
        rotation_deg=8.0,
        shift=0.05,
        yaw=0.25,
        grayscale=True,
        desaturate=1.0,
        low_res=(26, 32),
        contrast=(0.6, 0.85),
        brightness=(-15.0, 15.0),
        color_jitter=0.0,
        noise_std=(4.0, 9.0),
        light_gradient=(0.0, 0.15),
    ),
    "synth_lab": DomainStyle(
        name="synth_lab",
        background="plain",
        background_level=(15.0, 45.0),
        skin_palette=((238, 200, 170), (225, 180, 150), (205, 160, 125)),
        scale=(0.97, 1.03),
        rotation_deg=1.5,
        shift=0.01,
        yaw=0.03,
        desaturate=0.85,
        tint=(1.0, 0.93, 0.78),
        contrast=(1.1, 1.25),
        brightness=(-5.0, 5.0),
        color_jitter=0.0,
        noise_std=(0.0, 1.0),
        light_gradient=(0.45, 0.7),
        hair=True,
    ),
    "synth_wild": DomainStyle(
        name="synth_wild",
        background="clutter",
        n_background_shapes=(10, 18),
        scale=(0.7, 1.35),
        rotation_deg=25.0,
        shift=0.16,
        yaw=0.6,
        contrast=(0.7, 1.3),
        brightness=(-30.0, 30.0),
        color_jitter=0.15,
        noise_std=(8.0, 18.0),
        light_gradient=(0.0, 0.35),
        occlusion_prob=0.35,
    ),
}

#: The synthetic domain names in their canonical order.
DOMAINS: tuple[str, ...] = tuple(DOMAIN_STYLES)


# ----------------------------------------------------------------------------
# Expressions and identities
# ----------------------------------------------------------------------------
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
    name = CLASSNAMES[label]
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


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
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
        shirt_color=_random_color(rng),
        hair_style=int(rng.integers(3)),
    )


# ----------------------------------------------------------------------------
# Drawing helpers.  A _Canvas maps face units to supersampled pixels.
# ----------------------------------------------------------------------------
@dataclass
class _Canvas:
    draw: ImageDraw.ImageDraw
    unit: float  # pixels per face unit
    cx: float  # pixel position of the face centre
    cy: float
    yaw: float = 0.0  # sideways shift of the features (face units)

    def p(self, x: float, y: float, depth: float = 1.0) -> tuple[float, float]:
        """Face units -> pixels; ``depth`` scales the yaw shift (nose > eyes)."""
        return (self.cx + (x + self.yaw * depth) * self.unit, self.cy + y * self.unit)

    def w(self, width: float) -> int:
        return max(1, int(round(width * self.unit)))

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill=None, outline=None, width: float = 0.0, depth: float = 1.0):
        px, py = self.p(x, y, depth)
        box = (px - rx * self.unit, py - ry * self.unit, px + rx * self.unit, py + ry * self.unit)
        self.draw.ellipse(box, fill=fill, outline=outline, width=self.w(width) if outline is not None else 0)

    def polygon(self, pts: Iterable[tuple[float, float]], fill=None, depth: float = 1.0):
        pts = [self.p(x, y, depth) for x, y in pts]
        if len(pts) >= 3:
            self.draw.polygon(pts, fill=fill)

    def line(self, pts: Iterable[tuple[float, float]], fill, width: float, depth: float = 1.0, round_caps: bool = True):
        pts = [self.p(x, y, depth) for x, y in pts]
        if len(pts) < 2:
            return
        w = self.w(width)
        self.draw.line(pts, fill=fill, width=w, joint="curve")
        if round_caps and w > 2:
            r = w / 2.0
            for px, py in (pts[0], pts[-1]):
                self.draw.ellipse((px - r, py - r, px + r, py + r), fill=fill)


def _mix(a: Sequence[int], b: Sequence[int], t: float) -> tuple[int, int, int]:
    """Linear blend from colour ``a`` (t=0) to ``b`` (t=1)."""
    t = float(np.clip(t, 0.0, 1.0))
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _bezier(p0, p1, p2, n: int = 12) -> list[tuple[float, float]]:
    """Points on a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return [tuple(p) for p in pts]


def _dark(ident: Identity, amount: float = 0.65) -> tuple[int, int, int]:
    """Line colour: the skin darkened."""
    return _mix(ident.skin, (25, 15, 10), amount)


# ----------------------------------------------------------------------------
# Facial parts
# ----------------------------------------------------------------------------
def draw_body_and_hair_back(cv: _Canvas, ident: Identity, style: DomainStyle) -> None:
    """Neck, shoulders and the hair behind the head."""
    skin_shadow = _mix(ident.skin, (0, 0, 0), 0.15)
    cv.polygon([(-0.35, 0.8), (0.35, 0.8), (0.4, 1.75), (-0.4, 1.75)], fill=skin_shadow, depth=0.3)
    cv.ellipse(0.0, 2.3, 1.9, 0.85, fill=ident.shirt_color, depth=0.2)
    if style.hair and ident.hair_style == 1:  # long hair falls behind the head
        cv.ellipse(0.0, 0.05, ident.face_w * 1.22, ident.face_h * 1.08, fill=ident.hair_color, depth=0.3)


def draw_head(cv: _Canvas, ident: Identity, style: DomainStyle) -> None:
    """Head ellipse, ears and (short) hair on top."""
    fw, fh = ident.face_w, ident.face_h
    for side in (-1, 1):
        cv.ellipse(side * fw * 0.98, -0.05, 0.12, 0.22, fill=_mix(ident.skin, (0, 0, 0), 0.1), depth=0.2)
    cv.ellipse(0.0, 0.0, fw, fh, fill=ident.skin, outline=_dark(ident, 0.35), width=0.025, depth=0.3)


def draw_hair(cv: _Canvas, ident: Identity, style: DomainStyle) -> None:
    """Hair cap over the top of the head, kept above the raised brows."""
    if not (style.hair and ident.hair_style in (0, 1)):
        return
    fw, fh = ident.face_w, ident.face_h
    # A chord of a slightly larger ellipse; its lower edge is at about -0.66 fh.
    cx, cy = cv.p(0.0, 0.0, 0.3)
    box = (cx - fw * 1.06 * cv.unit, cy - fh * 1.1 * cv.unit, cx + fw * 1.06 * cv.unit, cy + fh * 0.95 * cv.unit)
    cv.draw.chord(box, start=213, end=327, fill=ident.hair_color)


def draw_brow(cv: _Canvas, ident: Identity, ex: Expression, side: int) -> None:
    """One eyebrow (side = -1 left, +1 right) as a thick Bezier stroke."""
    base_y = ident.eye_y - ident.brow_gap - ex.brow_raise
    inner_x = side * max(0.08, ident.eye_sep - ident.brow_len * 0.45 - ex.brow_pull)
    outer_x = side * (ident.eye_sep + ident.brow_len * 0.55)
    inner = (inner_x, base_y - ex.brow_inner_raise)
    outer = (outer_x, base_y + 0.03)
    mid_lift = 0.04 + ex.brow_arch
    ctrl = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2 - 2 * mid_lift)
    cv.line(_bezier(inner, ctrl, outer), fill=_mix(ident.hair_color, (0, 0, 0), 0.3), width=ident.brow_thick)


def _eye_boundaries(ident: Identity, ex: Expression, side: int, xs: np.ndarray):
    """Upper and lower boundaries of the visible eye (ellipse minus lids)."""
    rx = ident.eye_w
    ry = ident.eye_h * max(ex.eye_open, 0.2)
    u = np.clip(xs / rx, -1.0, 1.0)
    half = ry * np.sqrt(1.0 - u**2)
    top, bottom = ident.eye_y - half, ident.eye_y + half
    # Upper lid: straight line from inner to outer corner cover.
    t_outer = (side * u + 1.0) / 2.0  # 0 at the inner corner, 1 at the outer
    cover = ex.lid_inner + (ex.lid_outer - ex.lid_inner) * t_outer
    lid = ident.eye_y - ry + np.clip(cover, 0.0, 0.95) * 2 * ry
    lower = ident.eye_y + ry - np.clip(ex.lower_lid, 0.0, 0.9) * 2 * ry
    return np.maximum(top, lid), np.minimum(bottom, lower), ry


def _band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray, dx: float = 0.0) -> list[tuple[float, float]]:
    """Polygon of the region between two curves over ``xs`` (where top < bottom)."""
    ok = top < bottom
    if ok.sum() < 2:
        return []
    x = xs[ok] + dx
    return list(zip(x, top[ok])) + list(zip(x[::-1], bottom[ok][::-1]))


def _disc_in_eye(ident: Identity, ex: Expression, side: int, r: float) -> list[tuple[float, float]]:
    """Polygon of a disc of radius ``r`` at the eye centre, clipped by the lids."""
    xs = np.linspace(-r, r, 13)
    h = np.sqrt(np.maximum(r**2 - xs**2, 0.0))
    upper, lower, _ = _eye_boundaries(ident, ex, side, xs)
    top = np.maximum(ident.eye_y - h, upper)
    bottom = np.minimum(ident.eye_y + h, lower)
    return _band(xs, top, bottom, dx=side * ident.eye_sep)


def draw_eye(cv: _Canvas, ident: Identity, ex: Expression, side: int) -> None:
    """Eye white, iris and pupil clipped by the lids, and the lash lines.

    The iris has a fixed size, so wide-open eyes show white above it
    (surprise, fear) and narrowed or drooping lids cut it off.
    """
    cx = side * ident.eye_sep
    xs = np.linspace(-ident.eye_w, ident.eye_w, 17)
    upper, lower, _ = _eye_boundaries(ident, ex, side, xs)
    cv.polygon(_band(xs, upper, lower, dx=cx), fill=(245, 245, 240))
    cv.polygon(_disc_in_eye(ident, ex, side, ident.eye_h * 0.95), fill=ident.iris_color)
    cv.polygon(_disc_in_eye(ident, ex, side, ident.eye_h * 0.45), fill=(10, 10, 10))
    # Upper lash line (thick) along the visible upper boundary; thin lower line.
    cv.line([(cx + x, y) for x, y in zip(xs, np.minimum(upper, lower))], fill=_dark(ident, 0.8), width=0.035)
    vis = upper < lower
    if vis.sum() >= 2:
        cv.line([(cx + x, y) for x, y in zip(xs[vis], lower[vis])], fill=_dark(ident, 0.45), width=0.015)


def draw_cheeks(cv: _Canvas, ident: Identity, ex: Expression, style: DomainStyle) -> None:
    """Raised cheeks: bulge arcs under the eyes and nasolabial folds."""
    if ex.cheek_raise <= 0.02:
        return
    c = ex.cheek_raise
    fold = _mix(ident.skin, (40, 20, 10), 0.55 * min(c, 1.0))
    mw = ident.mouth_w * ex.mouth_width
    for side in (-1, 1):
        ex_x = side * ident.eye_sep
        y = ident.eye_y + ident.eye_h * 1.6
        cv.line(_bezier((ex_x - side * 0.14, y), (ex_x, y + 0.06), (ex_x + side * 0.16, y - 0.02), 8), fill=fold, width=0.018)
        if not style.grayscale:
            blush = _mix(ident.skin, (230, 90, 90), 0.25 * min(c, 1.0))
            cv.ellipse(side * (ident.eye_sep + 0.08), ident.eye_y + 0.3, 0.16, 0.1, fill=blush)
        top = (side * 0.22, ident.eye_y + ident.nose_len + 0.02)
        bottom = (side * (mw + 0.07), ident.mouth_y - 0.02)
        cv.line(_bezier(top, (side * (mw + 0.12), (top[1] + bottom[1]) / 2), bottom, 10), fill=fold, width=0.022)


def draw_nose(cv: _Canvas, ident: Identity, ex: Expression) -> None:
    """Nose hint (side line + nostrils) and disgust wrinkles on the bridge."""
    dark = _dark(ident, 0.5)
    top_y = ident.eye_y + 0.05
    tip_y = ident.eye_y + ident.nose_len
    cv.line([(0.03, top_y), (0.07, tip_y - 0.05), (0.02, tip_y)], fill=_dark(ident, 0.3), width=0.02, depth=1.6)
    for side in (-1, 1):
        cv.ellipse(side * 0.07, tip_y, 0.035, 0.02, fill=dark, depth=1.6)
    if ex.nose_wrinkle > 0.02:
        wr = _mix(ident.skin, (40, 20, 10), 0.7 * min(ex.nose_wrinkle, 1.0))
        for k in range(3):
            y = top_y + 0.02 + k * 0.05
            for side in (-1, 1):
                cv.line([(side * 0.02, y), (side * 0.13, y + 0.035)], fill=wr, width=0.016, depth=1.4)


def draw_wrinkles(cv: _Canvas, ident: Identity, ex: Expression) -> None:
    """Forehead (AU1/2) and glabella (AU4) lines."""
    if ex.forehead_lines > 0.02:
        col = _mix(ident.skin, (40, 20, 10), 0.45 * min(ex.forehead_lines, 1.0))
        top = ident.eye_y - ident.brow_gap - ex.brow_raise - 0.11
        for k in range(3):
            y = top - k * 0.07
            cv.line(_bezier((-0.35, y + 0.02), (0.0, y - 0.03), (0.35, y + 0.02), 8), fill=col, width=0.014)
    if ex.glabella_lines > 0.02:
        col = _mix(ident.skin, (40, 20, 10), 0.6 * min(ex.glabella_lines, 1.0))
        y = ident.eye_y - ident.brow_gap + 0.02
        for side in (-1, 1):
            cv.line([(side * 0.04, y - 0.08), (side * 0.05, y + 0.04)], fill=col, width=0.016)


def draw_mouth(cv: _Canvas, ident: Identity, ex: Expression, asym_sign: float, grayscale: bool) -> None:
    """Lips, opening, teeth and lip line.

    The opening is the region between an upper and a lower curve through the
    two corners; ``sqrt(1 - x^2)`` profiles make a wide opening an oval.
    """
    mw = ident.mouth_w * max(ex.mouth_width, 0.4)
    n = 21
    u = np.linspace(-1.0, 1.0, n)
    xs = u * mw
    bow = 1.0 - u**2  # parabolic bend for the smile/frown
    oval = np.sqrt(np.clip(1.0 - u**2, 0.0, 1.0))
    ym = ident.mouth_y
    curve = ex.mouth_curve
    # Corner heights (sneer: one corner up, the other down).
    corner = ym - curve * 0.5 * np.ones(n) - asym_sign * ex.mouth_asym * u
    line = corner + bow * curve * 0.5  # middle stays at ym, corners move
    up = line - oval * ex.mouth_open_upper
    lo = line + oval * ex.mouth_open_lower
    if ex.mouth_asym > 0:
        # Raised upper lip on the sneer side (AU10 is often unilateral).
        up = up - np.clip(asym_sign * u, 0.0, None) * ex.mouth_asym * 0.4 * oval
    lip_h = ident.lip_h * (1.0 - 0.85 * np.clip(ex.lip_press, 0.0, 1.0))
    lip_col = ident.lip_color if not grayscale else _mix(ident.skin, (60, 30, 30), 0.45)
    # Whole-lip region (colour), then the opening.
    outer_up = up - lip_h * oval * 0.9
    outer_lo = lo + lip_h * oval * 1.2
    cv.polygon(list(zip(xs, outer_up)) + list(zip(xs[::-1], outer_lo[::-1])), fill=lip_col)
    dark = (55, 18, 20)
    opening = lo - up
    if opening.max() > 0.015:
        cv.polygon(list(zip(xs, up)) + list(zip(xs[::-1], lo[::-1])), fill=dark)
        if ex.teeth > 0.05:
            teeth_lo = np.minimum(up + opening * 0.55 * min(ex.teeth, 1.0) + 0.01, lo)
            cv.polygon(list(zip(xs * 0.92, up)) + list(zip(xs[::-1] * 0.92, teeth_lo[::-1])), fill=(240, 238, 228))
        cv.line(list(zip(xs, up)), fill=_mix(lip_col, (0, 0, 0), 0.5), width=0.012)
    # The line between the lips: always drawn; thicker when the lips are pressed.
    lip_line = up if opening.max() > 0.015 else (up + lo) / 2
    cv.line(list(zip(xs, lip_line)), fill=_mix(lip_col, (20, 5, 5), 0.7), width=0.022 + 0.012 * np.clip(ex.lip_press, 0, 1))


def draw_occluder(cv: _Canvas, rng: np.random.Generator) -> None:
    """A random shape over part of the face (hand, glasses, object...)."""
    color = _random_color(rng)
    kind = rng.integers(3)
    x, y = rng.uniform(-0.7, 0.7), rng.uniform(-0.6, 0.9)
    if kind == 0:  # sunglasses bar
        cv.polygon([(-0.75, -0.32), (0.75, -0.32), (0.75, -0.05), (-0.75, -0.05)], fill=color)
    elif kind == 1:  # hand-like blob
        cv.ellipse(x, y, rng.uniform(0.25, 0.45), rng.uniform(0.3, 0.55), fill=color)
    else:  # rectangle (object in front of the face)
        w, h = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.6)
        cv.polygon([(x - w, y - h), (x + w, y - h), (x + w, y + h), (x - w, y + h)], fill=color)


# ----------------------------------------------------------------------------
# Backgrounds and post-processing
# ----------------------------------------------------------------------------
def draw_background(style: DomainStyle, rng: np.random.Generator, side: int) -> Image.Image:
    """Background at the supersampled resolution."""
    if style.background == "plain":
        level = rng.uniform(*style.background_level)
        yy, xx = np.mgrid[0:side, 0:side] / (side - 1) - 0.5
        vignette = 1.0 - 0.6 * (xx**2 + yy**2)
        arr = np.clip(level * vignette, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr[:, :, None], 3, axis=2), "RGB")
    img = Image.new("RGB", (side, side), _random_color(rng))
    draw = ImageDraw.Draw(img)
    lo, hi = style.n_background_shapes
    for _ in range(int(rng.integers(lo, hi + 1))):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * side
        w, h = rng.uniform(0.1, 0.7, 2) * side
        box = (x0, y0, x0 + w, y0 + h)
        color = _random_color(rng)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle(box, fill=color)
        elif kind == 1:
            draw.ellipse(box, fill=color)
        else:
            pts = [tuple(p) for p in rng.uniform(-0.1, 1.1, (3, 2)) * side]
            draw.polygon(pts, fill=color)
    return img


def _affine(img: Image.Image, scale: float, angle_deg: float, tx: float, ty: float) -> Image.Image:
    """Scale + rotate about the centre, then translate (pixels), RGBA-safe."""
    c = img.size[0] / 2.0
    th = math.radians(angle_deg)
    cos, sin = math.cos(th) / scale, math.sin(th) / scale
    # Inverse map: input = C + R(-theta)/s * (output - C - T)
    a, b, d, e = cos, sin, -sin, cos
    ox, oy = c + tx, c + ty
    coeffs = (a, b, c - a * ox - b * oy, d, e, c - d * ox - e * oy)
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def _postprocess(img: Image.Image, style: DomainStyle, rng: np.random.Generator, size: int) -> Image.Image:
    """Domain photometry: lighting, colour, resolution, contrast and noise."""
    arr = np.asarray(img, dtype=np.float32)
    # Directional light: multiplicative linear ramp in a random direction.
    g = rng.uniform(*style.light_gradient)
    if g > 0:
        phi = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        ramp = (np.cos(phi) * xx + np.sin(phi) * yy) * 2.0
        arr = arr * np.clip(1.0 + g * ramp, 0.05, None)[:, :, None]
    # Colour: desaturate, tint, per-channel jitter.
    grey = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if style.desaturate > 0:
        arr = arr + (grey[:, :, None] - arr) * style.desaturate
    arr = arr * np.asarray(style.tint, dtype=np.float32)
    if style.color_jitter > 0:
        arr = arr * (1.0 + rng.normal(0.0, style.color_jitter, 3)).astype(np.float32)
    # Contrast / brightness.
    mean = arr.mean()
    arr = (arr - mean) * rng.uniform(*style.contrast) + mean + rng.uniform(*style.brightness)
    # Noise (before down-sampling for low-res domains, so that it gets blurred).
    sigma = rng.uniform(*style.noise_std)
    if sigma > 0:
        shape = arr.shape[:2] + ((1,) if style.grayscale else (3,))
        arr = arr + rng.normal(0.0, sigma, shape).astype(np.float32)
    arr = np.clip(arr, 0, 255)
    if style.grayscale:
        arr = np.repeat((arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None], 3, axis=2)
    out = Image.fromarray(np.round(arr).astype(np.uint8), "RGB")
    if style.low_res is not None:
        lr = int(rng.integers(style.low_res[0], style.low_res[1] + 1))
        up = Image.Resampling.NEAREST if rng.random() < 0.25 else Image.Resampling.BILINEAR
        out = out.resize((lr, lr), Image.Resampling.BOX).resize((size, size), up)
    return out


# ----------------------------------------------------------------------------
# One face
# ----------------------------------------------------------------------------
def render_face(
    label: int,
    style: DomainStyle,
    rng: np.random.Generator,
    size: int = 64,
    intensity: float | None = None,
) -> Image.Image:
    """Render one face of class ``label`` in domain ``style``.

    Args:
        label: class index into :data:`CLASSNAMES`.
        style: the domain's :class:`DomainStyle`.
        rng: source of all randomness (identity, intensity, pose, noise).
        size: output side length in pixels.
        intensity: expression intensity in [0, 1]; drawn uniformly from
            [0.35, 1.0] when ``None``.

    Returns:
        An RGB ``PIL.Image`` of ``size`` x ``size`` pixels.

    The random numbers drawn do not depend on ``label``: the same generator
    state rendered with two labels gives the same person, pose, background
    and noise, with only the expression changed (used by the tests).
    """
    if not 0 <= label < len(CLASSNAMES):
        raise ValueError(f"label must be in [0, {len(CLASSNAMES)}), got {label}")
    if intensity is None:
        intensity = rng.uniform(0.35, 1.0)
    ident = random_identity(style, rng)
    ex = expression_for(label, float(intensity), rng)
    asym_sign = 1.0 if rng.random() < 0.5 else -1.0

    side = size * SUPERSAMPLE
    # Pose.
    scale = rng.uniform(*style.scale)
    angle = rng.uniform(-style.rotation_deg, style.rotation_deg)
    tx, ty = rng.uniform(-style.shift, style.shift, 2) * side
    yaw = rng.uniform(-style.yaw, style.yaw)
    face_w_scale = 1.0 - 0.12 * abs(yaw)  # turning narrows the visible face
    ident.face_w *= face_w_scale

    # Face layer (transparent), drawn upright and centred.
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    cv = _Canvas(ImageDraw.Draw(layer), unit=side * 0.27, cx=side / 2.0, cy=side * 0.47, yaw=0.12 * yaw)
    draw_body_and_hair_back(cv, ident, style)
    draw_head(cv, ident, style)
    draw_wrinkles(cv, ident, ex)
    draw_hair(cv, ident, style)
    draw_cheeks(cv, ident, ex, style)
    for s in (-1, 1):
        draw_eye(cv, ident, ex, s)
        draw_brow(cv, ident, ex, s)
    draw_nose(cv, ident, ex)
    draw_mouth(cv, ident, ex, asym_sign, style.grayscale)
    if style.occlusion_prob > 0 and rng.random() < style.occlusion_prob:
        draw_occluder(cv, rng)

    layer = _affine(layer, scale, angle, tx, ty)
    img = draw_background(style, rng, side).convert("RGBA")
    img.alpha_composite(layer)
    img = img.convert("RGB").resize((size, size), Image.Resampling.BOX)
    return _postprocess(img, style, rng, size)


# ----------------------------------------------------------------------------
# Writing domains to disk
# ----------------------------------------------------------------------------
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
        "classnames": list(CLASSNAMES),
    }


def _style(domain: str) -> DomainStyle:
    try:
        return DOMAIN_STYLES[domain]
    except KeyError:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose from {', '.join(DOMAINS)}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_tmp(root: Path, domain: str) -> None:
    """Delete our own temporary folders of ``domain`` left by dead processes."""
    for pattern in (f".{domain}.tmp-*", f".{domain}.old-*"):
        for p in root.glob(pattern):
            pid_s = p.name.rsplit("-", 1)[-1]
            if p.is_dir() and pid_s.isdigit() and (int(pid_s) == os.getpid() or not _pid_alive(int(pid_s))):
                shutil.rmtree(p, ignore_errors=True)


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
    jobs = [(split, label, i) for split in _SPLITS for label in range(len(CLASSNAMES)) for i in range(counts[split])]
    try:
        for split in _SPLITS:
            for name in CLASSNAMES:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
        it = jobs
        if progress:
            from tqdm import tqdm

            it = tqdm(jobs, desc=f"generating {domain}", unit="img", leave=False)
        for split, label, i in it:
            name = CLASSNAMES[label]
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


# ----------------------------------------------------------------------------
# Preview grid and CLI
# ----------------------------------------------------------------------------
def make_preview(
    out: str | Path,
    domains: Sequence[str] = DOMAINS,
    samples_per_class: int = 2,
    size: int = 64,
    cell: int = 96,
    seed: int = 0,
    intensity: float | None = 1.0,
) -> Path:
    """Write a grid (rows = domains, columns = classes x samples) to ``out``.

    With ``intensity=None`` intensities are random as in the data; otherwise
    the first sample of each class uses ``intensity`` and the others random.
    """
    font = ImageFont.load_default()
    label_w, header_h, pad = 90, 18, 4
    n_cols = len(CLASSNAMES) * samples_per_class
    width = label_w + n_cols * cell + (len(CLASSNAMES) - 1) * pad
    height = header_h + len(domains) * cell
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(CLASSNAMES):
        x0 = label_w + c * (samples_per_class * cell + pad)
        draw.text((x0 + 4, 3), name, fill=(0, 0, 0), font=font)
    for r, domain in enumerate(domains):
        style = _style(domain)
        y0 = header_h + r * cell
        draw.text((4, y0 + cell // 2 - 6), domain, fill=(0, 0, 0), font=font)
        for c in range(len(CLASSNAMES)):
            for k in range(samples_per_class):
                rng = np.random.default_rng([seed, _stable_hash(domain), c, k, 99])
                inten = intensity if (k == 0 and intensity is not None) else None
                img = render_face(c, style, rng, size=size, intensity=inten)
                x0 = label_w + c * (samples_per_class * cell + pad) + k * cell
                grid.paste(img.resize((cell, cell), Image.Resampling.NEAREST), (x0, y0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate synthetic facial-expression domains.")
    parser.add_argument("--root", required=True, help="output folder (domains go to ROOT/<domain>)")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--n-train", type=int, default=40, help="training images per class")
    parser.add_argument("--n-test", type=int, default=20, help="test images per class")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", default=None, help="also write a PNG preview grid to this path")
    parser.add_argument("--preview-samples", type=int, default=2, help="samples per class in the preview")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    ensure_domains(args.root, args.domains, args.n_train, args.n_test, args.size, args.seed, not args.no_progress)
    for d in args.domains:
        print(f"{Path(args.root) / d}: ready")
    if args.preview:
        path = make_preview(args.preview, args.domains, args.preview_samples, args.size, seed=args.seed)
        print(f"preview written to {path}")


if __name__ == "__main__":
    main()
