"""The one call every output path makes: pixels in, a marked, labelled and (if configured) signed file out.

    write_output("out.png", rgb, {"generator": "server", ...})      # atomically, to a file
    data = encode_output(rgb, record, "JPEG")                        # bytes, for an HTTP response

Order: watermark (pixels), then the XMP/IPTC label (metadata), then the C2PA manifest, which signs the bytes that
carry the other two. `watermarked=True` skips the first step for pixels that already carry the watermark (the
pipeline marks its images itself); marking twice would double the pattern's strength.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..files import atomic_path
from .credentials import SigningIdentity, configured_signer
from .label import MIME_TYPES, encode_labelled, image_format
from .pattern import DEFAULT_KEY
from .payload import Payload
from .watermark import embed

KEY_ENV = "INSTANTID_EDGE_WATERMARK_KEY"  # an operator's own key; verifiers then need it too
FROM_ENVIRONMENT = "environment"


def watermark_key(key: str | None = None) -> str:
    return key or os.environ.get(KEY_ENV) or DEFAULT_KEY


def watermark_image(rgb: np.ndarray, generator: str, key: str | None = None) -> np.ndarray:
    """The watermark alone, for APIs that hand out arrays: HxWx3 uint8 in and out."""
    return embed(rgb, Payload.for_generator(generator), watermark_key(key))


def encode_output(
    rgb: np.ndarray,
    record: dict,
    fmt: str = "PNG",
    *,
    watermarked: bool = False,
    signer: SigningIdentity | None | str = FROM_ENVIRONMENT,
    key: str | None = None,
    title: str = "image",
) -> bytes:
    """The encoded file: `fmt` PNG, JPEG or WEBP; `signer` defaults to $INSTANTID_EDGE_SIGNER (None: unsigned)."""
    if signer == FROM_ENVIRONMENT:
        signer = configured_signer()
    pixels = rgb if watermarked else watermark_image(rgb, record.get("generator", ""), key)
    data = encode_labelled(pixels, record, fmt)
    if signer is not None:
        data = signer.sign(data, MIME_TYPES[fmt], record, title)
    return data


def write_output(
    path: str | Path,
    rgb: np.ndarray,
    record: dict,
    *,
    watermarked: bool = False,
    signer: SigningIdentity | None | str = FROM_ENVIRONMENT,
    key: str | None = None,
) -> None:
    """encode_output to `path` (its suffix picks the format), written atomically."""
    path = Path(path)
    data = encode_output(rgb, record, image_format(path), watermarked=watermarked, signer=signer, key=key,
                         title=path.name)  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_png(path: str | Path, rgb: np.ndarray, record: dict, watermarked: bool = False) -> None:
    """Kept for existing callers: write_output to a PNG."""
    write_output(path, rgb, record, watermarked=watermarked)
