"""`quantize`: a model package -> a new int8 or int4 package, calibrated on real pipeline runs, fidelity recorded.

Calibration and held-out inputs are captured by running the runtime pipeline (no torch) on face photos and
prompts. Untouched files are hard-linked from the source package (copied across filesystems); quantized
graphs are written fresh, never through a link. The new package is renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..runtime.backends import BACKENDS, backend, backend_for_format
from ..runtime.cpu import cpu_info
from ..runtime.errors import ConfigError
from ..runtime.files import atomic_folder, require_new_folder
from ..runtime.manifest import MANIFEST, GraphInfo, Manifest, file_entry, read_manifest, sha256_of
from ..runtime.memory import release_memory
from ..runtime.pipeline import InstantIDPipeline
from ..runtime.profiles import apply_profile, package_profiles
from ..runtime.session import SessionOptions, open_session
from ..runtime.settings import GenerationSettings
from ..tools.peak_memory import PeakMemory
from .calibrate import Recording, calibration_faces, calibration_prompts, record
from .fidelity import end_to_end, graph_fidelity, run_all
from .integer_kernels import integer_kernel_record
from .policy import (
    CALIBRATED_CONVOLUTIONS,
    INT4,
    KEEP_FLOAT,
    PRECISION,
    WEIGHT_ONLY,
    convolution_weights,
    policy_for,
)


@dataclass(frozen=True)
class QuantizeRequest:
    package: Path
    out: Path
    method: str = "hybrid"
    graphs: tuple[str, ...] | None = None
    calibration_faces: Path | None = None
    calibration_prompts: Path | None = None
    samples: int = 16  # calibration inputs per calibrated graph
    face_models: Path | None = None
    calibration_size: int = 512  # pixels, square, for packages with dynamic shapes
    steps: int = 4  # denoising steps per calibration image in the quality profile (fast keeps its own)
    profile: str | None = None  # run profile the inputs are captured with; None: fast when the package has it


def _link_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.name != MANIFEST:
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)


def calibration_profile(request: QuantizeRequest, manifest: Manifest) -> str:
    """The profile whose sampling the inputs come from: a fused few-step UNet is calibrated the way it runs."""
    if request.profile is not None:
        return request.profile
    return "fast" if package_profiles(manifest)["fast"].unavailable is None else "quality"


def _calibration_jobs(faces, prompts, request: QuantizeRequest, manifest: Manifest, size: tuple[int, int]):
    profile = calibration_profile(request, manifest)
    base = GenerationSettings(prompt="", steps=request.steps, width=size[0], height=size[1])
    # the quality profile's 30 steps would make calibration 7x slower for inputs that 4 steps already span
    settings = apply_profile(base, manifest, profile, explicit={"steps"} if profile == "quality" else set())
    images = max(1, math.ceil(request.samples / settings.steps))
    calibration = [(faces[i % len(faces)][1], replace(settings, prompt=prompts[i % len(prompts)], seed=i))
                   for i in range(images)]  # fmt: skip
    held_out = (faces[-1][1], replace(settings, prompt=prompts[-1], seed=10_000))
    return calibration, held_out


def _quiet_tools() -> None:
    """NNCF's progress tables and onnxruntime's per-node listings would bury the command's own output."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)


def _quantize_graph(name, action, graph: GraphInfo, source: Path, work: Path, samples, log) -> GraphInfo:
    from .onnx_int8 import quantize_onnx
    from .openvino_int8 import quantize_openvino

    _quiet_tools()
    keep = KEEP_FLOAT.get(name, [])
    files, kernels = {}, {}
    for fmt, entries in graph.files.items():
        for entry in entries:  # drop the links to the fp32 files before writing new ones
            (work / entry["path"]).unlink()
        clock = time.perf_counter()
        target = work / name / backend_for_format(fmt).model_file
        quantize = quantize_onnx if fmt == "onnx" else quantize_openvino
        quantize(source / entries[0]["path"], target, action, samples, keep)
        files[fmt] = [file_entry(work, p) for p in backend_for_format(fmt).files(work / name)]
        kernels[fmt] = integer_kernel_record(fmt, target)
        log(f"{name}: {fmt} {action} ({PRECISION[action]}) in {time.perf_counter() - clock:.1f} s")
    onnx_rewrites = (
        "onnx_weights" if action in WEIGHT_ONLY else "onnx_static" if action == "full" else "onnx_static + onnx_weights"
    )  # our tensor-by-tensor rewrites (onnx_int8.py)
    quantization = {
        "action": action,
        "keep_float": keep,
        "calibration_samples": len(samples) if action in CALIBRATED_CONVOLUTIONS else 0,
        "tools": {
            "onnx": f"instantid-edge {onnx_rewrites}",
            "openvino": "nncf",
        },  # fmt: skip
        "integer_kernels": kernels,
    }
    quantization["convolution_weights"] = {fmt: convolution_weights(action, fmt) for fmt in files}
    if PRECISION[action] == "int4":
        quantization["int4"] = asdict(INT4)
    return replace(graph, precision=PRECISION[action], files=files, quantization=quantization)


def quantize_package(request: QuantizeRequest, log: Callable[[str], None] = print) -> dict:
    with PeakMemory() as peak:
        report = _quantize(request, log)
    report["memory"] = peak.to_dict()
    log(f"{request.method} package written to {request.out}; {peak}")
    return report


