"""`bench`: prepare the stand-in and packages (cached), run every configuration in its own process, report.

With `--preset`, the stand-in, its fp32 package and an int8 package are built once into the cache folder
(~/.cache/instantid-edge/bench), so anyone can benchmark the real architecture without downloading weights.

With `--profile fast` the packages run as their manifest's profile says (few-step distillation, no CFG,
TAESD-XL), beside the PyTorch reference at upstream defaults (30 Euler steps, CFG 5, full VAE), whose
end-to-end time is computed from its measured stages and labelled so, and PyTorch on the same fast settings
(given the package's LoRA and decoder files). With `--preset`, the distilled packages are built and cached
too, from the stand-ins of `standin --fast-path` (`--distillation`, default lightning-4step).
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
from ..runtime.manifest import DECODER_GRAPHS, RunProfile, read_manifest
from ..runtime.memory import physical_memory
from ..runtime.profiles import UPSTREAM, apply_profile
from ..runtime.settings import GenerationSettings, check_size
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
    steps: int | None = None  # None: 4, or the profile's; given with a profile, it overrides the profile's
    guidance: float = 5.0
    backends: tuple[str, ...] = (PEER, *BACKENDS)
    precisions: tuple[str, ...] = ("fp32", "int8")
    repeat: int = 3
    threads: int | None = None
    face_models: Path | None = None
    memory: str = "auto"
    int8_method: str = "weights"
    profile: str | None = None  # fast | quality: the packages' run profile
    loras: tuple[Path, ...] = ()  # for the PyTorch peer on the profile's settings
    tiny_decoder: Path | None = None
    distillation: str = "lightning-4step"  # with --preset and --profile fast: which stand-in LoRA to fuse


@dataclass(frozen=True)
class PeerFiles:
    """What the PyTorch peer on a profile's settings loads beside the checkpoint, as the packages fused them."""

    loras: tuple[Path, ...] = ()
    tiny_decoder: Path | None = None


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


def profile_fields(package: Path, profile: str, steps: int | None = None) -> dict:
    """The sampling fields of a package's run profile, resolved as generate resolves them (an error says why
    `fast` is unavailable); `steps`, when given, overrides the profile's as generate's --steps does."""
    given = GenerationSettings(prompt="-", **({"steps": steps} if steps else {}))
    explicit = {"steps"} if steps else set()
    settings = apply_profile(given, read_manifest(package), profile, explicit).validate()
    return {name: getattr(settings, name) for name in RunProfile.settings_fields()}


def _fast_path_files(checkpoint: Path, preset: str, dim: int, distillation: str, log) -> tuple[Path, Path]:
    """(the LoRA stand-in, the TAESD-XL stand-in) of a cached stand-in, written beside it once."""
    from ..export.distillations import PROFILES
    from ..export.fast_path_standin import TINY_DECODER_FILE, release_path, write_fast_path

    folder = checkpoint / "fast-path"
    if not folder.exists():
        from ..export.architecture import architecture
        from ..export.standin import meta_models
        from ..runtime.files import atomic_folder

        log(f"writing the fast-path stand-ins into {folder} (once)")
        with atomic_folder(folder) as work:
            work.rmdir()  # write_fast_path makes its own folder
            write_fast_path(work, meta_models(architecture(preset, dim)).unet, preset, 0)
    if distillation not in PROFILES:
        raise ConfigError(f"unknown --distillation {distillation!r}; choose one of {', '.join(PROFILES)}")
    lora = release_path(folder, PROFILES[distillation])
    if not lora.exists():
        raise ConfigError(f"{lora} has no stand-in (standin --fast-path writes {', '.join(sorted(PROFILES))} only)")
    return lora, folder / TINY_DECODER_FILE


def prepare(request: BenchRequest, log) -> tuple[Path | None, dict[str, Path], Path, PeerFiles]:
    """(checkpoint, {precision: package}, face pack, what the PyTorch peer on a profile loads), building the
    cached stand-in and packages for a preset."""
    face_models = request.face_models or default_face_pack()[0]
    packages = {}
    for path in request.packages:
        manifest = read_manifest(path)
        packages["int8" if "quantization" in manifest.data else "fp32"] = Path(path)
    checkpoint, peer = request.checkpoint, PeerFiles(request.loras, request.tiny_decoder)
    if request.preset:
        checkpoint, peer = _preset_packages(request, checkpoint, packages, face_models, peer, log)
    return checkpoint, packages, Path(face_models), peer


def _preset_packages(request: BenchRequest, checkpoint, packages: dict, face_models, peer: PeerFiles, log):
    """The cached stand-in and the packages not given, built once; (checkpoint, peer files)."""
    from ..runtime.face import FaceAnalyzer

    dim = FaceAnalyzer(face_models).embedding_dim
    root = cache_dir("bench", f"{request.preset}-{dim}")
    checkpoint = checkpoint or root / "standin"
    if not checkpoint.exists():
        from ..export.standin import build_standin

        log(f"building the {request.preset} stand-in in {checkpoint} (once)")
        build_standin(checkpoint, request.preset, embedding_dim=dim)
    export_options, suffix = {}, ""
    if request.profile == "fast":
        from ..export.lora import LoraSpec

        lora, tiny = _fast_path_files(checkpoint, request.preset, dim, request.distillation, log)
        export_options, suffix = {"loras": (LoraSpec(lora),), "tiny_decoder": tiny}, f"-{request.distillation}"
        peer = PeerFiles(request.loras or (lora,), request.tiny_decoder or tiny)
    if "fp32" not in packages:
        packages["fp32"] = root / f"package-fp32{suffix}"
        if not packages["fp32"].exists():
            from ..export.package import ExportRequest, export_package

            log(f"exporting it to {packages['fp32']} (once)")
            export_package(ExportRequest(checkpoint, packages["fp32"], **export_options), log=log)
    if "int8" in request.precisions and "int8" not in packages:
        packages["int8"] = root / f"package-int8-{request.int8_method}{suffix}"
        if not packages["int8"].exists():
            from ..quantize.package import QuantizeRequest, quantize_package

            log(f"quantizing it ({request.int8_method}) to {packages['int8']} (once)")
            quantize = QuantizeRequest(packages["fp32"], packages["int8"], method=request.int8_method,
                                       face_models=face_models, calibration_size=request.width)  # fmt: skip
            quantize_package(quantize, log=log)
    return checkpoint, peer


