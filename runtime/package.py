"""A model package opened for inference: sessions created on first use, constants and configs loaded."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from .cpu import IntegerKernelWarning, package_cpu_warning
from .errors import ConfigError, PackageError
from .manifest import GRAPH_NAMES, Manifest, read_manifest
from .session import FORMAT_OF, Session, SessionOptions, open_session

REQUIRED_GRAPHS = tuple(name for name in GRAPH_NAMES if name != "vae_encoder")
_WARNED: set[tuple[str, str]] = set()  # (package, format) already warned about in this process


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instantid-edge" / "openvino"


class ModelPackage:
    def __init__(self, root: str | Path, options: SessionOptions = SessionOptions()):
        self.manifest: Manifest = read_manifest(root)
        self.root, self.options = Path(root), options
        missing = [name for name in REQUIRED_GRAPHS if name not in self.manifest.graphs]
        if missing:
            raise PackageError(f"the package at {root} lacks the graph(s) {', '.join(missing)}; re-export it")
        fmt = FORMAT_OF.get(options.backend)
        lacking = [name for name in REQUIRED_GRAPHS if fmt not in self.manifest.graphs[name].files]
        if lacking:
            raise PackageError(
                f"the package at {root} has no {fmt} files for {', '.join(lacking)}; choose --backend "
                f"{'openvino' if fmt == 'onnx' else 'onnxruntime'} or re-export with --format both"
            )
        self._warn_about_integer_kernels(fmt)
        constant = self.manifest.data["constants"]["uncond_image_tokens"]
        path = self.root / constant["file"]
        if not path.is_file():
            raise PackageError(f"{path} is missing; the package is incomplete (check it with `instantid-edge inspect`)")
        self.uncond_image_tokens = np.load(path).astype(np.float32)
        self.scheduler_config = json.loads((self.root / self.manifest.data["scheduler"]).read_text())
        self._sessions: dict[str, Session] = {}

    def _warn_about_integer_kernels(self, fmt: str) -> None:
        key = (str(self.root.resolve()), fmt)
        message = package_cpu_warning(self.manifest.data, fmt)
        if message and key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(message, IntegerKernelWarning, stacklevel=3)

    @property
    def architecture(self) -> dict:
        return self.manifest.architecture

    @property
    def standin(self) -> dict | None:
        return self.manifest.data["source"].get("standin")

    def session(self, name: str) -> Session:
        if name not in self._sessions:
            self._sessions[name] = open_session(self.manifest.graph(name), self.root, self.options)
        return self._sessions[name]

    def release(self, *names: str) -> None:
        """Close sessions (they reopen on next use): a low-memory run holds only what the current stage needs."""
        from .memory import release_memory

        for name in names:
            self._sessions.pop(name, None)
        release_memory()

    def tokenizer_folder(self, name: str) -> Path:
        return self.root / name

    def output_size(self, width: int | None, height: int | None, photo_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) to generate: asked for, else the package's static size, else the photo's."""
        shapes = self.manifest.data["shapes"]
        static = (shapes["width"], shapes["height"]) if shapes["height"] is not None else None
        if width is not None:
            if static and (width, height) != static:
                raise ConfigError(
                    f"this package was exported for {static[0]}x{static[1]} only; ask for that size, or re-export "
                    "without --height/--width for any size"
                )
            return width, height
        return static or photo_size
