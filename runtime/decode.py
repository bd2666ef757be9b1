"""Denoised latents -> RGB uint8 image through a decoder graph: the fp32 VAE decoder (whole, or in overlapping
tiles), or TAESD-XL's.

The tiled decode bounds the full VAE's activations, which grow with the image (bench/RESULTS.md, "Where the
memory goes"), by decoding equal tiles of at most `tile` latents a side, neighbours sharing at least OVERLAP
latents, and blending each shared region with linear ramps (weights normalised to sum to one at every pixel),
so that no seam shows. Each tile's group norms see only the tile, and its border pixels see zero padding, so the
image differs slightly from the whole decode: tests/test_decode.py bounds the difference (PSNR against the
untiled decode) and the step across tile borders. All tiles have one shape, so OpenVINO compiles once. Only the
full VAE is tiled: TAESD-XL's activations are small.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import check_finite
from .manifest import Manifest
from .package import ModelPackage

OVERLAP = 16  # latents shared by neighbouring tiles (128 pixels with SDXL's VAE)
TILED_GRAPH = "vae_decoder"


def tile_starts(length: int, tile: int, overlap: int = OVERLAP) -> tuple[list[int], int]:
    """(starts, size): the fewest equal tiles of at most `tile` covering `length`, overlapping >= `overlap`."""
    if length <= tile:
        return [0], length
    if tile <= overlap:
        raise ValueError(f"a tile ({tile}) must be larger than the overlap ({overlap})")
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    return [(i * (length - size)) // (count - 1) for i in range(count)], size


def _ramps(starts: list[int], size: int, scale: int) -> list[np.ndarray]:
    """Per tile, its blending weight along one axis (pixels): 1 inside, rising/falling linearly across the
    regions it shares with its neighbours, never quite 0 (the normalisation divides by the sum)."""
    weights = []
    for i, start in enumerate(starts):
        weight = np.ones(size * scale, np.float32)
        if i > 0:
            shared = (starts[i - 1] + size - start) * scale
            weight[:shared] = np.minimum(weight[:shared], (np.arange(shared, dtype=np.float32) + 0.5) / shared)
        if i < len(starts) - 1:
            shared = (start + size - starts[i + 1]) * scale
            falling = (shared - 0.5 - np.arange(shared, dtype=np.float32)) / shared
            weight[size * scale - shared :] = np.minimum(weight[size * scale - shared :], falling)
        weights.append(weight)
    return weights


def tileable(manifest: Manifest, graph: str = TILED_GRAPH) -> bool:
    """Only the full VAE is tiled, and not when exported for one size (static shapes take only whole images)."""
    return graph == TILED_GRAPH and all(isinstance(d, str) for d in manifest.graph(graph).inputs[0].shape[2:])


def _decode_whole(package: ModelPackage, latents: np.ndarray, graph: str) -> np.ndarray:
    image = package.session(graph).run({"latents": np.ascontiguousarray(latents, np.float32)})["image"]
    return check_finite(graph, image)


def decode_float(
    package: ModelPackage, latents: np.ndarray, graph: str = TILED_GRAPH, tile: int | None = None
) -> np.ndarray:
    """latents [1, C, h, w] -> the decoder's image [1, 3, H, W] in [-1, 1]; the full VAE in tiles of at most
    `tile` latents a side when given (other decoders, and static-shape packages, decode whole)."""
    _, _, height, width = latents.shape
    if tile is None or (height <= tile and width <= tile) or not tileable(package.manifest, graph):
        return _decode_whole(package, latents, graph)
    rows, tile_h = tile_starts(height, tile)
    cols, tile_w = tile_starts(width, tile)
    scale = package.manifest.architecture.vae_scale_factor
    weight_rows, weight_cols = _ramps(rows, tile_h, scale), _ramps(cols, tile_w, scale)
    total = np.zeros((3, height * scale, width * scale), np.float32)
    weights = np.zeros((height * scale, width * scale), np.float32)
    for top, weight_row in zip(rows, weight_rows, strict=True):
        for left, weight_col in zip(cols, weight_cols, strict=True):
            piece = _decode_whole(package, latents[:, :, top : top + tile_h, left : left + tile_w], graph)[0]
            where = (slice(top * scale, (top + tile_h) * scale), slice(left * scale, (left + tile_w) * scale))
            weight = weight_row[:, None] * weight_col[None, :]
            total[(slice(None), *where)] += piece * weight
            weights[where] += weight
    return (total / weights)[None]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The decoder's [1, 3, H, W] in [-1, 1] -> HxWx3 uint8."""
    image = np.clip(image[0] / 2 + 0.5, 0, 1).transpose(1, 2, 0)
    return (image * 255).round().astype(np.uint8)


def decode(package: ModelPackage, latents: np.ndarray, graph: str = TILED_GRAPH, tile: int | None = None) -> np.ndarray:
    """latents [1, C, h, w] -> HxWx3 uint8; both decoder graphs (manifest.DECODER_GRAPHS) take the denoised
    latents as they are (the graph divides by the VAE scaling factor itself)."""
    return to_uint8(decode_float(package, latents, graph, tile))
