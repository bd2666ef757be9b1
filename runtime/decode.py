"""Denoised latents -> RGB uint8 image through a decoder graph: the fp32 VAE decoder, or TAESD-XL's."""

from __future__ import annotations

import numpy as np

from .errors import check_finite
from .package import ModelPackage


def decode(package: ModelPackage, latents: np.ndarray, graph: str = "vae_decoder") -> np.ndarray:
    """latents [1, C, h, w] -> HxWx3 uint8; both decoder graphs (manifest.DECODER_GRAPHS) take the denoised
    latents as they are (the graph divides by the VAE scaling factor itself)."""
    image = package.session(graph).run({"latents": latents.astype(np.float32)})["image"]
    image = check_finite(graph, image)
    image = np.clip(image[0] / 2 + 0.5, 0, 1).transpose(1, 2, 0)
    return (image * 255).round().astype(np.uint8)
