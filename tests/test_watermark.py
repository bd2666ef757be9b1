"""The invisible watermark on real photos: round trip, each attack of the issue, no false alarms, exact payload.

Robustness and false-positive rates over many images are measured by bench/watermark.py; these tests check a few
real photos so that a change that breaks embedding, resynchronisation or decoding fails here first.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from instantid_edge.runtime.provenance import payload as coding
from instantid_edge.runtime.provenance.payload import Payload
from instantid_edge.runtime.provenance.watermark import THRESHOLD_Z, detect, embed, false_positive_bound

PAYLOAD = Payload(generator=1, tag=0x5A5A)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((round(width * factor), round(height * factor)), Image.BICUBIC))


def _crop(rgb: np.ndarray, side: str, fraction: float = 0.1) -> np.ndarray:
    height, width = rgb.shape[:2]
    dy, dx = int(height * fraction), int(width * fraction)
    return {"left": rgb[:, dx:], "right": rgb[:, : width - dx], "top": rgb[dy:], "bottom": rgb[: height - dy]}[side]


ATTACKS = {
    "none": lambda rgb: rgb,
    "jpeg q75": lambda rgb: _jpeg(rgb, 75),
    "0.5x resize": lambda rgb: _resize(rgb, 0.5),
    "10% crop left": lambda rgb: _crop(rgb, "left"),
    "10% crop bottom": lambda rgb: _crop(rgb, "bottom"),
    "crop + 0.5x + jpeg q75": lambda rgb: _jpeg(_resize(_crop(rgb, "top"), 0.5), 75),
    "0.75x + jpeg q90": lambda rgb: _jpeg(_resize(rgb, 0.75), 90),
}


def _square(rgb: np.ndarray, side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    short = min(height, width)
    top, left = (height - short) // 2, (width - short) // 2
    return np.asarray(Image.fromarray(rgb[top : top + short, left : left + short]).resize((side, side), Image.LANCZOS))


@pytest.fixture(scope="module")
def photos(assets) -> dict[str, np.ndarray]:
    """Three real photos at output-like sizes: a portrait, a painting, and a crop of a large group photo."""
    load = lambda name: np.asarray(Image.open(assets / "faces" / name).convert("RGB"))  # noqa: E731
    solvay = load("solvay_conference_1927.jpg")
    return {
        "grace_hopper 768": _square(load("grace_hopper.jpg"), 768),
        "newton 1024": _square(load("newton.png"), 1024),
        "solvay crop 1024": np.ascontiguousarray(solvay[400:1424, 1000:2024]),
    }


@pytest.fixture(scope="module")
def marked(photos) -> dict[str, np.ndarray]:
    return {name: embed(rgb, PAYLOAD) for name, rgb in photos.items()}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2))


def test_marking_is_invisible_by_psnr_and_changes_only_luminance(photos, marked):
    for name, rgb in photos.items():
        assert _psnr(rgb, marked[name]) >= 40.0, name
        delta = marked[name].astype(int) - rgb
        unclipped = (rgb > 8).all(axis=2) & (rgb < 247).all(axis=2)
        assert (delta[unclipped, 0] == delta[unclipped, 1]).mean() > 0.95  # the same change on R, G and B


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_watermark_survives(marked, attack):
    for name, rgb in marked.items():
        found = detect(ATTACKS[attack](rgb))
        assert found.detected and found.score >= THRESHOLD_Z, (name, attack, found)
        assert found.payload == PAYLOAD, (name, attack, found)


def test_resize_is_estimated_without_knowing_the_original_size(marked):
    found = detect(_resize(marked["newton 1024"], 0.5))
    assert found.scale == pytest.approx(0.5, rel=0.01)


def test_unmarked_photos_are_never_reported_marked(photos):
    for name, rgb in photos.items():
        for attack in ("none", "jpeg q75", "0.5x resize", "crop + 0.5x + jpeg q75"):
            found = detect(ATTACKS[attack](rgb))
            assert not found.detected and found.score < THRESHOLD_Z - 1, (name, attack, found)
            assert found.payload is None


def test_noise_and_flat_images_are_not_reported_marked():
    rng = np.random.default_rng(3)
    for rgb in (
        rng.integers(0, 256, (768, 768, 3), dtype=np.uint8),
        np.full((512, 640, 3), 128, np.uint8),
        np.repeat(np.linspace(0, 255, 1024, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(700, axis=0),
    ):
        assert not detect(rgb).detected


def test_a_different_key_does_not_detect(marked):
    rgb = marked["grace_hopper 768"]
    assert detect(rgb).detected
    other = detect(rgb, key="another operator's key")
    assert not other.detected and other.payload is None


def test_payload_decodes_exactly_for_every_generator_and_tag(photos):
    rgb = photos["grace_hopper 768"]
    for payload in (Payload(generator=2, tag=0), Payload(generator=4095, tag=65535), Payload(generator=5, tag=1234)):
        assert detect(_jpeg(embed(rgb, payload), 75)).payload == payload


def test_small_and_large_outputs_are_marked_and_found(photos):
    small = np.ascontiguousarray(photos["newton 1024"][200:712, 300:812])  # SDXL's smallest usual size, 512
    assert detect(_jpeg(embed(small, PAYLOAD), 75)).payload == PAYLOAD
    large = _resize(photos["solvay crop 1024"], 2.5)  # 2560 px: the pattern grows with the image
    found = detect(_resize(embed(large, PAYLOAD), 0.4))
    assert found.detected and found.payload == PAYLOAD


def test_viterbi_corrects_errors_and_the_crc_rejects_noise():
    rng = np.random.default_rng(0)
    coded = coding.encode(PAYLOAD).astype(np.float64) * 2 - 1
    assert len(coded) == coding.CODED_BITS
    flipped = coded.copy()
    flipped[rng.choice(len(coded), 12, replace=False)] *= -1  # 12 hard errors, well spread
    result = coding.decode(flipped)
    assert result.payload == PAYLOAD and result.bit_errors == 12
    noisy = coding.decode(coded + rng.normal(0, 0.7, len(coded)))
    assert noisy.payload == PAYLOAD
    accepted = sum(coding.decode(rng.normal(0, 1, len(coded))).payload is not None for _ in range(300))
    assert accepted == 0  # a random message passes the CRC-16 with p = 2^-16


def test_payload_fields_are_range_checked_and_named():
    with pytest.raises(ValueError, match="12 bits"):
        Payload(generator=4096)
    assert Payload.for_generator("runtime (openvino)").generator_name == "runtime"
    assert Payload.for_generator("something else").generator == 0


def test_false_positive_bound_is_small_at_the_threshold():
    assert false_positive_bound() < 1e-5
    assert false_positive_bound(THRESHOLD_Z + 1) < false_positive_bound() / 100
