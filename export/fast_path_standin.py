"""Random-weight stand-ins of the fast-path files, under their released names, in their released layouts.

    OUT/fast-path/sdxl_lightning_2step_lora.safetensors       kohya, fp16, alpha fp16, no metadata
    OUT/fast-path/sdxl_lightning_4step_lora.safetensors
    OUT/fast-path/Hyper-SDXL-1step-lora.safetensors           kohya, fp32, {"format": "pt"}
    OUT/fast-path/Hyper-SDXL-4steps-lora.safetensors
    OUT/fast-path/lcm-lora-sdxl/pytorch_lora_weights.safetensors   kohya, fp16, {"format": "pt"}
    OUT/fast-path/dmd2_sdxl_4step_lora_fp16.safetensors       kohya, fp16, no metadata
    OUT/fast-path/taesdxl_decoder.pth                         TAESD-XL decoder state dict (fp32)
    OUT/fast-path/FAST-PATH.json                              what each file is, and that it is random

The LoRAs cover the same layers as the releases (distillation_layers of the preset's UNet: 788 for the full
one) with tensors sorted by name as safetensors writes them, so at `full` each file has exactly the
released byte size (see distillations.py). Smaller presets scale the rank and keep alpha / rank.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

from .distillations import PROFILES, Release
from .lora import adaptable_modules, distillation_layers
from .safetensors_stream import safetensors_header, write_safetensors
from .taesd import tiny_decoder

STANDIN_RELEASES = ("lightning-2step", "lightning-4step", "hyper-1step", "hyper-4step", "lcm-4step", "dmd2-4step")
RANKS = {"tiny": 4, "small": 16, "full": 64}
DTYPES = {"F16": torch.float16, "F32": torch.float32}
TINY_DECODER_FILE = "taesdxl_decoder.pth"


def _uniform(seed: int, name: str, shape, bound: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/fast-path/{name}".encode()))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def lora_specs(unet, release: Release, rank: int) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of `release` for this UNet, sorted by name as safetensors writes them."""
    modules = adaptable_modules(unet, "unet")
    specs = []
    for name in distillation_layers(unet):
        weight = tuple(modules[name].weight.shape)
        key = "lora_unet_" + name.replace(".", "_")
        specs += [(f"{key}.alpha", ()), (f"{key}.lora_down.weight", (rank, *weight[1:])),
                  (f"{key}.lora_up.weight", (weight[0], rank, *((1, 1) if len(weight) == 4 else ())))]  # fmt: skip
    return sorted(specs)


def lora_file_bytes(unet, release: Release, rank: int = 64) -> int:
    """The size the file has with this UNet's layers, computed without writing it (for the full-size check)."""
    encoded, data = safetensors_header(lora_specs(unet, release, rank), DTYPES[release.dtype], release.metadata)
    return 8 + len(encoded) + data


def release_path(folder: Path, release: Release) -> Path:
    return folder / (release.folder or "") / release.file_name


def write_lora_standin(unet, release: Release, rank: int, out: Path, seed: int) -> dict:
    path = release_path(out, release)
    alpha = release.alpha * rank / release.rank

    def make(key: str, shape):
        if key.endswith(".alpha"):
            return torch.tensor(alpha)
        fan_in = math.prod(shape[1:])
        # up is zero-initialised in training and stays small; here it is large enough that tests see the LoRA
        return _uniform(seed, f"{release.profile}/{key}", shape, (1 if "down" in key else 2) / math.sqrt(fan_in))

    path.parent.mkdir(parents=True, exist_ok=True)
    size = write_safetensors(path, lora_specs(unet, release, rank), DTYPES[release.dtype], make,
                             metadata=release.metadata, with_format=False)  # fmt: skip
    return {"file": path.relative_to(out).as_posix(), "bytes": size,
            "release": release.family, "profile": release.profile, "rank": rank, "alpha": alpha,
            "dtype": release.dtype, "layers": len(distillation_layers(unet))}  # fmt: skip


def write_tiny_decoder_standin(path: Path, seed: int) -> dict:
    shapes = {name: tuple(tensor.shape) for name, tensor in tiny_decoder(4).state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        fan_in = math.prod(
            shapes[name.removesuffix("bias").removesuffix("weight") + "weight"][1:]
        )  # PyTorch's default conv init bound
        state[name] = _uniform(seed, f"taesdxl/{name}", shape, 1 / math.sqrt(fan_in))
    torch.save(state, path)
    return {"file": path.name, "bytes": path.stat().st_size, "release": "TAESD-XL decoder", "dtype": "F32",
            "params": sum(t.numel() for t in state.values())}  # fmt: skip


def write_fast_path(out: Path, unet, preset: str, seed: int) -> dict:
    """Write every fast-path stand-in into `out` (a new folder); returns what was written."""
    out.mkdir()
    files = [write_lora_standin(unet, PROFILES[name], RANKS[preset], out, seed) for name in STANDIN_RELEASES]
    files.append(write_tiny_decoder_standin(out / TINY_DECODER_FILE, seed))
    report = {"warning": "RANDOM WEIGHTS in the released layouts: not the real distillations or decoder",
              "preset": preset, "seed": seed, "files": files}  # fmt: skip
    (out / "FAST-PATH.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