def _quantize(request: QuantizeRequest, log) -> dict:
    start = time.perf_counter()
    manifest = read_manifest(request.package)
    require_new_folder(request.out)
    if request.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {request.samples}")
    policy = policy_for(request.method, list(request.graphs) if request.graphs else None, list(manifest.graphs))
    faces, prompts = calibration_faces(request.calibration_faces), calibration_prompts(request.calibration_prompts)
    size = manifest.static_size or (request.calibration_size,) * 2
    calibration_jobs, held_out_job = _calibration_jobs(faces, prompts, request, manifest, size)
    if not any(action in CALIBRATED_CONVOLUTIONS for action in policy.values()):
        calibration_jobs = calibration_jobs[:0]  # weights-only methods need the held-out run alone
    calibration, held_out = _record_inputs(request, manifest, policy, calibration_jobs, held_out_job, log)

    with atomic_folder(request.out) as work:
        _link_tree(request.package, work)
        graphs, fidelity = _quantize_graphs(request, manifest, policy, work, calibration, held_out, log)
        data = dict(manifest.data)
        data["graphs"] = {name: graph.to_dict() for name, graph in graphs.items()}
        data["quantization"] = {
            "method": request.method,
            "measured_on": cpu_info().to_dict(),
            "policy": policy,
            "source_package": {"path": str(request.package), "manifest_sha256": sha256_of(request.package / MANIFEST)},
            "calibration": {
                "faces": [n for n, _ in faces],
                "prompts": len(prompts),
                "images": len(calibration_jobs),
                "size": list(size),
                "profile": calibration_profile(request, manifest),
                "steps": held_out_job[1].steps,
                "guidance": held_out_job[1].guidance,
                "samples": {
                    name: min(len(v), request.samples)
                    for name, v in calibration.feeds.items()
                    if policy.get(name) in CALIBRATED_CONVOLUTIONS
                },
            },  # fmt: skip
            "fidelity": {"graphs": fidelity, "held_out": {"face": faces[-1][0], "prompt": prompts[-1], "seed": 10_000}},
        }
        data["files"] = [file_entry(work, p) for p in sorted(work.rglob("*")) if p.is_file() and p.name != MANIFEST]
        (work / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
        data["quantization"]["fidelity"]["end_to_end"] = _end_to_end(request, graphs, work, held_out_job)
        (work / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
        read_manifest(work)
    log(f"quantized in {time.perf_counter() - start:.1f} s")
    return data["quantization"]


def _record_inputs(request, manifest: Manifest, policy, calibration_jobs, held_out_job, log):
    """(calibration, held-out) feeds of every graph, from runs of the fp32 package's pipeline."""
    name = next(name for name in BACKENDS if backend(name).format in manifest.formats)  # ONNX Runtime first
    # "auto": the full-size fp32 denoiser graphs do not fit 24 GiB together; they then take turns
    pipe = InstantIDPipeline.load(request.package, name, face_models=request.face_models, memory="auto", cache=False)
    calibration, held_out = Recording(), Recording()
    clock = time.perf_counter()
    record(pipe, calibration, calibration_jobs)
    record(pipe, held_out, [held_out_job])
    del pipe  # every session closed before the quantizers load their graphs
    release_memory()
    settings = held_out_job[1]
    log(f"calibration: {len(calibration_jobs)} image(s) and 1 held-out image at {settings.width}x{settings.height}, "
        f"{settings.steps} steps, in {time.perf_counter() - clock:.1f} s")  # fmt: skip
    return calibration, held_out


def _quantize_graphs(request, manifest: Manifest, policy, work: Path, calibration, held_out, log):
    """({name: GraphInfo} with the quantized graphs written into `work`, per-graph fidelity on held-out feeds)."""
    graphs, fidelity = dict(manifest.graphs), {}
    for name, action in policy.items():
        if action == "fp32":
            continue
        samples = calibration.feeds.get(name, [])[: request.samples]
        graphs[name] = _quantize_graph(name, action, manifest.graphs[name], request.package, work, samples, log)
        fidelity[name] = {}
        for fmt in graphs[name].files:
            options = SessionOptions(backend=backend_for_format(fmt).name)
            reference = run_all(open_session(manifest.graphs[name], request.package, options), held_out.feeds[name])
            release_memory()
            produced = run_all(open_session(graphs[name], work, options), held_out.feeds[name])
            release_memory()
            fidelity[name][options.backend] = graph_fidelity(reference, produced)
    return graphs, fidelity


def _end_to_end(request, graphs: dict[str, GraphInfo], work: Path, held_out_job) -> dict:
    """Per backend: the held-out image from the fp32 package against the quantized one."""
    end = {}
    face, settings = held_out_job
    for fmt in sorted({fmt for graph in graphs.values() for fmt in graph.files}):
        name, results = backend_for_format(fmt).name, []
        for source in (request.package, work):  # one after the other: never two full pipelines in memory
            pipe = InstantIDPipeline.load(source, name, face_models=request.face_models, memory="auto", cache=False)
            results.append(pipe(face, settings))
            del pipe
            release_memory()
        end[name] = end_to_end(*results)
    return end