def _flops(package: Path, graph: str, width: int, height: int, batch: int) -> int:
    from .flops import graph_flops

    manifest = read_manifest(package)
    info = manifest.graph(graph)
    sizes = manifest.architecture.dim_sizes(height, width, batch if graph in ("identitynet", "unet") else 1)
    shapes = {s.name: tuple(sizes[d] if isinstance(d, str) else d for d in s.shape) for s in info.inputs}
    return graph_flops(info.path(manifest.root, "onnx"), shapes)


def _configs(request: BenchRequest, checkpoint, packages: dict[str, Path], face_models: Path, peer: PeerFiles,
             log) -> list:  # fmt: skip
    base = {
        "width": request.width, "height": request.height, "steps": request.steps or 4, "guidance": request.guidance,
        "repeat": request.repeat, "threads": request.threads, "face_models": str(face_models), "memory": request.memory,
    }  # fmt: skip
    profiled = {}  # precision -> the package's profile fields
    if request.profile:
        profiled = {p: profile_fields(path, request.profile, request.steps) for p, path in packages.items()}
    configs = []
    if PEER in request.backends:
        if checkpoint is None:
            raise ConfigError("the PyTorch peer needs --checkpoint (or --preset)")
        torch_base = base
        if request.memory == "auto":  # fp32 in memory: twice an fp16 checkpoint's size on disk, at worst
            size = sum(p.stat().st_size for p in Path(checkpoint).rglob("*") if p.is_file())
            total = physical_memory()
            torch_base = {**base, "memory": "normal" if total and 2 * size < 0.6 * total else "low"}
        torch_base = {**torch_base, "backend": PEER, "precision": "fp32", "checkpoint": str(checkpoint)}
        configs += _peer_configs(request, torch_base, next(iter(profiled.values()), None), peer, log)
    for name in (b for b in request.backends if b != PEER):
        for precision in request.precisions:
            if precision in packages:
                # no compiled-model cache: steady state does not need it, and full-size blobs take ~20 GB of disk
                label = f"{name} {precision}" + (f" {request.profile}" if request.profile else "")
                configs.append(Config(name=label, backend=name, precision=precision, package=str(packages[precision]),
                                      **{**base, **profiled.get(precision, {})}))  # fmt: skip
    return configs


def _peer_configs(request: BenchRequest, torch_base: dict, fields: dict | None, peer: PeerFiles, log) -> list:
    if not request.profile:
        return [Config(name=f"{PEER} fp32", **torch_base)]
    # the peer the targets are set against: upstream InstantID's defaults, end to end computed from its stages
    configs = [Config(name=f"{PEER} fp32 upstream defaults", **{**torch_base, **UPSTREAM.settings()},
                      computed_end_to_end=True)]  # fmt: skip
    if fields and (fields["decoder"] == "full" or peer.tiny_decoder):
        files = {"loras": tuple(str(p) for p in peer.loras),
                 "tiny_decoder": str(peer.tiny_decoder) if peer.tiny_decoder else None}  # fmt: skip
        configs.append(Config(name=f"{PEER} fp32 {request.profile}", **{**torch_base, **fields, **files}))
    else:
        log(f"PyTorch on the {request.profile} settings needs --tiny-decoder (and --lora): skipped")
    return configs


def _stage_flops(fp32: Path, config: Config, counted: dict) -> dict[str, int]:
    """FLOPs of one IdentityNet and UNet call at the config's batch (2 with CFG) and of its decoder graph, each
    counted once per run (`counted`: (graph, batch) -> FLOPs)."""
    batch = 2 if config.guidance > 1 else 1
    graphs = {"identitynet": "identitynet", "unet": "unet", "decode": DECODER_GRAPHS[config.decoder]}
    for graph in graphs.values():
        if (graph, batch) not in counted:
            counted[graph, batch] = _flops(fp32, graph, config.width, config.height, batch)
    return {stage: counted[graph, batch] for stage, graph in graphs.items()}


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
    checkpoint, packages, face_models, peer = prepare(request, log)
    configs = _configs(request, checkpoint, packages, face_models, peer, log)
    results = {"request": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
               "machine": machine(), "versions": _versions(), "runs": []}  # fmt: skip
    peaks = _in_subprocess({"kind": "gemm", "threads": request.threads}, request.threads).get("gemm", {})
    results["machine"]["gemm"] = peaks
    results["machine"]["gemm_gflops"] = peaks.get("fp32", 0.0)
    log("GEMM peak: " + ", ".join(f"{name} {value:.0f}" for name, value in peaks.items()) + " GFLOP/s")
    fp32, counted = packages.get("fp32"), {}
    for config in configs:
        clock = time.perf_counter()
        result = _in_subprocess(asdict(config), request.threads)
        result.setdefault("config", asdict(config))
        if fp32:
            result["flops"] = _stage_flops(fp32, config, counted)
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
