"""Reading one image file, as every data path does (the PIL loaders and the decoded-image cache)."""
from __future__ import annotations

from PIL import Image, ImageOps

from engine.utils.errors import UserError


def read_image(path: str, crop: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Open an image file fully (so a truncated file fails here, with its name), turned upright as its EXIF
    orientation says (phone photos are stored sideways with a tag saying so; viewers turn them, and so does
    this), then optionally cropped: a crop box is in the upright image's pixels, as a viewer shows it."""
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)  # a copy, detached from the file
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    return upright.crop(crop) if crop is not None else upright
