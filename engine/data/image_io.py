"""Reading one image file, as every data path does (the PIL loaders and the decoded-image cache)."""
from __future__ import annotations

from PIL import Image

from engine.utils.errors import UserError


def read_image(path: str, crop: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Open an image file fully (so a truncated file fails here, with its name), optionally cropped."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.crop(crop) if crop is not None else img.copy()
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e}") from None
