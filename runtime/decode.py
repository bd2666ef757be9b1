"""Denoised latents -> RGB uint8 image through the fp32 VAE decoder graph."""

from __future__ import annotations

import numpy as np

from .errors import check_finite
from .package import ModelPackage


def decode(package: ModelPackage, latents: np.ndarray) -> np.ndarray:
    """latents [1, C, h, w] -> HxWx3 uint8 (the graph divides by the VAE scaling factor itself)."""
    image = package.session("vae_decoder").run({"latents": latents.astype(np.float32)})["image"]
    image = check_finite("vae_decoder", image)
    image = np.clip(image[0] / 2 + 0.5, 0, 1).transpose(1, 2, 0)
    return (image * 255).round().astype(np.uint8)
