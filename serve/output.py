"""The served image: the result's pixels through the provenance package's one output call, as bytes in memory
(never written to disk): watermarked with the generator id "server" (loading.py turns the pipeline's own marking
off, so pixels are marked once), labelled AI-generated in XMP/IPTC and the PNG record, and signed with C2PA when
a signer is configured."""

from __future__ import annotations

import numpy as np


def encode_result(rgb: np.ndarray, record: dict, watermarked: bool, signer=None) -> bytes:
    from instantid_edge.runtime.provenance import encode_output

    return encode_output(rgb, record, "PNG", watermarked=watermarked, signer=signer, title="portrait.png")
