"""An invisible watermark that survives JPEG, resizing and cropping: numpy and OpenCV only, no learned weights.

Embedding adds a keyed periodic pattern (pattern.py) to luminance only (the same amount to R, G and B, so no
colour shifts and JPEG's full-resolution channel carries it), with a strength that follows local texture: the
noise visibility function of S. Voloshynovskiy, A. Herrigel, N. Baumgaertner, T. Pun, "A stochastic approach to
content adaptive digital image watermarking", Information Hiding 1999 (LNCS 1768), puts most of the energy where
the local variance masks it and little in flat regions. The overall strength is set from a PSNR budget.

Detection (sync.py) estimates the pattern's period from the image's autocorrelation, resamples and folds the image
to one tile, finds the offset by FFT cross-correlation with the keyed pilot, and decodes the message (payload.py)
from the aligned chips. The detection statistic is the pilot's correlation peak in units of the standard deviation
of the correlation over all offsets; without a watermark it is the maximum of TILE^2 nearly Gaussian values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .pattern import DEFAULT_KEY, TILE, layout, tile_to_chips, watermark_tile
from .payload import CODED_BITS, Payload, decode, encode
from .sync import Folded, candidate_periods, folded

TARGET_PSNR = 41.5  # dB against the unmarked image, rounding included
FLAT_STRENGTH = 0.25  # relative strength in perfectly flat regions (1 in strong texture)
MASKING_VARIANCE = 36.0  # local variance (grey levels^2) at which the texture mask is half way
REFERENCE_SIDE = 1024  # images with a short side above this get a proportionally larger pattern

# Detection threshold on the pilot's z-score, see false_positive_bound().
THRESHOLD_Z = 6.5
# Periods searched: the best few pairs from the autocorrelation, and the unresized embedding scale.
PERIOD_CANDIDATES = 3


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def embedding_scale(height: int, width: int) -> float:
    return max(1.0, min(height, width) / REFERENCE_SIDE)


def tiled_pattern(tile: np.ndarray, height: int, width: int, scale: float) -> np.ndarray:
    matrix = np.float32([[scale, 0, 0], [0, scale, 0]])
    return cv2.warpAffine(tile, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def texture_mask(y: np.ndarray) -> np.ndarray:
    """1 - NVF, floored at FLAT_STRENGTH: ~1 where local variance masks noise, FLAT_STRENGTH in flat areas."""
    mean = cv2.GaussianBlur(y, (0, 0), 2.0)
    variance = np.maximum(cv2.GaussianBlur(y * y, (0, 0), 2.0) - mean * mean, 0)
    nvf = 1.0 / (1.0 + variance / MASKING_VARIANCE)
    return 1.0 - (1.0 - FLAT_STRENGTH) * nvf


def embed(rgb: np.ndarray, payload: Payload, key: str = DEFAULT_KEY, psnr: float = TARGET_PSNR) -> np.ndarray:
    """The image with the watermark added: HxWx3 uint8 in and out."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"embed needs an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    tile = watermark_tile(key, encode(payload).tobytes())
    pattern = tiled_pattern(tile, height, width, embedding_scale(height, width))
    delta = texture_mask(luma(rgb)) * pattern
    # rounding to integers adds about 1/12 to the mean squared error
    budget = 255.0**2 / 10 ** (psnr / 10) - 1.0 / 12
    delta *= math.sqrt(budget / max(float(np.mean(delta * delta)), 1e-12))
    return np.clip(np.rint(rgb + delta[..., None]), 0, 255).astype(np.uint8)


def false_positive_bound(threshold: float = THRESHOLD_Z, tests: int | None = None) -> float:
    """Union bound on P(an unmarked image scores >= threshold): tests x Gaussian tail at the threshold."""
    tests = tests or TILE * TILE * (PERIOD_CANDIDATES + 1)
    return tests * 0.5 * math.erfc(threshold / math.sqrt(2))


@dataclass(frozen=True)
class Detection:
    detected: bool
    score: float  # pilot correlation peak in standard deviations
    threshold: float
    payload: Payload | None  # None when the message does not pass its CRC
    bit_errors: int | None  # of CODED_BITS coded bits, against the decoded payload re-encoded (None without one)
    scale: float | None  # pattern period / TILE: this image's size relative to the marked one (if <= 1024 px)

    def to_dict(self) -> dict:
        return {
            "detected": self.detected,
            "score": round(self.score, 2),
            "threshold": self.threshold,
            "payload": self.payload.to_dict() if self.payload else None,
            "bit_errors": self.bit_errors,
            "coded_bits": CODED_BITS,
            "scale": round(self.scale, 4) if self.scale else None,
        }


