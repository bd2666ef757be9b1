"""The keyed, periodic, band-limited pattern the watermark adds to luminance.

One tile of TILE x TILE pixels holds GRID x GRID "chips" (values +1/-1), interpolated to pixels with the
periodic sinc kernel (zero-padding of the chips' 2-D DFT), so that the tile repeats seamlessly over the image and
all of its energy lies in a known band of spatial frequencies: none above the chips' Nyquist rate (1/8 cycle per
pixel, low enough to survive a 0.5x resize and JPEG) and none in the lowest ring (large blotches would be the
most visible part and collide with the image's own strongest frequencies).

A keyed permutation splits the chips between a pilot (known signs: the detector finds the pattern's offset with
it) and the message (each of the 162 coded bits spread over its own chips with keyed signs, as in direct-sequence
spread spectrum: I. J. Cox, J. Kilian, F. T. Leighton, T. Shamoon, "Secure spread spectrum watermarking for
multimedia", IEEE Trans. Image Process. 6(12), 1997). Pilot and message use disjoint chips, so they do not
interfere once the offset is found.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from .payload import CODED_BITS

TILE = 128  # pixels per tile side at the embedding scale
GRID = 32  # chips per tile side: a chip is 4 x 4 pixels
LOW_CUT = 3  # chip-grid frequencies with kx^2 + ky^2 <= LOW_CUT^2 are left out (wavelengths >= ~43 px)
PILOT_FRACTION = 0.4
DEFAULT_KEY = "instantid-edge public watermark v1"


def band_mask() -> np.ndarray:
    """Which bins of a TILE x TILE DFT (numpy's fft2 layout) the pattern may use."""
    k = np.fft.fftfreq(TILE, d=1.0 / TILE)  # integer frequencies -TILE/2 .. TILE/2-1
    kx, ky = np.meshgrid(k, k)
    half = GRID // 2
    inside = (np.abs(kx) < half) & (np.abs(ky) < half)  # the chips' Nyquist bins are dropped (no sign ambiguity)
    return inside & (kx**2 + ky**2 > LOW_CUT**2)


BAND = band_mask()


def chips_to_tile(chips: np.ndarray) -> np.ndarray:
    """GRID x GRID chip values -> the TILE x TILE periodic band-limited pixel pattern."""
    spectrum = np.zeros((TILE, TILE), dtype=np.complex128)
    small = np.fft.fft2(chips)
    k = np.fft.fftfreq(GRID, d=1.0 / GRID).astype(int)
    spectrum[np.ix_(k % TILE, k % TILE)] = small
    spectrum[~BAND] = 0
    return np.fft.ifft2(spectrum).real * (TILE / GRID) ** 2


def tile_to_chips(tile: np.ndarray) -> np.ndarray:
    """The adjoint of chips_to_tile up to scale: the band of a TILE x TILE array, sampled back on the chip grid."""
    spectrum = np.fft.fft2(tile)
    spectrum[~BAND] = 0
    k = np.fft.fftfreq(GRID, d=1.0 / GRID).astype(int)
    return np.fft.ifft2(spectrum[np.ix_(k % TILE, k % TILE)]).real


@dataclass(frozen=True)
class KeyedLayout:
    """Everything the key decides: which chips are pilot, their signs, and each coded bit's chips and signs."""

    pilot_chips: np.ndarray  # flat chip indices
    pilot_signs: np.ndarray  # +1/-1
    message_chips: np.ndarray  # flat chip indices, message_chips[i] carries coded bit message_bit[i]
    message_bit: np.ndarray
    message_signs: np.ndarray  # +1/-1
    pilot_tile: np.ndarray  # TILE x TILE pixels of the pilot alone, unit RMS over the tile


def _rng(key: str) -> np.random.Generator:
    digest = hashlib.sha256(b"instantid-edge watermark layout\0" + key.encode("utf-8")).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint64))


@functools.lru_cache(maxsize=8)
def layout(key: str = DEFAULT_KEY) -> KeyedLayout:
    rng = _rng(key)
    order = rng.permutation(GRID * GRID)
    pilots = int(round(PILOT_FRACTION * GRID * GRID))
    pilot_chips, message_chips = np.sort(order[:pilots]), order[pilots:]
    pilot_signs = rng.choice(np.array([-1.0, 1.0]), size=pilots)
    message_bit = np.arange(len(message_chips)) % CODED_BITS
    message_signs = rng.choice(np.array([-1.0, 1.0]), size=len(message_chips))
    chips = np.zeros(GRID * GRID)
    chips[pilot_chips] = pilot_signs
    pilot_tile = chips_to_tile(chips.reshape(GRID, GRID))
    pilot_tile /= np.sqrt(np.mean(pilot_tile**2))
    return KeyedLayout(pilot_chips, pilot_signs, message_chips, message_bit, message_signs, pilot_tile)


@functools.lru_cache(maxsize=16)
def watermark_tile(key: str, coded: bytes) -> np.ndarray:
    """The full TILE x TILE pattern (pilot + message) for coded bits (as bytes of 0/1), unit RMS, float32."""
    keyed = layout(key)
    bits = np.frombuffer(coded, dtype=np.uint8).astype(np.float64) * 2 - 1
    chips = np.zeros(GRID * GRID)
    chips[keyed.pilot_chips] = keyed.pilot_signs
    chips[keyed.message_chips] = keyed.message_signs * bits[keyed.message_bit]
    tile = chips_to_tile(chips.reshape(GRID, GRID))
    return (tile / np.sqrt(np.mean(tile**2))).astype(np.float32)
