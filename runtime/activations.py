"""How many bytes of intermediate tensors a graph needs at once for given input shapes (static liveness).

The graph file a backend runs (ONNX for ONNX Runtime: attention as MatMul-Softmax-MatMul, whose scores grow with
the square of the latent area; OpenVINO IR: fused attention) is read with OpenVINO (a runtime dependency, which
reads ONNX too), reshaped to the run's shapes, and walked in execution order: each node's outputs become live when
it runs and die after their last consumer. The largest sum of live tensors is the graph's activation need. Weights
are not read (memory-mapped, untouched), so this costs seconds, not memory; results are cached per graph file
(its sha256 in the manifest) and shapes, in memory and in the user cache.

What a backend really allocates differs from this by a factor of its own (ONNX Runtime's planner and im2col
buffers, OpenVINO's in-place reuse); memory_estimate.py holds the measured factors.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from .backends import cache_dir
from .files import atomic_path
from .manifest import GraphInfo

_SKIPPED = ("Constant", "Parameter", "Result")
_MEMORY: dict[str, int] = {}


def _key(graph: GraphInfo, fmt: str, shapes: dict[str, tuple[int, ...]]) -> str:
    digest = graph.files[fmt][0]["sha256"][:16]
    return f"{graph.name}-{fmt}-{digest}-" + "-".join(f"{n}={'x'.join(map(str, s))}" for n, s in sorted(shapes.items()))


def _cache_file() -> Path:
    return cache_dir("memory", "activations.json")


def _read_cache() -> dict[str, int]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(_cache_file().read_text())
    return {}


def _write_cache(key: str, value: int) -> None:
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run the same few seconds
        entries = {**_read_cache(), key: value}
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(entries, indent=0))


def live_peak_bytes(model) -> int:
    """The largest sum of tensors alive at once while `model` (an openvino.Model, static shapes) runs in order."""
    ops = model.get_ordered_ops()
    last_use: dict[str, int] = {}
    for position, op in enumerate(ops):
        for port in op.inputs():
            last_use[port.get_source_output().get_node().get_name()] = position
    live = peak = 0
    alive: dict[str, int] = {}
    for position, op in enumerate(ops):
        if op.get_type_name() in _SKIPPED:
            continue
        size = 0
        for output in op.outputs():
            shape = output.get_partial_shape()
            if shape.is_dynamic:
                raise ValueError(f"{op.get_friendly_name()} has a dynamic output shape {shape}")
            size += int(np.prod([d.get_length() for d in shape], dtype=np.int64)) * output.get_element_type().size
        alive[op.get_name()] = size
        live += size
        peak = max(peak, live)
        for port in op.inputs():
            source = port.get_source_output().get_node().get_name()
            if last_use.get(source) == position and source in alive:
                live -= alive.pop(source)
    return peak


def activation_bytes(graph: GraphInfo, root: Path, fmt: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """Static liveness peak of `graph`'s `fmt` file at these input shapes (cached)."""
    key = _key(graph, fmt, shapes)
    if key in _MEMORY:
        return _MEMORY[key]
    cached = _read_cache().get(key)
    if cached is None:
        import openvino as ov

        model = ov.Core().read_model(str(graph.path(root, fmt)))
        model.reshape({name: list(shape) for name, shape in shapes.items()})
        cached = live_peak_bytes(model)
        del model
        _write_cache(key, cached)
    _MEMORY[key] = cached
    return cached
