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

The app's controls follow upstream's full and img2img pipelines (pipeline_stable_diffusion_xl_instantid_full.py,
pipeline_stable_diffusion_xl_instantid_img2img.py): face-region control (the mask on IdentityNet's residuals
and, through `region_pixels`, on the face attention), weighted prompts (reference_text.py), extra ControlNets
(reference_controls.py) and img2img (diffusers' `get_timesteps` and the scheduler's `add_noise`, the init
latents sampled from the VAE's posterior with the runtime's numpy noise rule).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..runtime.controlnets import control_images
from ..runtime.errors import ConfigError, FaceModelError, check_finite
from ..runtime.face import FaceAnalyzer, FaceConditioning, face_conditioning
from ..runtime.face_region import face_region_mask
from ..runtime.images import resize_like_instantid
from ..runtime.img2img import init_image
from ..runtime.manifest import ControlNetInfo
from ..runtime.noise import check_given_noise, image_rng
from ..runtime.settings import DEFAULT_STRENGTH, GenerationSettings, identitynet_active, img2img_steps, time_ids
from .reference_controls import ReferenceControl, controlnet_residuals, residual_masks
from .reference_models import ReferenceModels, TextModels
from .reference_sampling import numpy_step_noise, reference_scheduler
from .reference_text import weighted_text_embeddings
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
    """(hidden, pooled), [negative, prompt] with CFG; zeros for no negative prompt, as SDXL. Weighted prompts
    as the full pipeline encodes them, which always encodes the negative prompt ("" when none)."""
    if settings.weighted_prompts:
        text, negative, pooled, negative_pooled = weighted_text_embeddings(
            models.text, settings.prompt, settings.negative_prompt or ""
        )
    else:
        text, pooled = encode_text(models.text, settings.prompt)
    if settings.cfg:
        if settings.weighted_prompts:
            pass  # negative and negative_pooled encoded above
        elif settings.negative_prompt is None and models.force_zeros_for_empty_prompt:
            negative, negative_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
        else:
            negative, negative_pooled = encode_text(models.text, settings.negative_prompt or "")
        text, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
    check_finite_tensor("text encoders", text)
    return text, pooled


