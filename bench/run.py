"""`bench`: prepare the stand-in and packages (cached), run every configuration in its own process, report.

With `--preset`, the stand-in, its fp32 package and an int8 package are built once into the cache folder
(~/.cache/instantid-edge/bench), so anyone can benchmark the real architecture without downloading weights.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..runtime.backends import BACKENDS, backend, cache_dir
from ..runtime.errors import ConfigError
from ..runtime.manifest import read_manifest
from ..runtime.memory import physical_memory
from ..runtime.settings import check_size
from ..tools.defaults import default_face_pack
from ..tools.versions import library_versions
from .report import chart, markdown
from .stages import Config

PEER = "torch"  # the PyTorch reference, timed beside the runtime's backends


@dataclass(frozen=True)
class BenchRequest:
    out: Path
    preset: str | None = None
    checkpoint: Path | None = None
    packages: tuple[Path, ...] = ()
    width: int = 768
    height: int = 768
    steps: int = 4
    guidance: float = 5.0
    backends: tuple[str, ...] = (PEER, *BACKENDS)
    precisions: tuple[str, ...] = ("fp32", "int8")
    repeat: int = 3
    threads: int | None = None
    face_models: Path | None = None
    memory: str = "auto"
    int8_method: str = "weights"


def machine() -> dict:
    from ..runtime.cpu import cpu_info

    cpu = cpu_info()
    memory = physical_memory()
    return {"cpu": cpu.model, "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1) if memory else None,
            "isa": cpu.isa, "saturation_free_int8": cpu.saturation_free_int8,
            "python": platform.python_version()}  # fmt: skip


def _versions() -> dict:
    return library_versions(["onnxruntime", "openvino", "numpy", "torch", "diffusers", "nncf", "instantid-edge"])


def _in_subprocess(job: dict, threads: int | None, timeout: float = 6 * 3600) -> dict:
    """Run one job (a Config, or the GEMM peak) in a worker process of its own, so its peak memory is its own."""
    with tempfile.TemporaryDirectory() as scratch:
        config, result = Path(scratch) / "config.json", Path(scratch) / "result.json"
        config.write_text(json.dumps(job))
        env = dict(os.environ)
        if threads:
            env.update({"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)})
        done = subprocess.run([sys.executable, "-m", "instantid_edge.bench.worker", str(config), str(result)],
                              env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if done.returncode != 0 or not result.exists():
            reason = (
                "killed (out of memory?)" if done.returncode < 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
            )
            return {"error": f"exit code {done.returncode}: {reason}"}
        return json.loads(result.read_text())


def prepare(request: BenchRequest, log) -> tuple[Path | None, dict[str, Path], Path]:
    """(checkpoint, {precision: package}, face pack), building cached stand-in and packages for a preset."""
    face_models = request.face_models or default_face_pack()[0]
    packages = {}
    for path in request.packages:
        manifest = read_manifest(path)
        packages["int8" if "quantization" in manifest.data else "fp32"] = Path(path)
    checkpoint = request.checkpoint
    if request.preset:
        from ..runtime.face import FaceAnalyzer

        dim = FaceAnalyzer(face_models).embedding_dim
        root = cache_dir("bench", f"{request.preset}-{dim}")
        checkpoint = checkpoint or root / "standin"
        if not checkpoint.exists():
            from ..export.standin import build_standin

            log(f"building the {request.preset} stand-in in {checkpoint} (once)")
            build_standin(checkpoint, request.preset, embedding_dim=dim)
        if "fp32" not in packages:
            packages["fp32"] = root / "package-fp32"
            if not packages["fp32"].exists():
                from ..export.package import ExportRequest, export_package

                log(f"exporting it to {packages['fp32']} (once)")
                export_package(ExportRequest(checkpoint, packages["fp32"]), log=log)
        if "int8" in request.precisions and "int8" not in packages:
            packages["int8"] = root / f"package-int8-{request.int8_method}"
            if not packages["int8"].exists():
                from ..quantize.package import QuantizeRequest, quantize_package

                log(f"quantizing it ({request.int8_method}) to {packages['int8']} (once)")
                quantize = QuantizeRequest(packages["fp32"], packages["int8"], method=request.int8_method,
                                           face_models=face_models, calibration_size=request.width)  # fmt: skip
                quantize_package(quantize, log=log)
    return checkpoint, packages, Path(face_models)


def _flops(package: Path, graph: str, width: int, height: int, batch: int) -> int:
    from .flops import graph_flops

    manifest = read_manifest(package)
    info = manifest.graph(graph)
    sizes = manifest.architecture.dim_sizes(height, width, batch if graph in ("identitynet", "unet") else 1)
    shapes = {s.name: tuple(sizes[d] if isinstance(d, str) else d for d in s.shape) for s in info.inputs}
    return graph_flops(info.path(manifest.root, "onnx"), shapes)


def _configs(request: BenchRequest, checkpoint: Path | None, packages: dict[str, Path], face_models: Path) -> list:
    base = {
        "width": request.width, "height": request.height, "steps": request.steps, "guidance": request.guidance,
        "repeat": request.repeat, "threads": request.threads, "face_models": str(face_models), "memory": request.memory,
    }  # fmt: skip
    configs = []
    if PEER in request.backends:
        if checkpoint is None:
            raise ConfigError("the PyTorch peer needs --checkpoint (or --preset)")
        torch_base = base
        if request.memory == "auto":  # fp32 in memory: twice an fp16 checkpoint's size on disk, at worst
            size = sum(p.stat().st_size for p in Path(checkpoint).rglob("*") if p.is_file())
            total = physical_memory()
            torch_base = {**base, "memory": "normal" if total and 2 * size < 0.6 * total else "low"}
        configs.append(
            Config(name="torch fp32", backend=PEER, precision="fp32", checkpoint=str(checkpoint), **torch_base)
        )
    for name in (b for b in request.backends if b != PEER):
        for precision in request.precisions:
            if precision in packages:
                # no compiled-model cache: steady state does not need it, and full-size blobs take ~20 GB of disk
                configs.append(Config(name=f"{name} {precision}", backend=name, precision=precision,
                                      package=str(packages[precision]), **base))  # fmt: skip
    return configs


def _disk_gib(config) -> float | None:
    if config.package:
        manifest = read_manifest(config.package)
        return sum(manifest.graph_bytes(backend(config.backend).format).values()) / 2**30
    if config.checkpoint:
        return sum(p.stat().st_size for p in Path(config.checkpoint).rglob("*") if p.is_file()) / 2**30
    return None


def run_bench(request: BenchRequest, log=print) -> dict:
    check_size(request.height, request.width, neither="the bench needs a size")
    unknown = set(request.backends) - {PEER, *BACKENDS}
    if unknown:
        raise ConfigError(f"unknown backend(s) {sorted(unknown)}; choose from {', '.join((PEER, *BACKENDS))}")
    checkpoint, packages, face_models = prepare(request, log)
    configs = _configs(request, checkpoint, packages, face_models)
    results = {"request": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
               "machine": machine(), "versions": _versions(), "runs": []}  # fmt: skip
    peaks = _in_subprocess({"kind": "gemm", "threads": request.threads}, request.threads).get("gemm", {})
    results["machine"]["gemm"] = peaks
    results["machine"]["gemm_gflops"] = peaks.get("fp32", 0.0)
    log("GEMM peak: " + ", ".join(f"{name} {value:.0f}" for name, value in peaks.items()) + " GFLOP/s")
    batch = 2 if request.guidance > 1 else 1
    fp32 = packages.get("fp32")
    stage_graphs = {"identitynet": "identitynet", "unet": "unet", "decode": "vae_decoder"}
    flops = {}
    if fp32:
        flops = {stage: _flops(fp32, g, request.width, request.height, batch) for stage, g in stage_graphs.items()}
    for config in configs:
        clock = time.perf_counter()
        result = _in_subprocess(asdict(config), request.threads)
        result.setdefault("config", asdict(config))
        if flops:
            result["flops"] = flops
        if (disk := _disk_gib(config)) is not None:
            result["disk_gib"] = disk
        results["runs"].append(result)
        outcome = f"failed: {result['error']}" if "error" in result else "done"
        log(f"{config.name}: {outcome} in {time.perf_counter() - clock:.0f} s")
    request.out.mkdir(parents=True, exist_ok=True)
    (request.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (request.out / "results.md").write_text(markdown(results))
    chart(results, request.out / "chart.png")
    return results
