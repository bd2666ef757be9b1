"""The exported graphs: thin wrappers whose inputs and outputs carry our names, and their tensor specs.

Shapes use symbolic dims when dynamic ("batch", "latent_height", ...) and numbers when the export is for one
size. Batch stays dynamic in every export (CFG runs batch 2, no CFG batch 1), and so does the UNet's context
length (weighted prompts give any number of text tokens); OpenVINO compiles for the exact shapes at load time
anyway. The UNet's `face_mask` confines the face attention to the face region (ones: everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..runtime.manifest import (
    CONTEXT_TOKENS,
    CONTROLNET_PREFIX,
    RESIDUAL_STRIDES,
    RESIDUALS,
    TEXT_TOKENS,
    TINY_DECODER,
    TensorSpec,
    latent_size,
)


@dataclass(frozen=True)
class Dims:
    """Sizes the specs need, read from the checkpoint's configs; height/width None means dynamic spatial dims."""

    cross: int  # cross-attention width (text widths summed)
    text_widths: tuple[int, int]
    pooled: int
    embedding: int
    tokens: int
    residual_channels: tuple[int, ...]  # 9 down + mid
    text_length: int  # tokens per prompt (the tokenizers' model_max_length)
    latent_channels: int  # the UNet's in_channels
    vae_scale_factor: int  # pixels per latent
    height: int | None = None
    width: int | None = None

    def latent(self, stride: int = 1) -> tuple[int | str, int | str]:
        if self.height is None:
            suffix = "" if stride == 1 else f"_{stride}"
            return f"latent_height{suffix}", f"latent_width{suffix}"
        return latent_size(self.height, self.width, self.vae_scale_factor, stride)

    def pixels(self) -> tuple[int | str, int | str]:
        return ("height", "width") if self.height is None else (self.height, self.width)


def _f32(name, *shape) -> TensorSpec:
    return TensorSpec(name, "float32", tuple(shape))


class TextEncoderGraph(nn.Module):
    def __init__(self, encoder, pooled: bool):
        super().__init__()
        self.encoder, self.pooled = encoder, pooled

    def forward(self, input_ids):
        output = self.encoder(input_ids, output_hidden_states=True)
        hidden = output.hidden_states[-2]  # penultimate layer, before the final LayerNorm, as SDXL uses it
        return (hidden, output.text_embeds) if self.pooled else hidden


class ImageProjGraph(nn.Module):
    def __init__(self, resampler):
        super().__init__()
        self.resampler = resampler

    def forward(self, image_embeds):
        return self.resampler(image_embeds)


class IdentityNetGraph(nn.Module):
    def __init__(self, identitynet):
        super().__init__()
        self.net = identitynet

    def forward(self, sample, timestep, image_tokens, controlnet_cond, conditioning_scale, text_embeds, time_ids):
        return _controlnet_residuals(self.net, sample, timestep, image_tokens, controlnet_cond, conditioning_scale,
                                     text_embeds, time_ids)  # fmt: skip


class ControlNetGraph(nn.Module):
    """An extra SDXL ControlNet: like IdentityNet, but its cross-attention sees the text embeddings."""

    def __init__(self, controlnet):
        super().__init__()
        self.net = controlnet

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, text_embeds,
                time_ids):  # fmt: skip
        return _controlnet_residuals(self.net, sample, timestep, encoder_hidden_states, controlnet_cond,
                                     conditioning_scale, text_embeds, time_ids)  # fmt: skip


def _controlnet_residuals(net, sample, timestep, context, controlnet_cond, conditioning_scale, text_embeds, time_ids):
    """A diffusers SDXL ControlNet's down and mid residuals as one flat tuple (the graph's outputs)."""
    down, mid = net(
        sample,
        timestep,
        encoder_hidden_states=context,
        controlnet_cond=controlnet_cond,
        conditioning_scale=conditioning_scale,
        added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
        return_dict=False,
    )
    return (*down, mid)


class UNetGraph(nn.Module):
    def __init__(self, unet, ip_scale):
        super().__init__()
        self.unet, self.ip_scale_holder = unet, ip_scale

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids, *residuals_scale_mask):
        *residuals, ip_scale, face_mask = residuals_scale_mask
        self.ip_scale_holder.value = ip_scale
        self.ip_scale_holder.region_latent = face_mask
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            down_block_additional_residuals=tuple(residuals[:9]),
            mid_block_additional_residual=residuals[9],
            return_dict=False,
        )[0]


