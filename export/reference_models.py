"""Load an InstantID checkpoint into PyTorch modules for the reference pipeline and for export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.errors import CheckpointError
from .checkpoint import CheckpointPaths, weight_variant
from .ip_attention import IPScale, install_ip_attention, load_ip_weights
from .resampler import Resampler, resampler_config_from_state_dict


@dataclass
class ReferenceModels:
    unet: torch.nn.Module  # with IP attention installed
    identitynet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module
    tokenizer: object
    tokenizer_2: object
    scheduler_config: dict
    resampler: Resampler
    ip_scale: IPScale
    force_zeros_for_empty_prompt: bool
    standin: dict | None  # STANDIN.json when these are random stand-in weights

    @property
    def embedding_dim(self) -> int:
        return self.resampler.proj_in.in_features

    @property
    def num_image_tokens(self) -> int:
        return self.resampler.latents.shape[1]


def _load(component: str, path: Path, load):
    try:
        return load()
    except CheckpointError:
        raise
    except Exception as exc:  # library errors of every kind become one message naming the file
        raise CheckpointError(f"cannot load {component} from {path}: {type(exc).__name__}: {exc}") from exc


def load_ip_adapter(path: Path) -> dict:
    """The two state dicts of ip-adapter.bin, checked for the released structure."""

    def read():
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)

    state = _load("the image-prompt adapter", path, read)
    if not isinstance(state, dict) or not {"image_proj", "ip_adapter"} <= set(state):
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an InstantID ip-adapter.bin: expected keys image_proj and ip_adapter, found {keys}"
        )
    return state


def load_resampler(state: dict, path: Path, dtype: torch.dtype) -> Resampler:
    try:
        resampler = Resampler(**resampler_config_from_state_dict(state))
        resampler.load_state_dict(state, strict=True)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: image_proj does not match the InstantID Resampler: {exc}") from exc
    return resampler.to(dtype).eval()


def _load_sdxl_folder(base: Path, dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def model(cls, part):
        folder = base / part
        return _load(
            part,
            folder,
            lambda: cls.from_pretrained(folder, torch_dtype=dtype, variant=weight_variant(folder)).eval(),
        )

    index = json.loads((base / "model_index.json").read_text())
    return {
        "unet": model(UNet2DConditionModel, "unet"),
        "vae": model(AutoencoderKL, "vae"),
        "text_encoder": model(CLIPTextModel, "text_encoder"),
        "text_encoder_2": model(CLIPTextModelWithProjection, "text_encoder_2"),
        "tokenizer": _load("tokenizer", base / "tokenizer", lambda: CLIPTokenizer.from_pretrained(base / "tokenizer")),
        "tokenizer_2": _load(
            "tokenizer_2", base / "tokenizer_2", lambda: CLIPTokenizer.from_pretrained(base / "tokenizer_2")
        ),
        "scheduler_config": json.loads((base / "scheduler" / "scheduler_config.json").read_text()),
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
    }


def check_compatible(parts: dict, resampler: Resampler, identitynet, paths: CheckpointPaths) -> None:
    cross = parts["unet"].config.cross_attention_dim
    widths = parts["text_encoder"].config.hidden_size + parts["text_encoder_2"].config.hidden_size
    checks = [
        (
            widths == cross,
            f"the text encoders' widths sum to {widths}, the UNet cross-attention needs {cross}",
        ),
        (
            resampler.proj_out.out_features == cross,
            f"{paths.ip_adapter.name} makes {resampler.proj_out.out_features}-d face tokens, the UNet needs {cross}",
        ),
        (
            identitynet.config.cross_attention_dim == cross,
            f"IdentityNet cross-attention is {identitynet.config.cross_attention_dim}-d, the UNet's is {cross}",
        ),
        (
            identitynet.config.projection_class_embeddings_input_dim
            == parts["unet"].config.projection_class_embeddings_input_dim,
            "IdentityNet and UNet disagree on the added (pooled text + time ids) embedding width",
        ),
    ]
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise CheckpointError(f"mismatched model files: {'; '.join(problems)}")


def quiet_loaders() -> None:
    """Loading progress bars and advice from diffusers/transformers would drown the CLI's own output."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def load_reference_models(paths: CheckpointPaths, dtype: torch.dtype = torch.float32) -> ReferenceModels:
    from diffusers import ControlNetModel

    quiet_loaders()
    if paths.base_is_single_file:
        from .single_file import load_single_file_sdxl

        parts = load_single_file_sdxl(paths.base, dtype)
    else:
        parts = _load_sdxl_folder(paths.base, dtype)
    identitynet = _load(
        "IdentityNet",
        paths.identitynet,
        lambda: ControlNetModel.from_pretrained(
            paths.identitynet, torch_dtype=dtype, variant=weight_variant(paths.identitynet)
        ).eval(),
    )
    state = load_ip_adapter(paths.ip_adapter)
    resampler = load_resampler(state["image_proj"], paths.ip_adapter, dtype)
    check_compatible(parts, resampler, identitynet, paths)
    scale = IPScale(1.0)
    installed = install_ip_attention(parts["unet"], resampler.latents.shape[1], scale)
    try:
        load_ip_weights(installed, state["ip_adapter"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{paths.ip_adapter}: ip_adapter does not fit this UNet: {exc}") from exc
    standin = json.loads(paths.standin_marker.read_text()) if paths.standin_marker.is_file() else None
    return ReferenceModels(identitynet=identitynet, resampler=resampler, ip_scale=scale, standin=standin, **parts)
