"""Where one graph's memory goes, measured phase by phase in a process of its own.

For one (package, backend, graph): the process before loading (Python, numpy, the backend's library), the
session opened (ONNX Runtime repacks weights here: its compile-time peak), then for every size and batch asked
for, OpenVINO's compilation for that shape (its compile-time peak) and two runs. Each phase records its own
peak RSS (the kernel's high-water mark, reset before the phase) and the anonymous and file-backed RSS after it:

    weights mapped       file-backed RSS the session holds after its first run (weights read through mmap)
    weights copied       anonymous RSS the session holds after opening/compiling (repacked/prepacked copies)
    load peak            the highest RSS while opening or compiling, above the process before it
    activations          a run's peak RSS above the RSS just before it (intermediate tensors, scratch buffers)
    retained             anonymous RSS the runs leave allocated after they return (arenas, planned buffers)

`bench-memory` runs one job per graph (python -m instantid_edge.bench.worker) and tabulates them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from ..runtime.manifest import GraphInfo, read_manifest
from ..runtime.session import Levers, SessionOptions, open_session
from ..tools.peak_memory import PeakMemory, memory_now

BATCHED = ("identitynet", "unet")  # batch 2 with CFG; every other graph runs batch 1
GRAPHS = ("text_encoder", "text_encoder_2", "image_proj", "identitynet", "unet", "vae_decoder")
_SCALARS = {"timestep": 500.0, "conditioning_scale": 0.8, "ip_scale": 0.8}
_GUARD_GIB = 1.0  # stop a job before the machine runs out: others share it


def synthetic_feeds(graph: GraphInfo, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the right shapes and plausible ranges (the values do not change memory or time)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in graph.inputs:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in spec.shape)
        if spec.dtype == "int64":
            feeds[spec.name] = np.zeros(shape, np.int64)
        elif spec.name in _SCALARS:
            feeds[spec.name] = np.full(shape, _SCALARS[spec.name], np.float32)
        elif spec.name == "controlnet_cond":
            feeds[spec.name] = rng.random(shape, dtype=np.float32)
        elif spec.name == "time_ids":
            feeds[spec.name] = np.tile(np.float32([dims["height"], dims["width"], 0, 0, dims["height"],
                                                   dims["width"]]), (shape[0], 1))  # fmt: skip
        else:
            feeds[spec.name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    return feeds


def _available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) / 2**20 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


class _Guard:
    """Ends the process (exit code 3) when the machine's available memory falls under _GUARD_GIB, so that a
    measurement that does not fit is recorded as such instead of waking the kernel's OOM killer."""

    def __enter__(self):
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self):
        import os
        import sys

        while not self._stop.wait(0.05):
            available = _available_gib()
            if available is not None and available < _GUARD_GIB:
                print(f"stopped: {available:.2f} GiB left on the machine at {memory_now()}", file=sys.stderr)
                os._exit(3)

    def __exit__(self, *exc):
        self._stop.set()


def _phase(function) -> tuple[object, dict]:
    before = memory_now()
    with PeakMemory(reset=True, interval=0.05) as peak:
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
    after = memory_now()
    return result, {"seconds": round(seconds, 3), "before": _rounded(before), "peak_rss": round(peak.rss_gib, 3),
                    "peak_anon": round(peak.anon_gib, 3), "after": _rounded(after)}  # fmt: skip


def _rounded(values: dict) -> dict:
    return {k: round(v, 3) for k, v in values.items()}


def measure_graph(job: dict) -> dict:
    """One graph at one size and batch; `job`: package, backend, graph, height, width, batch, levers, threads,
    cache_dir (OpenVINO's compiled-model cache: a second job with the same folder loads from it)."""
    manifest = read_manifest(job["package"])
    graph = manifest.graph(job["graph"])
    cache = Path(job["cache_dir"]) if job.get("cache_dir") else None
    options = SessionOptions(job["backend"], job.get("threads"), cache, "f32", Levers(**job.get("levers", {})))
    dims = manifest.architecture.dim_sizes(job.get("height") or 64, job.get("width") or 64, job.get("batch", 1))
    feeds = synthetic_feeds(graph, dims)
    result = {"job": job, "process": _rounded(memory_now())}
    with _Guard():
        session, result["open"] = _phase(lambda: open_session(graph, manifest.root, options))
        if hasattr(session, "compile_for"):
            _, result["compile"] = _phase(lambda: session.compile_for({k: v.shape for k, v in feeds.items()}))
        _, result["first"] = _phase(lambda: session.run(feeds))
        _, result["steady"] = _phase(lambda: session.run(feeds))
    result["weights_on_disk_gib"] = round(manifest.graph_bytes(_format(job["backend"]))[job["graph"]] / 2**30, 3)
    return result


