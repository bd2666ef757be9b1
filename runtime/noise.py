"""The seed -> initial noise rule shared by the PyTorch reference and the runtime.

Image i of a run with seed s starts from `numpy.random.default_rng(s + i).standard_normal(shape, float32)`,
shape (4, H/8, W/8): unit Gaussian noise, which each sampler then scales by its initial sigma (as diffusers
scales given latents by `init_noise_sigma`). numpy, not torch, makes the rule reproducible without torch.
"""

from __future__ import annotations

import numpy as np

LATENT_CHANNELS = 4
VAE_SCALE = 8


def initial_noise(seed: int, height: int, width: int, num_images: int = 1) -> np.ndarray:
    """Unit noise of shape (num_images, 4, height/8, width/8), float32."""
    shape = (LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE)
    return np.stack(
        [np.random.default_rng(seed + i).standard_normal(shape, dtype=np.float32) for i in range(num_images)]
    )
