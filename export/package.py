"""`export`: an InstantID checkpoint -> a model package (ONNX and/or OpenVINO IR + manifest.json).

Graphs are exported one at a time, each from a freshly loaded component that is freed before the next, so
peak memory is that of the largest component. Each exported graph is run on fixed inputs by every backend
of the package and compared with PyTorch; the errors go into the manifest, and an error beyond tolerance
fails the export. The package is written to a hidden folder and renamed into place only when complete.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..runtime.errors import ConfigError, ExportError
from ..runtime.files import atomic_folder, require_new_folder
from ..runtime.manifest import (
    GRAPH_NAMES,
    MANIFEST,
    SCHEMA,
    SCHEMA_VERSION,
    GraphInfo,
    dim_sizes,
    file_entry,
    read_manifest,
    sha256_of,
)
from ..runtime.memory import PeakMemory, release_memory
from ..runtime.session import SessionOptions, open_session
from .checkpoint import CheckpointPaths, locate_checkpoint
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
from .onnx_files import onnx_files, remove_onnx
from .openvino_export import convert_to_openvino
from .reference_models import CheckpointLoader

FORMATS = ("onnx", "openvino")
BACKEND_OF = {"onnx": "onnxruntime", "openvino": "openvino"}
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

    def validate(self) -> ExportRequest:
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ConfigError(f"unknown format(s) {sorted(unknown)}; choose onnx, openvino or both")
        if (self.height is None) != (self.width is None):
            raise ConfigError("give both --height and --width for a static export, or neither for dynamic shapes")
        for value in (self.height, self.width):
            if value is not None and (value % 8 or not 64 <= value <= 4096):
                raise ConfigError(f"--height/--width must be multiples of 8 between 64 and 4096, got {value}")
        require_new_folder(self.out)
        return self


def _residual_channels(identitynet_config) -> tuple[int, ...]:
    channels = list(identitynet_config["block_out_channels"])
    layers = identitynet_config["layers_per_block"]
    down = [channels[0]]
    for i, c in enumerate(channels):
        down += [c] * layers + ([c] if i < len(channels) - 1 else [])
    return (*down, channels[-1])


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
        height=request.height,
        width=request.width,
    )


def _sizes(dims: Dims) -> dict[str, int]:
    return dim_sizes(dims.height or VALIDATION_SIZE, dims.width or VALIDATION_SIZE, batch=2)


def _graph_module(name: str, loader: CheckpointLoader, dims: Dims):
    """(wrapper module, baked facts) for one graph; each call loads its component afresh."""
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
            "loras": [lora.record() for lora in loader.loras],
        }
    vae = loader.vae()
    baked = {"scaling_factor": vae.config.scaling_factor}
    return (VaeDecoderGraph(vae) if name == "vae_decoder" else VaeEncoderGraph(vae)), baked


def _compare(reference: dict[str, np.ndarray], produced: dict[str, np.ndarray]) -> dict:
    error = max(float(np.abs(produced[k] - reference[k]).max()) for k in reference)
    scale = max(float(np.abs(v).max()) for v in reference.values())
    return {"max_abs_error": error, "reference_max_abs": scale, "relative_error": error / max(scale, 1e-12)}


def _export_graph(name: str, loader: CheckpointLoader, dims: Dims, work: Path, formats, log) -> GraphInfo:
    clock = time.perf_counter()
    inputs, outputs = specs(name, dims)
    feeds = example_inputs(inputs, _sizes(dims))
    module, baked = _graph_module(name, loader, dims)
    with torch.inference_mode():
        result = module(*as_torch(feeds))
    result = result if isinstance(result, tuple) else (result,)
    reference = {spec.name: tensor.float().numpy() for spec, tensor in zip(outputs, result, strict=True)}
    folder = work / name
    folder.mkdir()
    onnx_path = folder / "model.onnx"
    export_onnx(module, as_torch(feeds), inputs, outputs, onnx_path)
    del module, result
    release_memory()
    files = {"onnx": [file_entry(work, p) for p in onnx_files(onnx_path)]}
    if "openvino" in formats:
        files["openvino"] = [file_entry(work, p) for p in convert_to_openvino(onnx_path, folder / "openvino_model.xml")]
    if "onnx" not in formats:
        remove_onnx(onnx_path)
        del files["onnx"]
    release_memory()
    graph = GraphInfo(name, "fp32", files, tuple(inputs), tuple(outputs), baked, {})
    validation = {"inputs": f"fixed (seed 0), sizes {_sizes(dims)}"}
    for fmt in files:
        session = open_session(graph, work, SessionOptions(backend=BACKEND_OF[fmt]))
        validation[BACKEND_OF[fmt]] = _compare(reference, session.run(feeds))
        del session
        release_memory()
        if validation[BACKEND_OF[fmt]]["relative_error"] > RELATIVE_TOLERANCE:
            raise ExportError(
                f"{name}: {BACKEND_OF[fmt]} output differs from PyTorch by {validation[BACKEND_OF[fmt]]} "
                f"(tolerance {RELATIVE_TOLERANCE} relative); the export is wrong, please report it"
            )
    log(f"{name}: exported in {time.perf_counter() - clock:.1f} s; " + ", ".join(
        f"{b} max abs error {validation[b]['max_abs_error']:.2e}" for b in validation if b != "inputs"))  # fmt: skip
    return GraphInfo(name, "fp32", files, tuple(inputs), tuple(outputs), baked, validation)


def _copy_tokenizers(loader: CheckpointLoader, work: Path) -> dict:
    result = {}
    for source in loader.tokenizer_folders():
        shutil.copytree(source, work / source.name)
        result[source.name] = sorted(p.name for p in (work / source.name).iterdir())
    return result


def _versions() -> dict:
    names = ["torch", "diffusers", "transformers", "onnx", "onnxruntime", "openvino", "numpy"]
    return {"instantid_edge": __version__} | {n: importlib.metadata.version(n) for n in names}


def _source_files(paths: CheckpointPaths, loras) -> dict[str, str]:
    files = [paths.ip_adapter, *sorted(paths.identitynet.iterdir())]
    files += [paths.base] if paths.base_is_single_file else sorted(p for p in paths.base.rglob("*") if p.is_file())
    files += [lora.path for lora in loras]
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
    with atomic_folder(request.out) as work:
        graphs = {name: _export_graph(name, loader, dims, work, request.formats, log) for name in GRAPH_NAMES}
        (work / "constants").mkdir()
        with torch.inference_mode():
            uncond = loader.resampler()(torch.zeros(1, 1, dims.embedding)).numpy()
        np.save(work / "constants" / "uncond_image_tokens.npy", uncond)
        (work / "scheduler").mkdir()
        (work / "scheduler" / "scheduler_config.json").write_text(json.dumps(loader.scheduler_config, indent=2))
        tokenizers = _copy_tokenizers(loader, work)
        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "producer": _versions(),
            "source": {
                "checkpoint": str(request.checkpoint),
                "standin": loader.standin,
                "loras": [lora.record() for lora in request.loras],
                "files": _source_files(paths, request.loras),
            },
            "architecture": {
                "cross_attention_dim": dims.cross,
                "text_widths": list(dims.text_widths),
                "pooled_dim": dims.pooled,
                "embedding_dim": dims.embedding,
                "num_image_tokens": dims.tokens,
                "text_length": 77,
                "latent_channels": 4,
                "vae_scale_factor": 8,
                "force_zeros_for_empty_prompt": bool(loader.index.get("force_zeros_for_empty_prompt", True)),
            },
            "shapes": {"height": request.height, "width": request.width},
            "scheduler": "scheduler/scheduler_config.json",
            "tokenizers": tokenizers,
            "constants": {
                "uncond_image_tokens": {"file": "constants/uncond_image_tokens.npy", "shape": list(uncond.shape)}
            },
            "graphs": {name: graph.to_dict() for name, graph in graphs.items()},
        }
        manifest["files"] = [file_entry(work, p) for p in sorted(work.rglob("*")) if p.is_file()]
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        read_manifest(work)  # what we wrote must read back
    log(f"exported in {time.perf_counter() - start:.1f} s")
