"""The PyTorch reference InstantID pipeline: our own loop on diffusers building blocks.

It follows the official `StableDiffusionXLInstantIDPipeline` (instantX-research/InstantID,
pipeline_stable_diffusion_xl_instantid.py; the traps are listed in ../shared/docs/instantid-architecture.md
section 13) point by point: the largest face's RAW embedding; IdentityNet sees only the 16 face tokens but the
pooled text and time ids too; the UNet sees 77 text tokens followed by the 16 face tokens; the uncond face tokens
are Resampler(zeros); batch order [uncond, cond]; CFG only when guidance > 1; zero negative text embeddings when
no negative prompt is given; Euler discrete with the SDXL config; fp32 VAE decode. `_denoise` mirrors upstream's
loop; the rest is split by stage. It is the oracle for parity tests and the PyTorch peer in benchmarks; for the
fast path it also runs the other samplers through their diffusers schedulers (reference_sampling.py) and the
TAESD-XL decoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..runtime.errors import ConfigError, FaceModelError, check_finite
from ..runtime.face import FaceAnalyzer, FaceConditioning, face_conditioning
from ..runtime.noise import check_given_noise, image_rng
from ..runtime.settings import GenerationSettings, identitynet_active, time_ids
from .reference_models import ReferenceModels, TextModels
from .reference_sampling import numpy_step_noise, reference_scheduler
from .taesd import TinyDecoderGraph

_TORCH_ADVICE = "the weights may be corrupt or in a precision that overflows (run in fp32)"


@dataclass
class ReferenceResult:
    image: np.ndarray  # HxWx3 uint8
    latents: np.ndarray  # final latents [1, C, H/f, W/f], before decoding
    conditioning: FaceConditioning
    timings: dict[str, float] = field(default_factory=dict)


def check_finite_tensor(stage: str, tensor: torch.Tensor) -> torch.Tensor:
    check_finite(stage, tensor.detach().float().numpy(), advice=_TORCH_ADVICE)
    return tensor


def encode_text(text: TextModels, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate hidden states of both encoders, concatenated, and the second encoder's projected pooled."""
    hidden = []
    for tokenizer, encoder in zip(text.tokenizers, text.encoders, strict=True):
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


def _faces(models: ReferenceModels, analyzer: FaceAnalyzer, face_rgb, settings) -> FaceConditioning:
    faces = face_conditioning(analyzer, face_rgb, settings.width, settings.height)
    if faces.face.embedding.shape[0] != models.embedding_dim:
        raise FaceModelError(
            f"the face pack {analyzer.pack} gives {faces.face.embedding.shape[0]}-d embeddings but this "
            f"checkpoint's ip-adapter expects {models.embedding_dim}-d; use the matching pack (antelopev2: 512-d)"
        )
    return faces


def _face_tokens(models: ReferenceModels, faces: FaceConditioning, cfg: bool) -> torch.Tensor:
    """The face tokens, [uncond (Resampler of zeros), cond] with CFG."""
    embedding = torch.from_numpy(faces.face.embedding).reshape(1, 1, -1)
    tokens = check_finite_tensor("image_proj", models.resampler(embedding))
    return torch.cat([models.resampler(torch.zeros_like(embedding)), tokens]) if cfg else tokens


def _text_embeddings(models: ReferenceModels, settings: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, pooled), [negative, prompt] with CFG; zeros for no negative prompt, as SDXL."""
    text, pooled = encode_text(models.text, settings.prompt)
    if settings.cfg:
        if settings.negative_prompt is None and models.force_zeros_for_empty_prompt:
            negative, negative_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
        else:
            negative, negative_pooled = encode_text(models.text, settings.negative_prompt or "")
        text, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
    check_finite_tensor("text encoders", text)
    return text, pooled


def _denoise(models, settings, scheduler, latents, tokens, text, pooled, control, progress, **step_options):
    """The denoising loop, as upstream's pipeline runs it (IdentityNet on the face tokens, UNet on text + face);
    `step_options` go to the scheduler's step (tcd: eta)."""
    batch = 2 if settings.cfg else 1
    context = torch.cat([text, tokens], dim=1)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([time_ids(settings.height, settings.width)] * batch)}
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
        check_finite_tensor(f"UNet (step {i + 1})", eps)
        if settings.cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + settings.guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, return_dict=False, **step_options)[0]
        if progress:
            progress(i + 1, len(timesteps))
    return latents


def _decode(models: ReferenceModels, latents: torch.Tensor, decoder: str) -> np.ndarray:
    if decoder == "tiny":
        decoded = TinyDecoderGraph(models.tiny_decoder)(latents)
    else:
        decoded = models.vae.decode(latents / models.vae.config.scaling_factor, return_dict=False)[0]
    check_finite_tensor("VAE decoder", decoded)
    image = (decoded / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().numpy()
    return (image * 255).round().astype(np.uint8)


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
    settings.validate()
    if settings.num_images != 1:
        raise ConfigError("the reference runs one image at a time")
    if settings.decoder == "tiny" and models.tiny_decoder is None:
        raise ConfigError("decoder 'tiny' needs the TAESD-XL weights: pass --tiny-decoder taesdxl_decoder.pth")
    timings, clock = {}, time.perf_counter()
    faces = _faces(models, analyzer, face_rgb, settings)
    settings = replace(settings, width=faces.width, height=faces.height)
    timings["face"], clock = time.perf_counter() - clock, time.perf_counter()
    tokens = _face_tokens(models, faces, settings.cfg)
    timings["image_proj"], clock = time.perf_counter() - clock, time.perf_counter()
    text, pooled = _text_embeddings(models, settings)
    timings["text"] = time.perf_counter() - clock

    batch = 2 if settings.cfg else 1
    control = torch.tensor(faces.control).permute(2, 0, 1)[None].float().div(255).repeat(batch, 1, 1, 1)
    scheduler, step_options = reference_scheduler(settings, models.scheduler_config)
    shape = models.latent_shape(settings.height, settings.width)
    seed_noise, rng = image_rng(settings.seed, 0, shape)  # the step noise follows the seed even with given noise
    if noise is None:
        noise = seed_noise[None]
    else:
        noise = check_given_noise(noise, (1, *shape), f"{settings.width}x{settings.height}")
    models.ip_scale.value = settings.ip_scale

    clock = time.perf_counter()
    latents = torch.from_numpy(noise) * scheduler.init_noise_sigma
    with numpy_step_noise(scheduler, rng):
        latents = _denoise(
            models, settings, scheduler, latents, tokens, text, pooled, control, progress, **step_options
        )
    timings["denoise"], clock = time.perf_counter() - clock, time.perf_counter()
    image = _decode(models, latents, settings.decoder)
    timings["decode"] = time.perf_counter() - clock
    return ReferenceResult(image=image, latents=latents.float().numpy(), conditioning=faces, timings=timings)