class VaeDecoderGraph(nn.Module):
    """Denoised latents -> image in [-1, 1]; the 1/scaling_factor is inside."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]


class VaeEncoderGraph(nn.Module):
    """Image in [-1, 1] -> the latent distribution, times scaling_factor: its mean and its standard deviation
    (img2img samples mean + std * noise, as diffusers' `retrieve_latents` does)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        posterior = self.vae.encode(image).latent_dist
        factor = self.vae.config.scaling_factor
        return posterior.mode() * factor, posterior.std * factor


def specs(name: str, d: Dims) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a graph; every extra ControlNet ("controlnet_<name>") has the same."""
    b = "batch"
    h, w = d.latent()
    ph, pw = d.pixels()
    residuals = [
        _f32(n, b, c, *d.latent(s)) for n, c, s in zip(RESIDUALS, d.residual_channels, RESIDUAL_STRIDES, strict=True)
    ]
    c, n = d.latent_channels, d.text_length
    ids = TensorSpec("input_ids", "int64", (b, n))

    def controlnet_inputs(context: TensorSpec) -> list[TensorSpec]:
        return [_f32("sample", b, c, h, w), _f32("timestep"), context, _f32("controlnet_cond", b, 3, ph, pw),
                _f32("conditioning_scale"), _f32("text_embeds", b, d.pooled), _f32("time_ids", b, 6)]  # fmt: skip

    decoder = ([_f32("latents", b, c, h, w)], [_f32("image", b, 3, ph, pw)])
    table = {
        "text_encoder": ([ids], [_f32("hidden_states", b, n, d.text_widths[0])]),
        "text_encoder_2": ([ids], [_f32("hidden_states", b, n, d.text_widths[1]), _f32("text_embeds", b, d.pooled)]),
        "image_proj": ([_f32("image_embeds", b, 1, d.embedding)], [_f32("image_tokens", b, d.tokens, d.cross)]),
        # IdentityNet's cross-attention sees the face tokens, an extra ControlNet's the text (_controlnet_residuals)
        "identitynet": (controlnet_inputs(_f32("image_tokens", b, d.tokens, d.cross)), residuals),
        "unet": (
            [
                _f32("sample", b, c, h, w),
                _f32("timestep"),
                _f32("encoder_hidden_states", b, CONTEXT_TOKENS, d.cross),
                _f32("text_embeds", b, d.pooled),
                _f32("time_ids", b, 6),
                *residuals,
                _f32("ip_scale"),
                _f32("face_mask", 1, 1, h, w),
            ],
            [_f32("noise_pred", b, c, h, w)],
        ),  # fmt: skip
        "controlnet": (controlnet_inputs(_f32("encoder_hidden_states", b, TEXT_TOKENS, d.cross)), residuals),
        "vae_decoder": decoder,
        TINY_DECODER: decoder,  # the same contract: runtime/decode.py runs either
        "vae_encoder": ([_f32("image", b, 3, ph, pw)], [_f32("latents", b, c, h, w), _f32("latents_std", b, c, h, w)]),
    }
    return table["controlnet" if name.startswith(CONTROLNET_PREFIX) else name]


def example_inputs(inputs: list[TensorSpec], sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for validation: symbolic dims take `sizes`, values are plausible per name."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = tuple(sizes[dim] if isinstance(dim, str) else dim for dim in spec.shape)
        if spec.name == "input_ids":
            ids = rng.integers(1, 49405, shape)
            ids[:, 0], ids[:, 12], ids[:, 13:] = 49406, 49407, 49407  # BOS, a 11-token prompt, EOS padding
            feeds[spec.name] = ids.astype(np.int64)
        elif spec.name == "timestep":
            feeds[spec.name] = np.array(500.0, np.float32)
        elif spec.name in ("conditioning_scale", "ip_scale"):
            feeds[spec.name] = np.array(0.8, np.float32)
        elif spec.name == "face_mask":  # a face box: ones inside, zeros outside
            mask = np.zeros(shape, np.float32)
            mask[..., shape[-2] // 4 : 3 * shape[-2] // 4, shape[-1] // 4 : 3 * shape[-1] // 4] = 1
            feeds[spec.name] = mask
        elif spec.name == "controlnet_cond":
            feeds[spec.name] = rng.uniform(0, 1, shape).astype(np.float32)
        elif spec.name == "time_ids":
            feeds[spec.name] = np.tile(np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float32), (shape[0], 1))
        elif spec.name == "image_embeds":
            feeds[spec.name] = (rng.standard_normal(shape) * 1.5).astype(np.float32)  # raw embeddings have norm ~20
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def as_torch(feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.array(v)) for v in feeds.values())
