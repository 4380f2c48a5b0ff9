"""Drawing one face: :func:`render_face` renders an expression of a random identity in a domain's style,
supersampled for anti-aliasing, then posed, lit and degraded as the style says."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from datasets.classes import CANONICAL_CLASSES
from datasets.synthetic.faces import Expression, Identity, expression_for, random_color, random_identity
from datasets.synthetic.styles import DomainStyle

#: Supersampling factor used for anti-aliasing.
SUPERSAMPLE = 4


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
    color = random_color(rng)
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
    img = Image.new("RGB", (side, side), random_color(rng))
    draw = ImageDraw.Draw(img)
    lo, hi = style.n_background_shapes
    for _ in range(int(rng.integers(lo, hi + 1))):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * side
        w, h = rng.uniform(0.1, 0.7, 2) * side
        box = (x0, y0, x0 + w, y0 + h)
        color = random_color(rng)
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
        label: class index into :data:`CANONICAL_CLASSES`.
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
    if not 0 <= label < len(CANONICAL_CLASSES):
        raise ValueError(f"label must be in [0, {len(CANONICAL_CLASSES)}), got {label}")
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
