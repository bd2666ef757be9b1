"""Random-weight stand-ins of InstantID in the exact on-disk layout of the real release.

    OUT/sdxl/             diffusers SDXL folder (model_index.json, unet/, vae/, text_encoder/, text_encoder_2/,
                          tokenizer/, tokenizer_2/, scheduler/)
    OUT/ControlNetModel/  IdentityNet: config.json + diffusion_pytorch_model.safetensors
    OUT/ip-adapter.bin    torch pickle {"image_proj": Resampler state, "ip_adapter": 140 IP K/V tensors}
    OUT/controlnets/NAME/ with --controlnet NAME: an extra SDXL ControlNet (canny, depth, openpose, ...) in
                          diffusers' layout, IdentityNet's architecture with its own random weights
    OUT/STANDIN.json      says plainly that these are random weights

Models are built on the meta device (no memory), then every tensor is generated on its own from a seed and
its name, and streamed to disk, so the full-size set (3.9 B parameters) fits in a few GB of RAM.
Weights are uniform in +-1/sqrt(fan_in) (PyTorch's default Linear/Conv scale), norms near identity. Unlike a
freshly initialised ControlNet, IdentityNet's zero convolutions get random weights too, so that every path
of the pipeline carries signal in tests.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..runtime.errors import ConfigError
from ..runtime.files import atomic_folder
from ..tools.assets import shared_assets
from .architecture import SDXL_MODEL_INDEX, SDXL_SCHEDULER, Architecture, architecture
from .ip_attention import IPScale, install_ip_attention, ip_key_shapes
from .resampler import Resampler
from .safetensors_stream import write_safetensors

TOKENIZER_FILES = ("vocab.json", "merges.txt")


@dataclass
class MetaModels:
    unet: nn.Module
    identitynet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    text_encoder_2: nn.Module
    resampler: nn.Module


def meta_models(arch: Architecture) -> MetaModels:
    """Every component with the preset's architecture, on the meta device (shapes only, no memory)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        return MetaModels(
            unet=UNet2DConditionModel.from_config(arch.unet),
            identitynet=ControlNetModel.from_config(arch.identitynet),
            vae=AutoencoderKL.from_config(arch.vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2)),
            resampler=Resampler(**arch.resampler),
        )


def _count(tensors) -> int:
    return sum(math.prod(t.shape) for t in tensors)


def describe(preset: str, embedding_dim: int = 512) -> dict:
    """Parameter counts of every component, computed on the meta device."""
    arch = architecture(preset, embedding_dim)
    models = meta_models(arch)
    ip = ip_key_shapes(models.unet)
    vae_decoder = list(models.vae.decoder.parameters()) + list(models.vae.post_quant_conv.parameters())

    def entry(params):
        params = list(params)
        return {"params": _count(params), "tensors": len(params)}

    return {
        "preset": preset,
        "embedding_dim": embedding_dim,
        "components": {
            "unet": entry(models.unet.parameters()),
            "identitynet": entry(models.identitynet.parameters()),
            "resampler": entry(models.resampler.parameters()),
            "ip_kv": {"params": sum(math.prod(s) for s in ip.values()), "tensors": len(ip)},
            "text_encoder": entry(models.text_encoder.parameters()),
            "text_encoder_2": entry(models.text_encoder_2.parameters()),
            "vae_decoder": entry(vae_decoder),
            "vae": entry(models.vae.parameters()),
        },
        "notes": "vae_decoder = decoder + post_quant_conv (what the pipeline runs); vae adds the encoder",
    }


