"""The InstantID architecture as configs: SDXL base 1.0 + IdentityNet + the image-prompt adapter.

`full` is exactly the released models (tests compare it with the real config files). `tiny` and `small`
scale widths and depths down but keep every structural feature: three down blocks with the first one plain,
9 + 1 IdentityNet residuals, the `text_time` added embedding over 6 time ids, 16 image tokens appended to the
text context, two text encoders whose widths sum to the cross-attention width, and a projected pooled
embedding from the second encoder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

PRESETS = ("tiny", "small", "full")
NUM_IMAGE_TOKENS = 16  # the IP split takes the last 16 context tokens, in every preset
RESAMPLER_DIM_HEAD = 64  # InstantID instantiates the Resampler with dim_head=64; heads = inner width / 64

_SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],  # diffusers' legacy name: these are head COUNTS (head dim 64)
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + 1280 pooled
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

_IDENTITYNET_EXTRA = {
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "global_pool_conditions": False,
}

_SDXL_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}

_CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

_CLIP_BIG_G = {
    **_CLIP_L,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

_RESAMPLER = {
    "dim": 1280,
    "depth": 4,
    "dim_head": RESAMPLER_DIM_HEAD,
    "heads": 20,
    "num_queries": NUM_IMAGE_TOKENS,
    "embedding_dim": 512,
    "output_dim": 2048,
    "ff_mult": 4,
}

SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


@dataclass(frozen=True)
class Architecture:
    """Configs of every InstantID component for one preset (diffusers / transformers key names)."""

    preset: str
    unet: dict
    identitynet: dict
    vae: dict
    text_encoder: dict
    text_encoder_2: dict
    resampler: dict


def _scaled(
    *,
    channels: list[int],
    heads: list[int],
    transformer_layers: list[int],
    text_widths: tuple[int, int],
    text_layers: tuple[int, int],
    text_heads: tuple[int, int],
    pooled_dim: int,
    time_embed_dim: int,
    cond_channels: list[int],
    vae_channels: list[int],
    vae_layers: int,
    resampler_dim: int,
    resampler_depth: int,
    embedding_dim: int,
) -> dict:
    cross = sum(text_widths)
    unet = {
        **_SDXL_UNET,
        "block_out_channels": channels,
        "attention_head_dim": heads,
        "transformer_layers_per_block": transformer_layers,
        "cross_attention_dim": cross,
        "addition_time_embed_dim": time_embed_dim,
        "projection_class_embeddings_input_dim": 6 * time_embed_dim + pooled_dim,
        "sample_size": 32,
    }
    clip_l = {
        **_CLIP_L,
        "hidden_size": text_widths[0],
        "intermediate_size": 4 * text_widths[0],
        "num_attention_heads": text_heads[0],
        "num_hidden_layers": text_layers[0],
        "projection_dim": text_widths[0],
    }
    clip_g = {
        **_CLIP_BIG_G,
        "hidden_size": text_widths[1],
        "intermediate_size": 4 * text_widths[1],
        "num_attention_heads": text_heads[1],
        "num_hidden_layers": text_layers[1],
        "projection_dim": pooled_dim,
    }
    return {
        "unet": unet,
        "identitynet": _identitynet_from(unet, cond_channels),
        "vae": {**_SDXL_VAE, "block_out_channels": vae_channels, "layers_per_block": vae_layers},
        "text_encoder": clip_l,
        "text_encoder_2": clip_g,
        "resampler": {
            **_RESAMPLER,
            "dim": resampler_dim,
            "depth": resampler_depth,
            "heads": resampler_dim // RESAMPLER_DIM_HEAD,
            "embedding_dim": embedding_dim,
            "output_dim": cross,
        },
    }


def _identitynet_from(unet: dict, cond_channels: list[int]) -> dict:
    keys = [
        "act_fn",
        "addition_embed_type",
        "addition_embed_type_num_heads",
        "addition_time_embed_dim",
        "attention_head_dim",
        "block_out_channels",
        "cross_attention_dim",
        "down_block_types",
        "flip_sin_to_cos",
        "freq_shift",
        "in_channels",
        "layers_per_block",
        "norm_eps",
        "norm_num_groups",
        "projection_class_embeddings_input_dim",
        "transformer_layers_per_block",
        "upcast_attention",
        "use_linear_projection",
    ]
    return {
        **{k: copy.deepcopy(unet[k]) for k in keys},
        **_IDENTITYNET_EXTRA,
        "conditioning_embedding_out_channels": cond_channels,
    }


def architecture(preset: str, embedding_dim: int = 512) -> Architecture:
    """The configs of a preset; `embedding_dim` is the face-embedding width the Resampler takes."""
    if preset == "full":
        parts = {
            "unet": _SDXL_UNET,
            "identitynet": _identitynet_from(_SDXL_UNET, _IDENTITYNET_EXTRA["conditioning_embedding_out_channels"]),
            "vae": _SDXL_VAE,
            "text_encoder": _CLIP_L,
            "text_encoder_2": _CLIP_BIG_G,
            "resampler": {**_RESAMPLER, "embedding_dim": embedding_dim},
        }
    elif preset == "small":
        parts = _scaled(
            channels=[128, 256, 512],
            heads=[2, 4, 8],
            transformer_layers=[1, 2, 4],
            text_widths=(384, 640),
            text_layers=(6, 8),
            text_heads=(6, 10),
            pooled_dim=640,
            time_embed_dim=128,
            cond_channels=[16, 32, 96, 128],
            vae_channels=[64, 128, 256, 256],
            vae_layers=2,
            resampler_dim=640,
            resampler_depth=4,
            embedding_dim=embedding_dim,
        )
    elif preset == "tiny":
        # pooled_dim differs from the second encoder's width on purpose: a mix-up of the two would pass
        # unnoticed with the real (equal) sizes.
        parts = _scaled(
            channels=[32, 64, 128],
            heads=[1, 2, 4],
            transformer_layers=[1, 1, 2],
            text_widths=(32, 64),
            text_layers=(3, 3),
            text_heads=(2, 2),
            pooled_dim=48,
            time_embed_dim=16,
            cond_channels=[8, 16, 32, 32],
            vae_channels=[32, 32, 64, 64],
            vae_layers=1,
            resampler_dim=128,
            resampler_depth=2,
            embedding_dim=embedding_dim,
        )
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return Architecture(preset=preset, **copy.deepcopy(parts))


def vae_scale_factor(vae_config) -> int:
    """Pixels per latent: the VAE halves the image once per block after the first (diffusers' SDXL pipelines
    compute it so: 2 ** (len(block_out_channels) - 1), 8 for SDXL)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def latent_shape(unet_config, vae_config, height: int, width: int) -> tuple[int, int, int]:
    """(channels, height, width) of one image's latents: the UNet's in_channels, the pixels over the VAE's
    factor."""
    factor = vae_scale_factor(vae_config)
    return unet_config["in_channels"], height // factor, width // factor