def _format(backend_name: str) -> str:
    from ..runtime.backends import backend

    return backend(backend_name).format


def summarize(result: dict) -> dict:
    """A table row (GiB) from one job's phases: see the module docstring for the columns."""
    job, base = result["job"], result["process"]
    load = [result["open"]] + ([result["compile"]] if "compile" in result else [])
    ready = load[-1]["after"]
    runs = (result["first"], result["steady"])
    return {
        "graph": job["graph"], "backend": job["backend"], "height": job.get("height"), "width": job.get("width"),
        "batch": job.get("batch", 1), "weights_on_disk": result["weights_on_disk_gib"],
        "process": base["rss"],
        "weights_mapped": round(result["first"]["after"]["file"] - base["file"], 3),
        "weights_copied": round(ready["anon"] - base["anon"], 3),
        "load_peak": round(max(phase["peak_rss"] for phase in load) - base["rss"], 3),
        "activations": round(max(run["peak_rss"] for run in runs) - ready["rss"], 3),
        "retained": round(result["steady"]["after"]["anon"] - ready["anon"], 3),
        "peak": round(max(phase["peak_rss"] for phase in (*load, *runs)), 3),
        "seconds": result["steady"]["seconds"],
    }  # fmt: skip


def markdown_table(rows: list[dict]) -> str:
    head = ("| precision | graph | backend | size | batch | on disk | mapped | copied | load peak | activations "
            "| retained | process peak | run s |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['width']}x{r['height']}" if r["height"] else "-"
        lines.append(f"| {r.get('precision', '')} | {r['graph']} | {r['backend']} | {size} | {r['batch']} | "
                     f"{r['weights_on_disk']:.2f} | {r['weights_mapped']:.2f} | {r['weights_copied']:.2f} | "
                     f"{r['load_peak']:.2f} | {r['activations']:.2f} | {r['retained']:.2f} | {r['peak']:.2f} | "
                     f"{r['seconds']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _jobs(package: Path, backend_name: str, graph: str, sizes, batches) -> list[dict]:
    info = read_manifest(package).graph(graph)
    sized = any(isinstance(d, str) and "height" in d for spec in info.inputs for d in spec.shape)
    if not sized:
        return [{"graph": graph}]
    return [{"graph": graph, "height": h, "width": w, "batch": b}
            for h, w in sizes for b in (batches if graph in BATCHED else [1])]  # fmt: skip


def run_breakdown(packages: list[Path], backends: list[str], graphs: list[str], sizes: list[tuple[int, int]],
                  batches: list[int], levers: Levers, threads: int | None, log=print,
                  cache_dir: Path | None = None) -> dict:  # fmt: skip
    """Every (package, backend, graph, size, batch) in a process of its own."""
    from dataclasses import asdict

    from .run import _in_subprocess

    results = {"levers": asdict(levers), "jobs": [], "rows": []}
    for package in packages:
        precision = read_manifest(package).data.get("quantization", {}).get("method", "fp32")
        for backend_name in backends:
            for graph in graphs:
                for shape in _jobs(package, backend_name, graph, sizes, batches):
                    job = {"kind": "memory", "package": str(package), "backend": backend_name, **shape,
                           "levers": asdict(levers), "threads": threads,
                           "cache_dir": str(cache_dir) if cache_dir else None}  # fmt: skip
                    clock = time.perf_counter()
                    result = _in_subprocess(job, threads)
                    result.setdefault("job", job)
                    result["precision"] = precision
                    results["jobs"].append(result)
                    label = f"{precision} {backend_name} {graph} {shape.get('height')}x{shape.get('width')}" \
                            f" batch {shape.get('batch', 1)}"  # fmt: skip
                    if "error" in result:
                        log(f"{label}: {result['error']}")
                        continue
                    results["rows"].append({**summarize(result), "precision": precision})
                    log(f"{label}: done in {time.perf_counter() - clock:.0f} s")
    return results