class RandomInit:
    """Deterministic per-tensor random values: the same seed and name give the same tensor in any order."""

    def __init__(self, seed: int, component: str, model: nn.Module):
        self.seed, self.component = seed, component
        self.norm_params = {
            f"{module_name}.{param_name}".lstrip(".")
            for module_name, module in model.named_modules()
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm))
            for param_name, _ in module.named_parameters(recurse=False)
        }
        self.shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}

    def __call__(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        # torch's CPU generator keeps only 32 bits of a seed, so seed, component and name are hashed together
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{self.component}/{name}".encode()))
        uniform = torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1
        if name in self.norm_params:
            return 1 + 0.1 * uniform if name.endswith("weight") else 0.1 * uniform
        if name == "latents":  # Resampler queries, std 1/sqrt(dim) as upstream initialises them
            return uniform * math.sqrt(3 / shape[-1])
        weight_shape = shape if len(shape) > 1 else self.shapes.get(name.removesuffix("bias") + "weight", shape)
        fan_in = math.prod(weight_shape[1:]) if len(weight_shape) > 1 else weight_shape[0]
        return uniform / math.sqrt(fan_in)


def released_text_encoder_key(name: str) -> str:
    """The key a tensor has in the released SDXL text encoder files (written with transformers 4).

    transformers 5 flattens CLIPTextModel (no `text_model.` level) and would save it so; it still loads
    the released layout, which is what users have on disk.
    """
    return name if name.startswith(("text_model.", "text_projection.")) else f"text_model.{name}"


def _write_model_weights(model: nn.Module, component: str, path: Path, seed: int, dtype: torch.dtype) -> int:
    init = RandomInit(seed, component, model)
    rename = released_text_encoder_key if component.startswith("text_encoder") else (lambda name: name)
    names = {rename(name): name for name in model.state_dict()}
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            raise RuntimeError(f"{component}: non-float tensor {name} needs an explicit value")
    specs = [(key, shapes[name]) for key, name in names.items()]
    return write_safetensors(path, specs, dtype, lambda key, shape: init(names[key], shape),
                             metadata={"instantid_edge": "random stand-in"})  # fmt: skip


def _copy_tokenizers(source: Path, sdxl_dir: Path) -> None:
    """tokenizer/ and tokenizer_2/ from an SDXL-like folder, or one CLIP BPE folder used for both."""
    first = source / "tokenizer" if (source / "tokenizer").is_dir() else source
    missing = [name for name in TOKENIZER_FILES if not (first / name).is_file()]
    if missing:
        raise ConfigError(
            f"{first} lacks {', '.join(missing)}: pass --tokenizer DIR, a folder holding the CLIP BPE files "
            "vocab.json and merges.txt (e.g. the tokenizer/ folder of stabilityai/stable-diffusion-xl-base-1.0)"
        )
    _copy_files(first, sdxl_dir / "tokenizer")
    if not (sdxl_dir / "tokenizer" / "tokenizer_config.json").is_file():
        _write_tokenizer_config(sdxl_dir / "tokenizer", pad_token="<|endoftext|>")
    if (source / "tokenizer_2").is_dir():
        _copy_files(source / "tokenizer_2", sdxl_dir / "tokenizer_2")
    else:  # the same BPE; OpenCLIP bigG pads with "!", as the real tokenizer_2 does
        (sdxl_dir / "tokenizer_2").mkdir()
        for name in TOKENIZER_FILES:
            shutil.copyfile(first / name, sdxl_dir / "tokenizer_2" / name)
        _write_tokenizer_config(sdxl_dir / "tokenizer_2", pad_token="!")


def _copy_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copyfile(path, target / path.name)


def _write_tokenizer_config(folder: Path, pad_token: str) -> None:
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def default_tokenizer_source() -> Path | None:
    assets = shared_assets()
    return assets / "configs" / "sdxl-base" if assets else None


def _ip_adapter_state(models: MetaModels, seed: int) -> dict:
    image_proj_init = RandomInit(seed, "image_proj", models.resampler)
    image_proj = OrderedDict(
        (name, image_proj_init(name, tuple(t.shape))) for name, t in models.resampler.state_dict().items()
    )
    install_ip_attention(models.unet, models.resampler.latents.shape[1], IPScale())
    ip_init = RandomInit(seed, "ip_adapter", nn.Module())
    ip_adapter = OrderedDict((name, ip_init(name, shape)) for name, shape in ip_key_shapes(models.unet).items())
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def _write_sdxl(sdxl: Path, models: MetaModels, seed: int, dtype: torch.dtype) -> dict[str, int]:
    """The SDXL base as a diffusers folder (tokenizers already copied); bytes written per component."""
    sizes = {}
    for component, model in (("unet", models.unet), ("vae", models.vae)):
        (sdxl / component).mkdir()
        model.save_config(sdxl / component)
        file = sdxl / component / "diffusion_pytorch_model.safetensors"
        sizes[component] = _write_model_weights(model, component, file, seed, dtype)
    for component in ("text_encoder", "text_encoder_2"):
        model = getattr(models, component)
        model.config.save_pretrained(sdxl / component)
        sizes[component] = _write_model_weights(model, component, sdxl / component / "model.safetensors", seed, dtype)
    (sdxl / "scheduler").mkdir()
    (sdxl / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER, indent=2) + "\n")
    (sdxl / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX, indent=2) + "\n")
    return sizes


