"""Fusing LoRAs into the UNet and text encoders at export: W <- W + scale * alpha / rank * up @ down.

Our own fusion (the diffusers loader is the test oracle, not the implementation), so that every key of the
file is accounted for: a key that names no layer of this model, a layer of another shape (another base, or
another preset), or a partial copy of a known release is an error naming the first offenders, never a
LoRA silently half-applied. The file formats are read in lora_format.py; the known releases are in
distillations.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import CheckpointError, ConfigError
from ..runtime.manifest import sha256_of
from .lora_format import LoraFile, LoraLayer, read_lora

# The layers every released SDXL few-step LoRA adapts (788 in SDXL's UNet): the PEFT target list of
# diffusers' train_lcm_distill_lora_sdxl.py (LCM-LoRA) and of DMD2's main/sdxl/extract_lora_module.py.
DISTILLATION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                        "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv",
                        "time_emb_proj")  # fmt: skip


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


def adaptable_modules(model, component: str) -> dict[str, object]:
    """Every Linear/Conv2d of `model` by its dotted path (text encoders: with the released `text_model.`)."""
    import torch

    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            if component != "unet" and not name.startswith(("text_model.", "text_projection")):
                name = f"text_model.{name}"  # transformers 5 drops the level the released keys carry
            modules[name] = module
    return modules


def distillation_layers(unet) -> list[str]:
    """The dotted paths of the UNet layers a released few-step LoRA adapts (788 for SDXL's UNet)."""
    return [name for name in adaptable_modules(unet, "unet")
            if any(name == t or name.endswith("." + t) for t in DISTILLATION_TARGETS)]  # fmt: skip


def _first(items, count: int = 5) -> str:
    items = list(items)
    return "; ".join(items[:count]) + (f" (and {len(items) - count} more)" if len(items) > count else "")


def match_layers(lora: LoraFile, component: str, modules: dict[str, object]) -> dict[str, LoraLayer]:
    """module path -> the LoRA layer for it; every layer of `component` must name a module of the right shape."""
    by_kohya = {name.replace(".", "_"): name for name in modules}
    matched, unknown, misshaped = {}, [], []
    for layer in (layer for layer in lora.layers if layer.component == component):
        name = by_kohya.get(layer.path) if layer.kohya else layer.path
        if name not in modules:
            unknown.append(layer.keys["down"])
            continue
        weight = tuple(modules[name].weight.shape)
        down, up = layer.shapes["down"], layer.shapes["up"]
        expected_down = (layer.rank, weight[1], *weight[2:])
        if down != expected_down or up[0] != weight[0]:
            misshaped.append(f"{layer.describe()} for a {list(weight)} weight")
        else:
            matched[name] = layer
    if unknown:
        sgm = any("input_blocks" in k for k in unknown)
        hint = (
            " (kohya keys in the original SGM layout, input_blocks/middle_block/..., are not supported)" if sgm else ""
        )
        raise CheckpointError(
            f"{lora.path.name}: {len(unknown)} LoRA layers name no layer of this SDXL {component}, first: "
            f"{_first(unknown)}{hint}. Is it a LoRA for another model?"
        )
    if misshaped:
        raise CheckpointError(
            f"{lora.path.name}: {len(misshaped)} LoRA layers do not fit this {component}'s weights, first: "
            f"{_first(misshaped, 3)}. It was made for another base model (or another stand-in preset)"
        )
    return matched


def _delta(layer: LoraLayer, tensors: dict, scale: float):
    import torch

    down, up = tensors["down"].to(torch.float32), tensors["up"].to(torch.float32)
    alpha = float(tensors["alpha"]) if "alpha" in tensors else float(layer.rank)
    factor = scale * alpha / layer.rank
    if down.dim() == 2:
        return factor * (up @ down)
    return factor * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)


def fuse_lora(model, component: str, lora: LoraFile, scale: float) -> int:
    """Add one LoRA's updates for `component` to `model`'s weights; returns how many layers changed."""
    import torch
    from safetensors import safe_open

    modules = adaptable_modules(model, component)
    matched = match_layers(lora, component, modules)
    with safe_open(str(lora.path), framework="pt") as f, torch.no_grad():
        for name, layer in matched.items():
            weight = modules[name].weight
            tensors = {role: f.get_tensor(key) for role, key in layer.keys.items()}
            weight += _delta(layer, tensors, scale).to(weight.dtype)
    return len(matched)


def fuse_loras(model, component: str, loras: list[LoraSpec]) -> int:
    """Fuse every LoRA's layers for `component` (unet, text_encoder, text_encoder_2); returns how many touched it."""
    touched = 0
    for spec in loras:
        lora = read_lora(spec.path)
        if fuse_lora(model, component, lora, spec.scale):
            touched += 1
    return touched