def _pilot_peak(block: np.ndarray, key: str) -> tuple[float, np.ndarray, tuple[float, float]]:
    """z-score of the best cyclic offset, the band-limited block, and the offset (sub-pixel, y then x)."""
    pilot = layout(key).pilot_tile
    spectrum = np.fft.fft2(block)
    correlation = np.fft.ifft2(spectrum * np.conj(np.fft.fft2(pilot))).real
    peak = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    z = float((correlation[peak] - correlation.mean()) / (correlation.std() + 1e-12))
    offset = []
    for axis, position in enumerate(peak):
        before = correlation[tuple((p - 1) % TILE if a == axis else p for a, p in enumerate(peak))]
        after = correlation[tuple((p + 1) % TILE if a == axis else p for a, p in enumerate(peak))]
        curvature = before - 2 * correlation[peak] + after
        offset.append(position + (0.5 * (before - after) / curvature if curvature < 0 else 0.0))
    return z, spectrum, (offset[0], offset[1])


def _soft_bits(spectrum: np.ndarray, offset: tuple[float, float], key: str) -> np.ndarray:
    """Correlation of each coded bit's chips with their keyed signs, after undoing the (sub-pixel) offset."""
    keyed = layout(key)
    k = np.fft.fftfreq(TILE)
    ramp = np.exp(2j * np.pi * (k[:, None] * offset[0] + k[None, :] * offset[1]))
    aligned = np.fft.ifft2(spectrum * ramp).real
    chips = tile_to_chips(aligned).ravel()
    return np.bincount(keyed.message_bit, weights=chips[keyed.message_chips] * keyed.message_signs,
                       minlength=CODED_BITS)  # fmt: skip


def _working_copy(y: np.ndarray) -> np.ndarray:
    """Large images are searched at about REFERENCE_SIDE: a large pattern shrinks back to TILE, and it is faster."""
    factor = min(y.shape) / REFERENCE_SIDE
    if factor <= 2:
        return y
    size = (round(y.shape[1] / factor), round(y.shape[0] / factor))
    return cv2.resize(y, size, interpolation=cv2.INTER_AREA)


def _candidates(y: np.ndarray, own: float):
    yield own, own
    yield from candidate_periods(y, PERIOD_CANDIDATES)  # only computed when the unresized scale fails


def detect(rgb: np.ndarray, key: str = DEFAULT_KEY, threshold: float = THRESHOLD_Z) -> Detection:
    """Look for the watermark at every likely scale; HxWx3 uint8 (or HxW luminance) in.

    Tries the unresized embedding scale first, then the periods the spectrum suggests, and stops at the first
    that passes the threshold (the false-positive bound counts every candidate all the same).
    """
    y = _working_copy(luma(rgb) if rgb.ndim == 3 else rgb.astype(np.float32))
    height, width = y.shape
    own = TILE * embedding_scale(height, width)
    best: tuple[float, Folded, np.ndarray, tuple[float, float]] | None = None
    tried: list[tuple[float, float]] = []
    for period_x, period_y in _candidates(y, own):
        if min(height / period_y, width / period_x) < 1:
            continue
        if any(abs(period_x / x - 1) < 1e-3 and abs(period_y / y_ - 1) < 1e-3 for x, y_ in tried):
            continue
        tried.append((period_x, period_y))
        block = folded(y, period_x, period_y)
        z, spectrum, offset = _pilot_peak(block.block, key)
        if best is None or z > best[0]:
            best = (z, block, spectrum, offset)
        if z >= threshold:
            break
    if best is None:
        return Detection(False, 0.0, threshold, None, None, None)
    z, block, spectrum, offset = best
    decoded = decode(_soft_bits(spectrum, offset, key))
    # relative to a marked image of at most REFERENCE_SIDE (larger ones carry a proportionally larger pattern)
    period = 0.5 * (block.period_x + block.period_y) * rgb.shape[0] / y.shape[0]
    errors = decoded.bit_errors if decoded.payload else None
    return Detection(z >= threshold, z, threshold, decoded.payload, errors, period / TILE)