def _write_instantid(work: Path, models: MetaModels, seed: int, dtype: torch.dtype) -> dict[str, int]:
    """IdentityNet (ControlNetModel/) and ip-adapter.bin; bytes written per component."""
    identitynet_dir = work / "ControlNetModel"
    identitynet_dir.mkdir()
    models.identitynet.save_config(identitynet_dir)
    file = identitynet_dir / "diffusion_pytorch_model.safetensors"
    sizes = {"identitynet": _write_model_weights(models.identitynet, "identitynet", file, seed, dtype)}
    # The released ip-adapter.bin is an fp32 torch pickle; so is ours, whatever the other dtypes.
    torch.save(_ip_adapter_state(models, seed), work / "ip-adapter.bin")
    sizes["ip_adapter"] = (work / "ip-adapter.bin").stat().st_size
    return sizes


def _write_controlnets(work: Path, models: MetaModels, names: tuple[str, ...], seed: int, dtype) -> dict[str, int]:
    """Extra SDXL ControlNets (IdentityNet's architecture, other random weights) in controlnets/NAME/."""
    sizes = {}
    for name in names:
        folder = work / "controlnets" / name
        folder.mkdir(parents=True)
        models.identitynet.save_config(folder)
        file = folder / "diffusion_pytorch_model.safetensors"
        sizes[f"controlnet_{name}"] = _write_model_weights(models.identitynet, f"controlnet_{name}", file, seed, dtype)
    return sizes


def _to_single_file(work: Path, preset: str, embedding_dim: int, dtype: torch.dtype) -> int:
    """Replace sdxl/ by one original-layout sdxl.safetensors, its tokenizers beside it; returns its size."""
    from .single_file import write_single_file

    sdxl = work / "sdxl"
    size = write_single_file(sdxl, work / "sdxl.safetensors", preset, embedding_dim, dtype)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.move(sdxl / name, work / name)
    shutil.rmtree(sdxl)
    return size


def build_standin(
    out: Path,
    preset: str,
    seed: int = 0,
    embedding_dim: int = 512,
    tokenizer: Path | None = None,
    dtype: torch.dtype | None = None,
    single_file: bool = False,
    fast_path: bool = False,
    controlnets: tuple[str, ...] = (),
) -> dict:
    """Write a stand-in checkpoint set to `out` (atomically); returns a report with sizes and peak RSS.

    With `single_file`, the SDXL base is one original-layout `sdxl.safetensors` (tokenizers beside it). With
    `fast_path`, `out/fast-path/` also gets stand-ins of the few-step LoRAs and TAESD-XL (fast_path_standin.py).
    `controlnets`: names of extra SDXL ControlNets to write under controlnets/ (e.g. canny, depth).
    """
    start = time.perf_counter()
    tokenizer = tokenizer or default_tokenizer_source()
    if tokenizer is None:
        raise ConfigError(
            "no CLIP tokenizer files found: pass --tokenizer DIR (a folder with vocab.json and merges.txt, "
            "e.g. the tokenizer/ folder of stabilityai/stable-diffusion-xl-base-1.0)"
        )
    dtype = dtype or (torch.float16 if preset == "full" else torch.float32)
    with atomic_folder(out) as work:
        (work / "sdxl").mkdir()
        _copy_tokenizers(Path(tokenizer), work / "sdxl")
        models = meta_models(architecture(preset, embedding_dim))
        sizes = _write_sdxl(work / "sdxl", models, seed, dtype) | _write_instantid(work, models, seed, dtype)
        if fast_path:
            from .fast_path_standin import write_fast_path

            fast = write_fast_path(work / "fast-path", models.unet, preset, seed)
            sizes["fast_path"] = {entry["file"]: entry["bytes"] for entry in fast["files"]}
        sizes |= _write_controlnets(work, models, tuple(controlnets), seed, dtype)
        if single_file:
            sizes["sdxl_single_file"] = _to_single_file(work, preset, embedding_dim, dtype)
        report = {
            "kind": "random-weight stand-in",
            "warning": "RANDOM WEIGHTS: not a real model; images made with it are noise-like, not portraits",
            "preset": preset,
            "seed": seed,
            "embedding_dim": embedding_dim,
            "dtype": str(dtype).removeprefix("torch."),
            "sdxl_layout": "single file" if single_file else "diffusers folder",
            "created_by": f"instantid-edge {__version__}",
            "bytes": sizes,
        }
        (work / "STANDIN.json").write_text(json.dumps(report, indent=2) + "\n")
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return report
