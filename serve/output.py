"""The served image: the result's pixels through the provenance package's one output call, as bytes in memory
(never written to disk): watermarked (the pipeline marks its images itself), labelled AI-generated in XMP/IPTC
and the PNG record, and signed with C2PA when a signer is configured."""

from __future__ import annotations

import numpy as np


def encode_result(rgb: np.ndarray, record: dict, watermarked: bool, signer=None) -> bytes:
    from instantid_edge.runtime.provenance import encode_output

    return encode_output(rgb, record, "PNG", watermarked=watermarked, signer=signer, title="portrait.png")
