"""The inference backends: their names, the package format each reads, the graph files, and the cache folder.

One table for every layer (the runtime's sessions, export, quantize, bench, the CLI):

    BACKENDS                    ("onnxruntime", "openvino"): what --backend accepts
    FORMATS                     ("onnx", "openvino"): the formats a package's graphs come in (manifest "files" keys)
    backend(name)               -> Backend: name, format, the graph's files
    backend_for_format(fmt)     -> Backend
    cache_dir(*parts)           instantid-edge's folder in the user cache ($XDG_CACHE_HOME, else ~/.cache)

Each graph of a package lives in its own folder, PKG/<graph>/, as `model.onnx` + `model.onnx.data` (the weights,
in one file) for ONNX Runtime, and as `openvino_model.xml` + `openvino_model.bin` for OpenVINO.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Backend:
    name: str  # what --backend says
    format: str  # the package file format it reads
    model_file: str  # the file a session opens, in PKG/<graph>/
    weights_file: str  # the weights beside it

    def files(self, folder: Path) -> list[Path]:
        """A graph's files of this format in `folder` (the model file first), as the manifest lists them."""
        weights = folder / self.weights_file
        return [folder / self.model_file] + ([weights] if weights.is_file() else [])


_TABLE = (
    Backend("onnxruntime", "onnx", "model.onnx", "model.onnx.data"),
    Backend("openvino", "openvino", "openvino_model.xml", "openvino_model.bin"),
)
BACKENDS = tuple(b.name for b in _TABLE)
FORMATS = tuple(b.format for b in _TABLE)


def backend(name: str) -> Backend:
    for entry in _TABLE:
        if entry.name == name:
            return entry
    raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def backend_for_format(fmt: str) -> Backend:
    for entry in _TABLE:
        if entry.format == fmt:
            return entry
    raise ConfigError(f"unknown package format {fmt!r}; choose one of {', '.join(FORMATS)}")


def cache_dir(*parts: str) -> Path:
    """instantid-edge's folder in the user cache: OpenVINO's compiled models ("openvino"), the demo's stand-in
    and package (the folder itself), the benchmark's stand-ins ("bench")."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "instantid-edge"
    return root.joinpath(*parts)
