"""Provenance of every output: an invisible watermark, an XMP/IPTC label, and C2PA content credentials.

Output paths call one function: `write_output(path, rgb, record)` (or `encode_output` for bytes), which marks,
labels and, when a signer is configured, signs. `verify_file` reads all three back. C2PA needs the `sign` extra;
everything else is numpy, OpenCV and Pillow.
"""

from .label import DIGITAL_SOURCE_TYPE, DISCLOSURE, read_label, read_record
from .output import encode_output, save_png, watermark_image, write_output

__all__ = [
    "DIGITAL_SOURCE_TYPE",
    "DISCLOSURE",
    "encode_output",
    "read_label",
    "read_record",
    "save_png",
    "watermark_image",
    "write_output",
]
