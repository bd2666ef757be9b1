"""Finding the watermark's tile again after resizing and cropping: period estimation, resampling, folding.

The pattern repeats every TILE pixels (times the embedding scale), so a marked image is periodic beneath its
content. That self-reference recovers the scale without knowing the original size (M. Kutter, "Watermarking
resisting to translation, rotation, and scaling", Proc. SPIE 3528, 1998, who reads it from the autocorrelation;
the periodic tiling of T. Kalker, G. Depovere, J. Haitsma, M. Maes, "A video watermarking system for broadcast
monitoring", Proc. SPIE 3657, 1999). We read it in the frequency domain instead, where a periodic pattern is a
lattice of spectral peaks (as the templates of S. Pereira, T. Pun, "Robust template matching for affine resistant
image watermarks", IEEE Trans. Image Process. 9(6), 2000): the power spectrum of the windowed, contrast-
normalised image, divided by its local mean, is about 1 for image content and much larger on the pattern's lines,
and the mean of that ratio over the lattice the pattern would have at a candidate period scores the candidate.
Cropping does not move the lattice; resizing scales it. A coarse search over one common period, then a fine one
over the horizontal and vertical periods apart (so a resize that rounds the aspect ratio is matched too), with
bilinear reads between frequency bins for sub-bin precision.

With the periods known, the image is resampled so that one period is TILE pixels again and folded: all tiles are
averaged into one TILE x TILE block, which adds the watermark coherently and the image incoherently (Kalker et
al.'s "folding"). Translation (cropping) only rotates that block cyclically; the detector finds it with an FFT
cross-correlation against the pilot.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .pattern import BAND, TILE

SMALLEST_SCALE = 0.3  # marked images shrunk further than this are not searched for
LARGEST_SCALE = 3.2


def normalise_contrast(luma: np.ndarray, sigma: float, floor: float) -> np.ndarray:
    """High-pass and local contrast normalisation: the image's structure flattened, any faint texture kept.

    Dividing by the local energy makes edges and strong texture count no more than flat areas, where the
    pattern stands out most; `floor` (grey levels) keeps noise in perfectly flat areas from being magnified.
    """
    detail = luma - cv2.GaussianBlur(luma, (0, 0), sigma)
    energy = cv2.GaussianBlur(detail * detail, (0, 0), sigma)
    return detail / (np.sqrt(energy) + floor)


def peak_ratio_spectrum(luma: np.ndarray) -> np.ndarray:
    """|DFT|^2 of the windowed, normalised image over its local mean: ~1 for the image, >> 1 on periodic lines."""
    flat = normalise_contrast(luma, 6.0, 2.0)
    height, width = flat.shape
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
    spectrum = np.fft.rfft2(flat * window)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    background = cv2.blur(power, (9, 9), borderType=cv2.BORDER_REFLECT)
    return power / (background + 1e-6 * float(background.mean()) + 1e-12)


def _lattice() -> np.ndarray:
    """(kx, ky) of the pattern's frequencies in cycles per tile, kx >= 0 (the half plane rfft2 keeps)."""
    k = np.fft.fftfreq(TILE, d=1.0 / TILE)
    kx, ky = np.meshgrid(k, k)
    keep = BAND & (kx >= 0)
    return np.stack([kx[keep], ky[keep]], axis=1)


LATTICE = _lattice()


def lattice_scores(ratio: np.ndarray, shape: tuple[int, int], periods_x: np.ndarray, periods_y: np.ndarray):
    """Mean peak ratio over the pattern's lattice of frequencies for each (period_x, period_y) pair.

    Bilinear between bins: the windowed peaks are a few bins wide, so their true position is found between bins.
    """
    height, width = shape
    x = LATTICE[None, :, 0] * (width / periods_x[:, None])
    y = LATTICE[None, :, 1] * (height / periods_y[:, None])
    inside = x < ratio.shape[1] - 1
    x = np.minimum(x, ratio.shape[1] - 1.001)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    top, bottom = y0 % height, (y0 + 1) % height
    values = (ratio[top, x0] * (1 - fx) + ratio[top, x0 + 1] * fx) * (1 - fy)
    values += (ratio[bottom, x0] * (1 - fx) + ratio[bottom, x0 + 1] * fx) * fy
    return (values * inside).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)


def _local_maxima(scores: np.ndarray, count: int) -> np.ndarray:
    interior = (scores[1:-1] > scores[:-2]) & (scores[1:-1] >= scores[2:])
    maxima = np.flatnonzero(interior) + 1
    return maxima[np.argsort(scores[maxima])[::-1][:count]]


def candidate_periods(luma: np.ndarray, count: int = 2) -> list[tuple[float, float]]:
    """Likely (horizontal, vertical) periods of the pattern in pixels of this image, best first.

    A coarse search over one common period (resizes keep the aspect ratio, nearly), then a finer one over both
    periods around each of the best few.
    """
    height, width = luma.shape
    longest = min(LARGEST_SCALE * TILE, min(height, width) / 1.5)
    if longest <= SMALLEST_SCALE * TILE:
        return []
    ratio = peak_ratio_spectrum(luma)
    periods = SMALLEST_SCALE * TILE * np.exp(np.arange(0, np.log(longest / (SMALLEST_SCALE * TILE)), 0.002))
    coarse = lattice_scores(ratio, (height, width), periods, periods)
    found = []
    steps = np.exp(np.arange(-6, 7) * 0.0005)
    for index in _local_maxima(coarse, count):
        px, py = np.meshgrid(periods[index] * steps, periods[index] * steps)
        fine = lattice_scores(ratio, (height, width), px.ravel(), py.ravel())
        best = int(np.argmax(fine))
        found.append((float(px.ravel()[best]), float(py.ravel()[best]), float(fine[best])))
    return [(px, py) for px, py, _ in sorted(found, key=lambda item: -item[2])]


def resample(luma: np.ndarray, period_x: float, period_y: float) -> np.ndarray:
    """The image scaled so that one pattern period is exactly TILE pixels on both axes."""
    fx, fy = TILE / period_x, TILE / period_y
    if min(fx, fy) < 1:  # shrinking: low-pass first so the band stays free of aliases
        luma = cv2.GaussianBlur(luma, (0, 0), 0.5 / min(fx, fy))
    size = (int(luma.shape[1] * fx), int(luma.shape[0] * fy))
    matrix = np.float32([[fx, 0, 0], [0, fy, 0]])
    return cv2.warpAffine(luma, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def fold(values: np.ndarray) -> np.ndarray:
    """Average of all TILE x TILE blocks (partial blocks at the edges count where they have pixels)."""
    height, width = values.shape
    rows, cols = -(-height // TILE), -(-width // TILE)
    padded = np.zeros((rows * TILE, cols * TILE), dtype=np.float64)
    counts = np.zeros_like(padded)
    padded[:height, :width] = values
    counts[:height, :width] = 1
    total = padded.reshape(rows, TILE, cols, TILE).sum(axis=(0, 2))
    count = counts.reshape(rows, TILE, cols, TILE).sum(axis=(0, 2))
    return total / np.maximum(count, 1)


@dataclass(frozen=True)
class Folded:
    block: np.ndarray  # TILE x TILE
    period_x: float
    period_y: float
    tiles: float  # how many tiles were averaged (image area / tile area at the embedding scale)


def folded(luma: np.ndarray, period_x: float, period_y: float) -> Folded:
    scaled = resample(luma, period_x, period_y)
    block = fold(normalise_contrast(scaled, 3.0, 1.0))
    return Folded(block, period_x, period_y, scaled.size / TILE**2)
