"""Reading user photos into RGB uint8 arrays, and the official InstantID resize rule.

Every odd input is handled here once, for the reference, the runtime and the server's uploads alike: EXIF
rotation, greyscale, palette, alpha (composited on white), CMYK, 16-bit and float images, truncated or corrupt
files, and images above MAX_INPUT_PIXELS.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputImageError

# 50 megapixels: far above any camera photo a face needs, and small enough that decoding (150 MB of RGB)
# cannot exhaust a kiosk's memory. Larger inputs are refused before their pixels are decoded.
MAX_INPUT_PIXELS = 50_000_000


def open_image(path: str | Path) -> Image.Image:
    """Open, fully decode and orient a photo; refuse missing, corrupt, truncated and oversized files."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"photo not found: {path}")
    return _decode(path, str(path))


def decode_image(data: bytes, source: str = "the uploaded photo") -> Image.Image:
    """open_image for a photo held in memory (an upload): the same checks, nothing written anywhere."""
    return _decode(io.BytesIO(data), source)


def _decode(file: Path | BinaryIO, source: str) -> Image.Image:
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as exc:
        raise InputImageError(
            f"{source} is larger than the {MAX_INPUT_PIXELS / 1e6:.0f}-megapixel limit ({exc}); downscale it first"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputImageError(
            f"cannot read {source} as an image (not a format Pillow recognises); use a JPEG, PNG or WebP photo"
        ) from exc
    except (OSError, ValueError) as exc:
        raise InputImageError(f"cannot read {source} as an image ({exc}); use a JPEG, PNG or WebP photo") from exc
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise InputImageError(
            f"{source} is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{MAX_INPUT_PIXELS / 1e6:.0f}; downscale it first (a face needs far fewer pixels)"
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputImageError(f"{source} is truncated or corrupt ({exc}); re-export or re-download it") from exc
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        return image  # a broken EXIF block should not lose an otherwise readable photo


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB. Alpha is composited onto white; high bit depths are rescaled."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_rgb(path: str | Path) -> np.ndarray:
    return to_rgb(open_image(path))


def load_rgb_bytes(data: bytes, source: str = "the uploaded photo") -> np.ndarray:
    return to_rgb(decode_image(data, source))


def official_size(width: int, height: int, max_side: int = 1280, min_side: int = 1024, base: int = 64):
    """The size InstantID's `resize_img` gives a photo: long side `max_side`, both sides multiples of 64.

    Returns (intermediate_size, final_size), each (width, height): upstream resizes twice, first to the
    unrounded size, then to the size floored to multiples of `base`.
    """
    ratio = min_side / min(height, width)
    width, height = round(ratio * width), round(ratio * height)
    ratio = max_side / max(height, width)
    intermediate = (round(ratio * width), round(ratio * height))
    final = ((intermediate[0] // base) * base, (intermediate[1] // base) * base)
    if final[0] < base or final[1] < base:
        raise InputImageError(
            f"a {width}x{height} photo is too elongated for the {max_side}-pixel resize rule; crop it "
            "closer to the face"
        )
    return intermediate, final


def resize_like_instantid(rgb: np.ndarray, max_side: int = 1280) -> np.ndarray:
    """Upstream `resize_img(image)` (two bilinear PIL resizes), on an RGB array."""
    image = Image.fromarray(rgb)
    intermediate, final = official_size(image.width, image.height, max_side=max_side)
    image = image.resize(list(intermediate), Image.BILINEAR)
    image = image.resize(list(final), Image.BILINEAR)
    return np.asarray(image)


def resize_control_image(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """What diffusers' control-image processor does to a control image of another size (Lanczos)."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.LANCZOS))
