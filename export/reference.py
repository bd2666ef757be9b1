"""The PyTorch reference InstantID pipeline: our own loop on diffusers building blocks.

It follows the official `StableDiffusionXLInstantIDPipeline` point by point (the traps listed in
docs/instantid-architecture.md section 13): the largest face's RAW embedding; IdentityNet sees only the 16 face
tokens but the pooled text and time ids too; the UNet sees 77 text tokens followed by the 16 face tokens; the
uncond face tokens are Resampler(zeros); batch order [uncond, cond]; CFG only when guidance > 1; zero negative
text embeddings when no negative prompt is given; Euler discrete with the SDXL config; fp32 VAE decode.
It is the oracle for parity tests and the PyTorch peer in benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..runtime.errors import ConfigError, FaceModelError, NumericalError
from ..runtime.face import FaceAnalyzer, FaceConditioning, face_conditioning
from ..runtime.noise import initial_noise
from ..runtime.settings import GenerationSettings, identitynet_active, time_ids
from .reference_models import ReferenceModels


@dataclass
class ReferenceResult:
    image: np.ndarray  # HxWx3 uint8
    latents: np.ndarray  # final latents [1, 4, H/8, W/8], before decoding
    conditioning: FaceConditioning
    timings: dict[str, float] = field(default_factory=dict)


def check_finite(stage: str, tensor: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(
            f"{stage} produced {bad} NaN/infinite values out of {tensor.numel()}; the weights may be corrupt "
            "or in a precision that overflows (run in fp32)"
        )
    return tensor


def encode_text(models: ReferenceModels, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate hidden states of both encoders, concatenated, and the second encoder's projected pooled."""
    hidden = []
    for tokenizer, encoder in (
        (models.tokenizer, models.text_encoder),
        (models.tokenizer_2, models.text_encoder_2),
    ):
        ids = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        output = encoder(ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    return torch.cat(hidden, dim=-1), output.text_embeds


def check_noise(noise: np.ndarray, height: int, width: int) -> np.ndarray:
    expected = (1, 4, height // 8, width // 8)
    noise = np.asarray(noise, dtype=np.float32)
    if noise.ndim == 3:
        noise = noise[None]
    if noise.shape != expected:
        raise ConfigError(f"given latents have shape {noise.shape}; {width}x{height} needs {expected}")
    if not np.isfinite(noise).all():
        raise ConfigError("given latents contain NaN or infinite values")
    return noise


@torch.inference_mode()
def generate(
    models: ReferenceModels,
    analyzer: FaceAnalyzer,
    face_rgb: np.ndarray,
    settings: GenerationSettings,
    noise: np.ndarray | None = None,
    progress=None,
) -> ReferenceResult:
    """One portrait. `noise` overrides the seed's unit noise; `progress(step, total)` is called per step."""
    from diffusers import EulerDiscreteScheduler

    settings.validate()
    if (settings.sampler, settings.karras, settings.timestep_spacing, settings.num_images) != ("euler", False, None, 1):
        raise ConfigError("the reference runs one image with the checkpoint's Euler scheduler only")
    timings, clock = {}, time.perf_counter()
    cond = face_conditioning(analyzer, face_rgb, settings.width, settings.height)
    if cond.face.embedding.shape[0] != models.embedding_dim:
        raise FaceModelError(
            f"the face pack {analyzer.pack} gives {cond.face.embedding.shape[0]}-d embeddings but this "
            f"checkpoint's ip-adapter expects {models.embedding_dim}-d; use the matching pack (antelopev2: 512-d)"
        )
    height, width = cond.height, cond.width
    timings["face"] = time.perf_counter() - clock

    clock = time.perf_counter()
    embedding = torch.from_numpy(cond.face.embedding).reshape(1, 1, -1)
    tokens = check_finite("image_proj", models.resampler(embedding))
    uncond_tokens = models.resampler(torch.zeros_like(embedding))
    timings["image_proj"] = time.perf_counter() - clock

    clock = time.perf_counter()
    text, pooled = encode_text(models, settings.prompt)
    if settings.cfg:
        if settings.negative_prompt is None and models.force_zeros_for_empty_prompt:
            negative, negative_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
        else:
            negative, negative_pooled = encode_text(models, settings.negative_prompt or "")
        text, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
        tokens = torch.cat([uncond_tokens, tokens])
    check_finite("text encoders", text)
    timings["text"] = time.perf_counter() - clock

    batch = 2 if settings.cfg else 1
    context = torch.cat([text, tokens], dim=1)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([time_ids(height, width)] * batch)}
    control = torch.tensor(cond.control).permute(2, 0, 1)[None].float().div(255).repeat(batch, 1, 1, 1)

    scheduler = EulerDiscreteScheduler.from_config(models.scheduler_config)
    scheduler.set_timesteps(settings.steps)
    noise = initial_noise(settings.seed, height, width) if noise is None else check_noise(noise, height, width)
    latents = torch.from_numpy(noise) * scheduler.init_noise_sigma
    models.ip_scale.value = settings.ip_scale

    clock = time.perf_counter()
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x = scheduler.scale_model_input(torch.cat([latents] * batch), t)
        active = identitynet_active(i, len(timesteps), settings.control_start, settings.control_end)
        down, mid = models.identitynet(
            x,
            t,
            encoder_hidden_states=tokens,
            controlnet_cond=control,
            conditioning_scale=settings.identitynet_scale * float(active),
            added_cond_kwargs=added,
            return_dict=False,
        )
        eps = models.unet(
            x,
            t,
            encoder_hidden_states=context,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        check_finite(f"UNet (step {i + 1})", eps)
        if settings.cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + settings.guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, return_dict=False)[0]
        if progress:
            progress(i + 1, len(timesteps))
    timings["denoise"] = time.perf_counter() - clock

    clock = time.perf_counter()
    decoded = models.vae.decode(latents / models.vae.config.scaling_factor, return_dict=False)[0]
    check_finite("VAE decoder", decoded)
    image = (decoded / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().numpy()
    timings["decode"] = time.perf_counter() - clock
    return ReferenceResult(
        image=(image * 255).round().astype(np.uint8),
        latents=latents.float().numpy(),
        conditioning=cond,
        timings=timings,
    )
