"""One Session interface over ONNX Runtime and OpenVINO: feed numpy arrays by name, get numpy arrays by name.

Backend tuning stays in this file. OpenVINO compiles each graph for the exact input shapes it is run with
(static shapes are faster on CPU), caches compiled blobs in `cache_dir` so a second start is fast, and runs
in f32 unless told otherwise: on CPUs with AVX-512 bf16 its default would silently be bf16. It keeps one
compiled shape per graph: every compiled model holds its own repacked copy of the weights, so the IR's
mapped weight pages are dropped from memory once it is compiled (pages it does read come back from the file).

The allocator and loading switches each backend offers (`Levers`) are measured in bench/RESULTS.md ("Where
the memory goes"); the defaults are the measured best.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .backends import backend
from .errors import ConfigError, PackageError
from .manifest import GraphInfo, TensorSpec
from .memory import dropping_mapped_pages, unwritten_maps


class Session(Protocol):
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def compile_for(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Get ready for calls at these input shapes (OpenVINO compiles for exact shapes; others need nothing)."""


@dataclass(frozen=True)
class Levers:
    """The backends' memory and loading switches, in one place: what each sets is in the methods below, what each
    costs and saves at the small stand-in's 768x768 is in bench/RESULTS.md ("The levers"); the defaults are
    the measured best. `bench-memory --lever NAME=VALUE` measures another setting.
    """

    ort_arena: bool = True  # ONNX Runtime's CPU arena (enable_cpu_mem_arena): keeps freed blocks for reuse
    ort_memory_pattern: bool = True  # plan a shape's intermediate tensors into one block (enable_mem_pattern)
    ort_prepacking: bool = True  # repack constant weights for the kernels at load (session.disable_prepacking)
    ort_initializers_outside_arena: bool = False  # session.use_device_allocator_for_initializers
    ort_drop_mapped: bool = False  # drop the weights read in place from the mapped data file while a call runs
    ov_mmap: bool = True  # OpenVINO reads the IR's weights through a memory map (ENABLE_MMAP)
    ov_streams: int = 0  # OpenVINO NUM_STREAMS; 0: what the LATENCY hint picks (one stream)
    ov_drop_mapped: bool = True  # drop the IR's mapped weight pages while compiling and after (re-read if used)

    def ort_session(self) -> dict[str, bool]:
        """onnxruntime.SessionOptions attributes."""
        return {"enable_cpu_mem_arena": self.ort_arena, "enable_mem_pattern": self.ort_memory_pattern}

    def ort_config(self) -> dict[str, str]:
        """onnxruntime session config entries (add_session_config_entry)."""
        return {
            "session.disable_prepacking": "0" if self.ort_prepacking else "1",
            "session.use_device_allocator_for_initializers": "1" if self.ort_initializers_outside_arena else "0",
        }

    def ov_core(self) -> dict:
        """openvino.Core properties (reading the model)."""
        return {"ENABLE_MMAP": self.ov_mmap}

    def ov_compile(self) -> dict:
        """compile_model properties, beside the precision, threads and the LATENCY hint."""
        return {"NUM_STREAMS": self.ov_streams} if self.ov_streams else {}

    @classmethod
    def parse(cls, items: list[str]) -> Levers:
        """From NAME=VALUE strings (bench-memory's --lever): 0/1 for switches, a count for ov_streams."""
        values = {}
        for item in items:
            name, _, value = item.partition("=")
            if name not in cls.__dataclass_fields__ or not value.isdigit():
                raise ConfigError(f"--lever takes NAME=VALUE with NAME one of {', '.join(cls.__dataclass_fields__)}")
            default = getattr(cls(), name)
            values[name] = int(value) if type(default) is int else value == "1"
        return cls(**values)


@dataclass(frozen=True)
class SessionOptions:
    backend: str = "onnxruntime"
    threads: int | None = None
    cache_dir: Path | None = None  # OpenVINO compiled-model cache
    precision_hint: str = "f32"  # OpenVINO inference precision: f32 or bf16
    levers: Levers = Levers()


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


# seconds between drops during an ONNX Runtime call: a call reads its in-place weights over seconds at full size, and
# each drop reads /proc/self/maps (ONNX Runtime maps each weight apart: 2,700 maps for the full UNet)
ORT_DROP_EVERY = 1.0


class OrtSession:
    def __init__(self, graph: GraphInfo, path: Path, options: SessionOptions, weights: tuple[Path, ...] = ()):
        import onnxruntime as ort

        settings = ort.SessionOptions()
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            settings.intra_op_num_threads = options.threads
        settings.log_severity_level = 3
        for name, value in options.levers.ort_session().items():
            setattr(settings, name, value)
        for key, value in options.levers.ort_config().items():
            settings.add_session_config_entry(key, value)
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
        # ONNX Runtime maps the external data file and reads the weights it did not prepack in place, every call
        self._drop_mapped = {path: unwritten_maps(path) for path in weights} if options.levers.ort_drop_mapped else {}

    def compile_for(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Nothing to do: ONNX Runtime plans each call at its shapes."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with contextlib.ExitStack() as dropping:
            for weights, unwritten in self._drop_mapped.items():
                dropping.enter_context(dropping_mapped_pages(weights, ORT_DROP_EVERY, unwritten))
            outputs = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs, strict=True))


class OvSession:
    def __init__(self, graph: GraphInfo, path: Path, options: SessionOptions, weights: tuple[Path, ...] = ()):
        import openvino as ov

        self._core = ov.Core()
        self._core.set_property(options.levers.ov_core())
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
        self._config = {"INFERENCE_PRECISION_HINT": options.precision_hint, "PERFORMANCE_HINT": "LATENCY",
                        **options.levers.ov_compile()}  # fmt: skip
        if options.threads:
            self._config["INFERENCE_NUM_THREADS"] = options.threads
        self._shapes: tuple | None = None
        self._compiled = None
        self._drop_mapped = weights if options.levers.ov_drop_mapped else ()

    def compile_for(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Compile for these input shapes (a run at other shapes compiles again, dropping this one first)."""
        key = tuple((name, tuple(shapes[name])) for name in sorted(shapes))
        if key != self._shapes:
            self._compiled = self._shapes = None  # the old compiled weights go before the new ones come
            model = self._core.read_model(str(self._path))
            model.reshape({name: list(shape) for name, shape in shapes.items()})
            # OpenVINO keeps the file mapped; an int8 model holds its own copy of it all
            with contextlib.ExitStack() as dropping:
                for weights in self._drop_mapped:
                    dropping.enter_context(dropping_mapped_pages(weights))
                self._compiled = self._core.compile_model(model, "CPU", self._config)
                self._shapes = key
                del model

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.compile_for({name: array.shape for name, array in feeds.items()})
        results = self._compiled(feeds)
        return {spec.name: np.asarray(results[i]) for i, spec in enumerate(self.outputs)}


_SESSION_TYPES = {"onnxruntime": OrtSession, "openvino": OvSession}  # by backends.BACKENDS name


def open_session(graph: GraphInfo, root: Path, options: SessionOptions) -> Session:
    path = graph.path(Path(root), backend(options.backend).format)
    if not path.is_file():
        raise PackageError(
            f"graph file {path} is missing; the package is incomplete (check it with `instantid-edge inspect`)"
        )
    weights = graph.weight_paths(Path(root), backend(options.backend).format)
    return _SESSION_TYPES[options.backend](graph, path, options, weights)
