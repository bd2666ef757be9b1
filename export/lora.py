"""Fusing LoRAs (diffusers/PEFT or kohya format, e.g. LCM-LoRA) into the UNet and text encoders.

Each LoRA is loaded as a PEFT adapter, merged into the base weights at its scale, and its adapter layers
removed, one LoRA at a time, so the result is a plain model with changed weights, ready to export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import CheckpointError, ConfigError
from ..runtime.manifest import sha256_of


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """FILE or FILE:SCALE."""
        path, _, scale = text.rpartition(":") if ":" in text else (text, "", "")
        try:
            spec = cls(Path(path), float(scale) if scale else 1.0)
        except ValueError:
            raise ConfigError(
                f"--lora {text!r}: the scale after ':' must be a number, e.g. lcm.safetensors:1.0"
            ) from None
        if not spec.path.is_file():
            raise ConfigError(f"LoRA file not found: {spec.path}")
        return spec

    def record(self) -> dict:
        return {"file": self.path.name, "sha256": sha256_of(self.path), "scale": self.scale}


def _state_dict(spec: LoraSpec, unet_config) -> tuple[dict, dict | None]:
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    try:
        state, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(str(spec.path), unet_config=unet_config)
    except Exception as exc:  # malformed or foreign files fail in many ways inside diffusers
        raise CheckpointError(f"cannot read LoRA {spec.path}: {type(exc).__name__}: {exc}") from exc
    if not state or not all("lora" in key for key in state):
        raise CheckpointError(f"{spec.path} holds no LoRA weights (no keys containing 'lora')")
    return state, alphas


def _merge_and_unload(model) -> None:
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    recurse_remove_peft_layers(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False


def fuse_loras(model, component: str, loras: list[LoraSpec], unet_config) -> int:
    """Merge every LoRA's weights for `component` (unet, text_encoder, text_encoder_2) into `model`.

    Returns how many LoRAs touched this component.
    """
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin as Loader
    from peft.tuners.tuners_utils import BaseTunerLayer

    touched = 0
    for index, spec in enumerate(loras):
        state, alphas = _state_dict(spec, unet_config)
        name = f"lora_{index}"
        if component == "unet":
            Loader.load_lora_into_unet(state, alphas, unet=model, adapter_name=name)
        else:
            Loader.load_lora_into_text_encoder(state, alphas, text_encoder=model, prefix=component, adapter_name=name)
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        if not layers:
            continue
        for layer in layers:
            layer.scale_layer(spec.scale)
        _merge_and_unload(model)
        touched += 1
    return touched
