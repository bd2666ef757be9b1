"""Reading a LoRA file: its keys grouped into layers (down, up, alpha), in the two released layouts.

kohya (what SDXL-Lightning, Hyper-SD, LCM-LoRA SDXL and DMD2 ship):
    lora_unet_<module path, dots as underscores>.lora_down.weight   [rank, in(, kh, kw)]
    lora_unet_<...>.lora_up.weight                                  [out, rank(, 1, 1)]
    lora_unet_<...>.alpha                                           scalar; the update is up @ down * alpha / rank
    lora_te1_... / lora_te2_...                                     SDXL's two text encoders (lora_te_: SD 1.x)
diffusers / PEFT (what diffusers' training scripts save):
    unet.<module path>.lora_A.weight / .lora_B.weight               (text_encoder., text_encoder_2. likewise)
    unet.<module path>.lora.down.weight / .lora.up.weight           (the older diffusers spelling)
    optional <prefix>.alpha; without it the update is up @ down (diffusers' convention)

Only names, dtypes and shapes are read here (tensors load when fused), so a 787 MB file costs nothing to
check. Nothing is matched against a model here: see lora.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import CheckpointError

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
KOHYA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
PEFT_ROLES = {"lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
              "alpha": "alpha"}  # fmt: skip
# Adapter kinds we do not fuse (LyCORIS LoHa/LoKr, DoRA, LoCon's Tucker middle): named in the error.
OTHER_ADAPTERS = re.compile(r"hada_|lokr_|dora_scale|lora_mid|oft_|\.diff(_b)?$")
# Signs of a LoRA made for Stable Diffusion 1.x/2.x: one text encoder, a fourth down block, attention in
# the first down block (SDXL's first block is plain).
SD1_SIGNS = re.compile(r"^lora_te_|down_blocks[._]3[._]|down_blocks[._]0[._]attentions|^lora_unet_input_blocks_[12]_1_")
# diffusers' attention-processor spelling (to_q_lora, to_out_lora) of the same layers
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")


@dataclass
class LoraLayer:
    """One adapted layer: where it goes and the names, shapes and dtypes of its tensors."""

    component: str  # unet, text_encoder, text_encoder_2
    path: str  # kohya: the module path with underscores; PEFT: the dotted module path
    kohya: bool
    keys: dict[str, str] = field(default_factory=dict)  # role (down, up, alpha) -> key in the file
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.shapes["down"][0]

    def describe(self) -> str:
        return ", ".join(f"{self.keys[r]} {list(self.shapes[r])}" for r in ("down", "up") if r in self.keys)


@dataclass
class LoraFile:
    path: Path
    layout: str  # "kohya" or "peft"
    layers: list[LoraLayer]
    metadata: dict[str, str]

    def components(self) -> set[str]:
        return {layer.component for layer in self.layers}

    def dtypes(self) -> set[str]:
        return {d for layer in self.layers for d in layer.dtypes.values()}


def _header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            entries = {}
            names = f.keys()
            for key in names:
                sliced = f.get_slice(key)
                entries[key] = (sliced.get_dtype(), tuple(sliced.get_shape()))
    except Exception as exc:  # not safetensors, truncated, ...: one message naming the file
        raise CheckpointError(
            f"cannot read LoRA {path} as .safetensors ({type(exc).__name__}: {exc}); the released LoRAs are "
            ".safetensors files"
        ) from exc
    return entries, metadata


def _first(keys, count: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (f" (and {len(keys) - count} more)" if len(keys) > count else "")


def _split(key: str) -> tuple[str, str, str, bool] | None:
    """(component, layer path, role, kohya?) of a key, or None when it fits neither layout."""
    for prefix, component in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            stem, _, suffix = key.partition(".")
            role = KOHYA_ROLES.get(suffix)
            return (component, stem[len(prefix) :], role, True) if role else None
    for suffix, role in sorted(PEFT_ROLES.items(), key=lambda item: -len(item[0])):
        if key.endswith("." + suffix):
            stem = key[: -len(suffix) - 1]
            component = "unet"
            for prefix, name in PEFT_PREFIXES.items():
                if stem.startswith(prefix):
                    component, stem = name, stem[len(prefix) :]
                    break
            stem = stem.removeprefix("base_model.model.")
            stem = _PROCESSOR.sub(lambda m: "." + (m.group(1) if m.group(1) != "to_out" else "to_out.0"), stem)
            return component, stem, role, False
    return None


def read_lora(path: Path) -> LoraFile:
    """The layers of a LoRA file; a clear error for anything that is not a plain SDXL LoRA."""
    entries, metadata = _header(path)
    if not entries:
        raise CheckpointError(f"{path} holds no tensors; it is not a LoRA")
    others = [k for k in entries if OTHER_ADAPTERS.search(k)]
    if others:
        raise CheckpointError(
            f"{path.name} is a LyCORIS/DoRA-style adapter (keys such as {_first(others, 3)}), not a plain LoRA; "
            "only kohya lora_down/lora_up and diffusers lora_A/lora_B layers can be fused"
        )
    sd1 = [k for k in entries if SD1_SIGNS.search(k)]
    if sd1:
        raise CheckpointError(
            f"{path.name} is a LoRA for Stable Diffusion 1.x/2.x, not SDXL (its keys include {_first(sd1, 3)}: "
            "a single text encoder or the SD 1.x block layout); use the SDXL release of the LoRA"
        )
    layers: dict[tuple[str, str], LoraLayer] = {}
    unknown = []
    for key, (dtype, shape) in entries.items():
        parts = _split(key)
        if parts is None:
            unknown.append(key)
            continue
        component, stem, role, kohya = parts
        layer = layers.setdefault((component, stem), LoraLayer(component, stem, kohya))
        layer.keys[role], layer.shapes[role], layer.dtypes[role] = key, shape, dtype
    if unknown:
        raise CheckpointError(
            f"{path.name}: {len(unknown)} of {len(entries)} keys are not LoRA keys of a known layout, first: "
            f"{_first(unknown)}. Expected kohya (lora_unet_*.lora_down.weight/lora_up.weight/alpha) or "
            "diffusers/PEFT (unet.*.lora_A.weight/lora_B.weight) keys"
        )
    layouts = {layer.kohya for layer in layers.values()}
    if len(layouts) > 1:
        raise CheckpointError(f"{path.name} mixes kohya and diffusers LoRA keys; it is not a file any tool writes")
    _check_pairs(path, list(layers.values()))
    return LoraFile(path, "kohya" if layouts == {True} else "peft", list(layers.values()), metadata)


def _check_pairs(path: Path, layers: list[LoraLayer]) -> None:
    unpaired = [layer.keys.get("down") or layer.keys.get("up") or layer.keys["alpha"] for layer in layers
                if not {"down", "up"} <= set(layer.keys)]  # fmt: skip
    if unpaired:
        raise CheckpointError(f"{path.name}: layers without both a down and an up matrix, first: {_first(unpaired)}")
    bad = []
    for layer in layers:
        down, up = layer.shapes["down"], layer.shapes["up"]
        if len(down) not in (2, 4) or len(up) != len(down) or up[1] != down[0] or (len(up) == 4 and up[2:] != (1, 1)):
            bad.append(f"{layer.describe()}")
        elif "alpha" in layer.shapes and layer.shapes["alpha"] not in ((), (1,)):
            bad.append(f"{layer.keys['alpha']} {list(layer.shapes['alpha'])} (alpha must be a scalar)")
    if bad:
        raise CheckpointError(
            f"{path.name}: {len(bad)} layers have a rank layout no LoRA has (down [rank, in(, kh, kw)], "
            f"up [out, rank(, 1, 1)]), first: {'; '.join(bad[:3])}"
        )
