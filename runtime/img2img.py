"""img2img: start from a photo's latents instead of pure noise (InstantID's img2img pipeline,
pipeline_stable_diffusion_xl_instantid_img2img.py, on diffusers' StableDiffusionXLControlNetImg2ImgPipeline).

The init image gets the face photo's rules (EXIF rotation, modes, size limits: images.py; InstantID's
`resize_img`), then the output size (Lanczos, as diffusers' image processor). The `vae_encoder` graph gives the
latent distribution's mean and standard deviation (scaled); the start latents are a sample of it,
mean + std * noise, as diffusers' `retrieve_latents` samples. That noise is drawn from the image's generator
right after its initial noise (noise.image_rng), where diffusers draws it first from its torch generator.
The sampler then noises these latents to the strength's first timestep (sampling.py).
"""

from __future__ import annotations

import numpy as np

from .errors import check_finite
from .images import resize_control_image, resize_like_instantid
from .package import ModelPackage


def init_image(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The init photo as the VAE takes it: [1, 3, H, W] float32 in [-1, 1] at the output size."""
    resized = resize_control_image(resize_like_instantid(rgb), width, height)
    pixels = resized.astype(np.float32) / np.float32(255)
    return (2 * pixels - 1).transpose(2, 0, 1)[None]


def init_distribution(package: ModelPackage, rgb: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """(mean, std) of the init image's latents, [1, C, h, w] each, scaled by the VAE's scaling factor."""
    out = package.session("vae_encoder").run({"image": init_image(rgb, width, height)})
    return check_finite("vae_encoder", out["latents"]), check_finite("vae_encoder", out["latents_std"])


def sample_latents(mean: np.ndarray, std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mean + std * noise, the noise drawn from `rng` (the image's generator)."""
    return (mean + std * rng.standard_normal(mean.shape, dtype=np.float32)).astype(np.float32)
