"""One Session interface over ONNX Runtime and OpenVINO: feed numpy arrays by name, get numpy arrays by name.

Backend tuning stays in this file. OpenVINO compiles each graph for the exact input shapes it is run with
(static shapes are faster on CPU), caches compiled blobs in `cache_dir` so a second start is fast, and runs
in f32 unless told otherwise: on CPUs with AVX-512 bf16 its default would silently be bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .backends import backend
from .errors import PackageError
from .manifest import GraphInfo, TensorSpec


class Session(Protocol):
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class SessionOptions:
    backend: str = "onnxruntime"
    threads: int | None = None
    cache_dir: Path | None = None  # OpenVINO compiled-model cache
    precision_hint: str = "f32"  # OpenVINO inference precision: f32 or bf16


def _check_io(graph: GraphInfo, actual: list[tuple[str, str, tuple]], kind: str, path: Path) -> None:
    """The graph file must have the manifest's names, dtypes and fixed dims (a re-exported file may not)."""
    expected = graph.inputs if kind == "inputs" else graph.outputs
    if [name for name, _, _ in actual] != [spec.name for spec in expected]:
        raise PackageError(
            f"{path}: {kind} are {[n for n, _, _ in actual]}, the manifest says {[s.name for s in expected]}; "
            "the package was altered or mixes exports"
        )
    for (name, dtype, shape), spec in zip(actual, expected, strict=True):
        fixed_ok = len(shape) == len(spec.shape) and all(
            isinstance(e, str) or a is None or a == e for a, e in zip(shape, spec.shape, strict=True)
        )
        if dtype != spec.dtype or not fixed_ok:
            raise PackageError(
                f"{path}: {kind[:-1]} {name} is {dtype}{list(shape)}, the manifest says {spec.dtype}{list(spec.shape)}"
            )


class OrtSession:
    def __init__(self, graph: GraphInfo, path: Path, options: SessionOptions):
        import onnxruntime as ort

        settings = ort.SessionOptions()
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            settings.intra_op_num_threads = options.threads
        settings.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt or missing files
            raise PackageError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        types = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16"}

        def described(args):
            return [
                (a.name, types.get(a.type, a.type), tuple(d if isinstance(d, int) else None for d in a.shape))
                for a in args
            ]

        _check_io(graph, described(self._session.get_inputs()), "inputs", path)
        _check_io(graph, described(self._session.get_outputs()), "outputs", path)
        self.name, self.inputs, self.outputs = graph.name, graph.inputs, graph.outputs
        self._output_names = [spec.name for spec in graph.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._session.run(self._output_names, feeds), strict=True))


class OvSession:
    def __init__(self, graph: GraphInfo, path: Path, options: SessionOptions):
        import openvino as ov

        self._core = ov.Core()
        if options.cache_dir:
            Path(options.cache_dir).mkdir(parents=True, exist_ok=True)
            self._core.set_property({"CACHE_DIR": str(options.cache_dir)})
        self._path = path
        try:
            model = self._core.read_model(str(path))
        except Exception as exc:  # openvino raises RuntimeError subclasses for unreadable IR
            raise PackageError(f"OpenVINO cannot load {path}: {exc}") from exc
        types = {"f32": "float32", "i64": "int64", "f16": "float16"}

        def described(ports):
            return [
                (
                    port.get_any_name(),
                    types.get(port.get_element_type().get_type_name(), str(port.get_element_type())),
                    tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape()),
                )
                for port in ports
            ]

        _check_io(graph, described(model.inputs), "inputs", path)
        _check_io(graph, described(model.outputs), "outputs", path)
        self.name, self.inputs, self.outputs = graph.name, graph.inputs, graph.outputs
        self._config = {"INFERENCE_PRECISION_HINT": options.precision_hint, "PERFORMANCE_HINT": "LATENCY"}
        if options.threads:
            self._config["INFERENCE_NUM_THREADS"] = options.threads
        self._compiled: dict[tuple, object] = {}

    def _compiled_for(self, feeds: dict[str, np.ndarray]):
        key = tuple((name, feeds[name].shape) for name in sorted(feeds))
        if key not in self._compiled:
            model = self._core.read_model(str(self._path))
            model.reshape({name: list(array.shape) for name, array in feeds.items()})
            self._compiled[key] = self._core.compile_model(model, "CPU", self._config)
        return self._compiled[key]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._compiled_for(feeds)(feeds)
        return {spec.name: np.asarray(results[i]) for i, spec in enumerate(self.outputs)}


_SESSION_TYPES = {"onnxruntime": OrtSession, "openvino": OvSession}  # by backends.BACKENDS name


def open_session(graph: GraphInfo, root: Path, options: SessionOptions) -> Session:
    path = graph.path(Path(root), backend(options.backend).format)
    if not path.is_file():
        raise PackageError(
            f"graph file {path} is missing; the package is incomplete (check it with `instantid-edge inspect`)"
        )
    return _SESSION_TYPES[options.backend](graph, path, options)
