"""The served image: the result's pixels encoded with their provenance, in memory (never written to disk).

Integration point for the provenance package (issue 14): when runtime/provenance/ lands, this becomes its one
output call for bytes (watermark + XMP label, signed if configured). Until then: the runtime's PNG labels (a
text disclosure, the JSON record and the XMP/IPTC digital source type).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_result(rgb: np.ndarray, record: dict) -> bytes:
    from instantid_edge.runtime.provenance import png_info

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", pnginfo=png_info(record))
    return buffer.getvalue()
