"""The seed -> noise rule shared by the PyTorch reference and the runtime, and the check of given noise.

Image i of a run with seed s starts from `numpy.random.default_rng(s + i).standard_normal(shape, float32)`,
shape (latent channels, H / vae factor, W / vae factor) from the manifest: unit Gaussian noise, which each
sampler then scales by its initial sigma (as diffusers scales given latents by `init_noise_sigma`). The step
noise of stochastic samplers comes from the same generator, after that draw. numpy, not torch, makes the rule
reproducible without torch.

    image_rng(seed, index, shape)    -> (initial unit noise, the generator for that image's steps)
    initial_noise(seed, shape, n)    -> [n, *shape], images 0..n-1
    check_given_noise(noise, shape)  given unit noise (--latents) checked and batched
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def image_rng(seed: int, index: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.random.Generator]:
    """Image `index` of a run with `seed`: its initial unit noise (float32, `shape`) and the generator its
    sampler draws step noise from, positioned just after that noise."""
    rng = np.random.default_rng(seed + index)
    return rng.standard_normal(shape, dtype=np.float32), rng


def initial_noise(seed: int, shape: tuple[int, ...], num_images: int = 1) -> np.ndarray:
    """Unit noise of `num_images` images, [num_images, *shape], float32."""
    return np.stack([image_rng(seed, index, shape)[0] for index in range(num_images)])


def check_given_noise(noise: np.ndarray, expected: tuple[int, ...], run: str) -> np.ndarray:
    """Given unit noise as float32 of the `expected` batched shape (one image may come without its batch axis);
    `run` names the run in the error (e.g. "128x128 x 2 images")."""
    noise = np.asarray(noise, dtype=np.float32)
    noise = noise[None] if noise.ndim == len(expected) - 1 else noise
    if noise.shape != expected:
        raise ConfigError(f"given latents have shape {noise.shape}; {run} needs {expected}")
    if not np.isfinite(noise).all():
        raise ConfigError("given latents contain NaN or infinite values")
    return noise
