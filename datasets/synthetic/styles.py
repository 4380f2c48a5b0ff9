"""The looks of the four synthetic domains: :class:`DomainStyle` and :data:`DOMAIN_STYLES`."""
from __future__ import annotations

from dataclasses import dataclass


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
