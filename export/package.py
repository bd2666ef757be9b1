"""`export`: an InstantID checkpoint -> a model package (ONNX and/or OpenVINO IR + manifest.json).

Graphs are exported one at a time, each from a freshly loaded component that is freed before the next, so
peak memory is that of the largest component. Each exported graph is run on fixed inputs by every backend
of the package and compared with PyTorch; the errors go into the manifest, and an error beyond tolerance
fails the export. The package is written to a hidden folder and renamed into place only when complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..runtime.backends import FORMATS, backend_for_format
from ..runtime.errors import CheckpointError, ConfigError, ExportError
from ..runtime.files import atomic_folder, require_new_folder
from ..runtime.manifest import (
    GRAPH_NAMES,
    MANIFEST,
    SCHEMA,
    SCHEMA_VERSION,
    TINY_DECODER,
    GraphInfo,
    ModelFacts,
    dim_sizes,
    file_entry,
    read_manifest,
    sha256_of,
)
from ..runtime.memory import release_memory
from ..runtime.session import SessionOptions, open_session
from ..runtime.settings import check_size
from ..runtime.tokenizer import ClipTokenizer
from ..tools.peak_memory import PeakMemory
from ..tools.versions import library_versions
from .architecture import vae_scale_factor
from .attention_slicing import sliced_attention
from .checkpoint import CheckpointPaths, locate_checkpoint
from .controlnet_export import ControlNetSpec, check_specs, controlnet_module
from .graphs import (
    Dims,
    IdentityNetGraph,
    ImageProjGraph,
    TextEncoderGraph,
    UNetGraph,
    VaeDecoderGraph,
    VaeEncoderGraph,
    as_torch,
    example_inputs,
    specs,
)
from .lora import LoraSpec
from .onnx_export import export_onnx
from .onnx_files import remove_onnx
from .openvino_export import convert_to_openvino
from .profiles import FusedLora, identify_loras, log_profiles, package_profiles
from .reference_models import CheckpointLoader
from .taesd import TinyDecoderGraph, load_tiny_decoder

# An fp32 export should agree with PyTorch to float rounding; beyond this (relative to the output's largest
# magnitude) something in the graph is wrong.
RELATIVE_TOLERANCE = 1e-3
VALIDATION_SIZE = 128  # pixels, for dynamic exports


@dataclass(frozen=True)
class ExportRequest:
    checkpoint: Path
    out: Path
    formats: tuple[str, ...] = FORMATS
    height: int | None = None
    width: int | None = None
    loras: tuple[LoraSpec, ...] = ()
    base: Path | None = None
    profile: str | None = None  # the distillation the LoRA holds (distillations.PROFILES); else identified
    tiny_decoder: Path | None = None  # TAESD-XL weights (.pth, .safetensors or AutoencoderTiny folder)
    controlnets: tuple[ControlNetSpec, ...] = ()  # extra SDXL ControlNets (controlnet_export.py)
    attention_slice: int | None = 1  # self-attention heads computed at a time (attention_slicing.py); None: all

    def validate(self) -> ExportRequest:
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ConfigError(f"unknown format(s) {sorted(unknown)}; choose {', '.join(FORMATS)} or both")
        check_size(self.height, self.width, neither="for dynamic shapes")
        check_specs(self.controlnets)
        if self.attention_slice is not None and self.attention_slice < 1:
            raise ConfigError(f"attention_slice must be at least 1 head (None: all), not {self.attention_slice}")
        require_new_folder(self.out)
        return self


def _residual_channels(identitynet_config) -> tuple[int, ...]:
    channels = list(identitynet_config["block_out_channels"])
    layers = identitynet_config["layers_per_block"]
    down = [channels[0]]
    for i, c in enumerate(channels):
        down += [c] * layers + ([c] if i < len(channels) - 1 else [])
    return (*down, channels[-1])


def _text_length(loader: CheckpointLoader) -> int:
    """Tokens per prompt: both tokenizers pad to it (CLIP: 77)."""
    lengths = {ClipTokenizer.from_folder(folder).model_max_length for folder in loader.tokenizer_folders()}
    if len(lengths) != 1:
        raise CheckpointError(f"the two tokenizers pad prompts to different lengths ({sorted(lengths)})")
    return lengths.pop()


def _dims(loader: CheckpointLoader, request: ExportRequest) -> Dims:
    from diffusers import ControlNetModel
    from transformers import CLIPTextConfig

    def text_config(which):
        if loader.paths.base_is_single_file:
            return loader.single_file.config(which)
        return CLIPTextConfig.from_pretrained(loader.paths.base / which)

    te1, te2 = text_config("text_encoder"), text_config("text_encoder_2")
    image_proj = loader.ip_state["image_proj"]
    identitynet_config = ControlNetModel.load_config(loader.paths.identitynet)
    return Dims(
        cross=loader.unet_config["cross_attention_dim"],
        text_widths=(te1.hidden_size, te2.hidden_size),
        pooled=te2.projection_dim,
        embedding=image_proj["proj_in.weight"].shape[1],
        tokens=image_proj["latents"].shape[1],
        residual_channels=_residual_channels(identitynet_config),
        text_length=_text_length(loader),
        latent_channels=loader.unet_config["in_channels"],
        vae_scale_factor=vae_scale_factor(loader.vae_config),
        height=request.height,
        width=request.width,
    )


def _facts(dims: Dims, loader: CheckpointLoader) -> ModelFacts:
    """What the manifest tells the runtime about the model: from the same configs the graphs were shaped by."""
    return ModelFacts(
        cross_attention_dim=dims.cross,
        text_widths=dims.text_widths,
        pooled_dim=dims.pooled,
        embedding_dim=dims.embedding,
        num_image_tokens=dims.tokens,
        text_length=dims.text_length,
        latent_channels=dims.latent_channels,
        vae_scale_factor=dims.vae_scale_factor,
        force_zeros_for_empty_prompt=bool(loader.index.get("force_zeros_for_empty_prompt", True)),
    )


def _sizes(dims: Dims) -> dict[str, int]:
    return dim_sizes(dims.height or VALIDATION_SIZE, dims.width or VALIDATION_SIZE, 2, dims.vae_scale_factor,
                     dims.text_length, dims.tokens)  # fmt: skip


def _tiny_decoder(path: Path, latent_channels: int):
    decoder = load_tiny_decoder(path)
    channels = decoder[1].in_channels
    if channels != latent_channels:
        raise CheckpointError(
            f"{path.name} decodes {channels}-channel latents (a tiny autoencoder for another model, e.g. taef2 is "
            f"FLUX.2's); SDXL's latents have {latent_channels}: use taesdxl_decoder.pth or madebyollin/taesdxl"
        )
    return decoder


def _graph_module(name: str, loader: CheckpointLoader, dims: Dims, tiny_decoder: Path | None = None,
                  controlnets: tuple[ControlNetSpec, ...] = ()):  # fmt: skip
    """(wrapper module, baked facts) for one graph; each call loads its component afresh."""
    extra = {spec.graph: spec for spec in controlnets}
    if name in extra:
        return controlnet_module(loader, extra[name])
    if name == TINY_DECODER:
        decoder = _tiny_decoder(tiny_decoder, dims.latent_channels)
        return TinyDecoderGraph(decoder), {
            "architecture": "TAESD (madebyollin/taesd), output mapped to [-1, 1]",
            "source": tiny_decoder.name,
            "sha256": sha256_of(tiny_decoder) if tiny_decoder.is_file() else None,
            "params": sum(p.numel() for p in decoder.parameters()),
        }
    if name in ("text_encoder", "text_encoder_2"):
        return TextEncoderGraph(loader.text_encoder(name), pooled=name == "text_encoder_2"), {
            "hidden_states": "penultimate layer (hidden_states[-2])",
            "loras": len(loader.loras),
        }
    if name == "image_proj":
        return ImageProjGraph(loader.resampler()), {}
    if name == "identitynet":
        return IdentityNetGraph(loader.identitynet()), {"conditioning_scale": "input"}
    if name == "unet":
        unet, scale = loader.unet(dims.tokens)
        return UNetGraph(unet, scale), {
            "ip_scale": "input",
            "ip_tokens": f"the last {dims.tokens} context tokens",
            "face_mask": "input: multiplies the face attention, each layer taking every s-th value at latent stride s",
            "loras": [lora.record() for lora in loader.loras],
        }
    vae = loader.vae()
    baked = {"scaling_factor": vae.config.scaling_factor}
    return (VaeDecoderGraph(vae) if name == "vae_decoder" else VaeEncoderGraph(vae)), baked


def _compare(reference: dict[str, np.ndarray], produced: dict[str, np.ndarray]) -> dict:
    error = max(float(np.abs(produced[k] - reference[k]).max()) for k in reference)
    scale = max(float(np.abs(v).max()) for v in reference.values())
    return {"max_abs_error": error, "reference_max_abs": scale, "relative_error": error / max(scale, 1e-12)}


def _export_graph(name: str, loader: CheckpointLoader, dims: Dims, work: Path, request: ExportRequest,
                  log) -> GraphInfo:  # fmt: skip
    clock = time.perf_counter()
    formats = request.formats
    inputs, outputs = specs(name, dims)
    feeds = example_inputs(inputs, _sizes(dims))
    module, baked = _graph_module(name, loader, dims, request.tiny_decoder, request.controlnets)
    with torch.inference_mode():
        result = module(*as_torch(feeds))
    result = result if isinstance(result, tuple) else (result,)
    reference = {spec.name: tensor.float().numpy() for spec, tensor in zip(outputs, result, strict=True)}
    folder = work / name
    folder.mkdir()
    onnx, openvino = backend_for_format("onnx"), backend_for_format("openvino")
    onnx_path = folder / onnx.model_file
    with sliced_attention(module, request.attention_slice if "onnx" in formats else None) as sliced:
        export_onnx(module, as_torch(feeds), inputs, outputs, onnx_path)
    if sliced:
        baked = {**baked, "self_attention_heads_per_slice": {"onnx": request.attention_slice}}
    whole = folder / f"whole-attention-{onnx.model_file}"  # OpenVINO's IR is converted from attention unsliced
    if "openvino" in formats and sliced:
        export_onnx(module, as_torch(feeds), inputs, outputs, whole)
    del module, result
    release_memory()
    if "openvino" in formats:
        convert_to_openvino(whole if sliced else onnx_path, folder / openvino.model_file)
        if sliced:
            remove_onnx(whole)
    if "onnx" not in formats:
        remove_onnx(onnx_path)
    release_memory()
    files = {fmt: [file_entry(work, p) for p in backend_for_format(fmt).files(folder)] for fmt in formats}
    graph = GraphInfo(name, "fp32", files, tuple(inputs), tuple(outputs), baked, {})
    validation = {"inputs": f"fixed (seed 0), sizes {_sizes(dims)}", **_validate(graph, work, reference, feeds)}
    log(f"{name}: exported in {time.perf_counter() - clock:.1f} s; " + ", ".join(
        f"{b} max abs error {validation[b]['max_abs_error']:.2e}" for b in validation if b != "inputs"))  # fmt: skip
    return GraphInfo(name, "fp32", files, tuple(inputs), tuple(outputs), baked, validation)


def _validate(graph: GraphInfo, work: Path, reference: dict, feeds: dict) -> dict[str, dict]:
    """Each backend's outputs against PyTorch's, per backend name; beyond tolerance the export fails."""
    validation = {}
    for fmt in graph.files:
        name = backend_for_format(fmt).name
        session = open_session(graph, work, SessionOptions(backend=name))
        validation[name] = _compare(reference, session.run(feeds))
        del session
        release_memory()
        if validation[name]["relative_error"] > RELATIVE_TOLERANCE:
            raise ExportError(
                f"{graph.name}: {name} output differs from PyTorch by {validation[name]} "
                f"(tolerance {RELATIVE_TOLERANCE} relative); the export is wrong, please report it"
            )
    return validation


def _copy_tokenizers(loader: CheckpointLoader, work: Path) -> dict:
    """{folder: its files}, in the text encoders' order (the manifest's contract)."""
    result = {}
    for source in loader.tokenizer_folders():
        shutil.copytree(source, work / source.name)
        result[source.name] = sorted(p.name for p in (work / source.name).iterdir())
    return result


def _versions() -> dict:
    names = ["torch", "diffusers", "transformers", "onnx", "onnxruntime", "openvino", "numpy"]
    return {"instantid_edge": __version__} | library_versions(names)


def _source_files(paths: CheckpointPaths, loras, tiny_decoder: Path | None, controlnets) -> dict[str, str]:
    files = [paths.ip_adapter, *sorted(paths.identitynet.iterdir())]
    files += [paths.base] if paths.base_is_single_file else sorted(p for p in paths.base.rglob("*") if p.is_file())
    files += [lora.path for lora in loras]
    if tiny_decoder is not None:
        files += sorted(p for p in tiny_decoder.rglob("*") if p.is_file()) if tiny_decoder.is_dir() else [tiny_decoder]
    files += [path for spec in controlnets for path in sorted(spec.folder.iterdir())]
    root = paths.ip_adapter.parent
    return {
        (str(p.relative_to(root)) if p.is_relative_to(root) else str(p)): sha256_of(p) for p in files if p.is_file()
    }


def export_package(request: ExportRequest, log: Callable[[str], None] = print) -> Path:
    with PeakMemory() as peak:
        _export(request, log)
    log(f"package written to {request.out}; {peak}")
    return request.out


def _export(request: ExportRequest, log: Callable[[str], None]) -> None:
    request.validate()
    start = time.perf_counter()
    paths = locate_checkpoint(request.checkpoint, request.base)
    loader = CheckpointLoader(paths, torch.float32, list(request.loras))
    dims = _dims(loader, request)
    # every input is checked before the first graph is exported: a bad LoRA or decoder fails in seconds
    fused: list[FusedLora] = identify_loras(request.loras, request.profile, dict(loader.unet_config))
    for lora in fused:
        log(f"LoRA {lora.spec.path.name} x{lora.spec.scale}: " + (lora.identified.how if lora.identified else "not a "
            "known few-step distillation"))  # fmt: skip
    if request.tiny_decoder is not None:
        _tiny_decoder(request.tiny_decoder, dims.latent_channels)
    names = GRAPH_NAMES + ((TINY_DECODER,) if request.tiny_decoder is not None else ())
    profiles = package_profiles(fused, request.tiny_decoder is not None)
    log_profiles(profiles, log)
    with atomic_folder(request.out) as work:
        names = (*names, *(spec.graph for spec in request.controlnets))
        graphs = {name: _export_graph(name, loader, dims, work, request, log) for name in names}
        (work / "constants").mkdir()
        with torch.inference_mode():
            uncond = loader.resampler()(torch.zeros(1, 1, dims.embedding)).numpy()
        np.save(work / "constants" / "uncond_image_tokens.npy", uncond)
        (work / "scheduler").mkdir()
        (work / "scheduler" / "scheduler_config.json").write_text(json.dumps(loader.scheduler_config, indent=2))
        tokenizers = _copy_tokenizers(loader, work)
        manifest = _manifest(request, paths, loader, dims, graphs, tokenizers, uncond.shape, fused, profiles)
        manifest["files"] = [file_entry(work, p) for p in sorted(work.rglob("*")) if p.is_file()]
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        read_manifest(work)  # what we wrote must read back
    log(f"exported in {time.perf_counter() - start:.1f} s")


def _manifest(request, paths, loader, dims, graphs, tokenizers, uncond_shape, fused, profiles) -> dict:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "producer": _versions(),
        "source": {
            "checkpoint": str(request.checkpoint),
            "standin": loader.standin,
            "loras": [lora.record() for lora in fused],
            "files": _source_files(paths, request.loras, request.tiny_decoder, request.controlnets),
        },
        "architecture": _facts(dims, loader).to_dict(),
        "shapes": {"height": request.height, "width": request.width},
        "profiles": {name: profile.to_dict() for name, profile in profiles.items()},
        "scheduler": "scheduler/scheduler_config.json",
        "tokenizers": tokenizers,
        "constants": {
            "uncond_image_tokens": {"file": "constants/uncond_image_tokens.npy", "shape": list(uncond_shape)}
        },
        "graphs": {name: graph.to_dict() for name, graph in graphs.items()},
        "controlnets": {spec.name: spec.manifest_entry() for spec in request.controlnets},
    }