def _denoise(models, settings, scheduler, latents, tokens, text, pooled, control, progress, timesteps=None,
             masks=None, extras=(), **step_options) -> torch.Tensor:  # fmt: skip
    """The denoising loop, as upstream's pipeline runs it (IdentityNet on the face tokens, UNet on text + face).
    `timesteps`: img2img's share of the schedule; `masks`: face region; `extras`: extra ControlNets;
    `step_options` go to the scheduler's step (tcd: eta)."""
    batch = 2 if settings.cfg else 1
    context = torch.cat([text, tokens], dim=1)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([time_ids(settings.height, settings.width)] * batch)}
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    for i, t in enumerate(timesteps):
        x = scheduler.scale_model_input(torch.cat([latents] * batch), t)
        active = identitynet_active(i, len(timesteps), settings.control_start, settings.control_end)
        down, mid = controlnet_residuals(models.identitynet, x, t, tokens, text, added, control,
                                         settings.identitynet_scale, float(active), masks, extras)  # fmt: skip
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
    init_rgb: np.ndarray | None = None,
    control_rgb: dict[str, np.ndarray | None] | None = None,
) -> ReferenceResult:
    """One portrait. `noise` overrides the seed's unit noise; `progress(step, total)` is called per step;
    `init_rgb`: img2img's init photo; `control_rgb`: the extra ControlNets' photos or condition images."""
    settings.validate()
    if settings.num_images != 1:
        raise ConfigError("the reference runs one image at a time")
    if settings.decoder == "tiny" and models.tiny_decoder is None:
        raise ConfigError("decoder 'tiny' needs the TAESD-XL weights: pass --tiny-decoder taesdxl_decoder.pth")
    if settings.strength is not None and init_rgb is None:
        raise ConfigError("strength applies to img2img only: give an init image (--init-image) or no strength")
    timings, clock = {}, time.perf_counter()
    faces = _faces(models, analyzer, face_rgb, settings)
    settings = replace(settings, width=faces.width, height=faces.height, face_region=settings.face_region is not False,
                       strength=(settings.strength or DEFAULT_STRENGTH) if init_rgb is not None else None)  # fmt: skip
    timings["face"], clock = time.perf_counter() - clock, time.perf_counter()
    tokens = _face_tokens(models, faces, settings.cfg)
    timings["image_proj"], clock = time.perf_counter() - clock, time.perf_counter()
    text, pooled = _text_embeddings(models, settings)
    timings["text"] = time.perf_counter() - clock

    batch = 2 if settings.cfg else 1
    control = _batched(faces.control, batch)
    extras = _extra_controls(models, settings, faces, face_rgb, control_rgb or {}, batch)
    region = face_region_mask(faces) if settings.face_region else None
    masks = residual_masks(region, models.vae_scale_factor) if region is not None else None
    scheduler, step_options = reference_scheduler(settings, models.scheduler_config)
    shape = models.latent_shape(settings.height, settings.width)
    unit, rng = image_rng(settings.seed, 0, shape)  # the step noise follows the seed even with given noise
    unit = unit[None] if noise is None else check_given_noise(noise, (1, *shape), f"{settings.width}x{settings.height}")
    models.ip_scale.value = settings.ip_scale

    clock = time.perf_counter()
    timesteps = scheduler.timesteps
    if init_rgb is None:
        latents = torch.from_numpy(unit) * scheduler.init_noise_sigma
    else:
        latents, timesteps = _img2img_start(models, scheduler, settings, init_rgb, unit, rng)
    # the region holds for this run only: the models are shared, and their UNet alone confines nothing
    models.ip_scale.region_pixels = torch.from_numpy(region) if region is not None else None
    try:
        with numpy_step_noise(scheduler, rng):
            latents = _denoise(models, settings, scheduler, latents, tokens, text, pooled, control, progress,
                               timesteps, masks, extras, **step_options)  # fmt: skip
    finally:
        models.ip_scale.region_pixels = None
    timings["denoise"], clock = time.perf_counter() - clock, time.perf_counter()
    image = _decode(models, latents, settings.decoder)
    timings["decode"] = time.perf_counter() - clock
    return ReferenceResult(image=image, latents=latents.float().numpy(), conditioning=faces, timings=timings)


def _batched(rgb: np.ndarray, batch: int) -> torch.Tensor:
    return torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255).repeat(batch, 1, 1, 1)


def _extra_controls(models, settings, faces, face_rgb, given, batch) -> list[ReferenceControl]:
    """The extra ControlNets' conditions, made by the runtime's function (canny edges, prepared images)."""
    unknown = [name for name, _ in settings.controls if name not in models.controlnets]
    if unknown:
        raise ConfigError(f"no ControlNet {', '.join(unknown)} loaded; give --controlnet NAME=DIR")
    infos = {name: ControlNetInfo(name, name, condition) for name, (_, condition) in models.controlnets.items()}
    canvas = resize_like_instantid(face_rgb)
    images = control_images(infos, settings.controls, given, canvas, faces.width, faces.height)
    return [ReferenceControl(models.controlnets[c.name][0], _batched(c.image, batch), c.strength) for c in images]


def _img2img_start(models, scheduler, settings, init_rgb, unit, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """(noised init latents, the timesteps run): the VAE's posterior sampled with the image generator's next
    draw, diffusers' `get_timesteps` (the last min(int(steps * strength), steps) steps) and `add_noise`."""
    image = torch.from_numpy(init_image(init_rgb, settings.width, settings.height))
    posterior = models.vae.encode(image).latent_dist
    sample = posterior.mean + posterior.std * torch.from_numpy(rng.standard_normal(unit.shape[1:], dtype=np.float32))
    x0 = models.vae.config.scaling_factor * sample
    start = settings.steps - img2img_steps(settings.steps, settings.strength)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    scheduler.set_begin_index(start * scheduler.order)
    return scheduler.add_noise(x0, torch.from_numpy(unit), timesteps[:1]), timesteps
