"""A model package opened for inference: sessions created on first use, constants and configs loaded.

    package = ModelPackage(root, SessionOptions(backend="openvino"))
    package.session(name).run(feeds)    # opened on first use
    package.release(*names)             # closed until next use (the memory policy decides when)
    with package.recording() as feeds:  # every graph's feeds copied into feeds[name] (quantize calibrates so)

Which backends exist and which files each opens: backends.py. When to release what: memory.MemoryPolicy.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from .backends import BACKENDS, backend
from .cpu import IntegerKernelWarning, package_cpu_warning
from .errors import ConfigError, PackageError
from .manifest import GRAPH_NAMES, Manifest, read_manifest
from .session import Levers, Session, SessionOptions, open_session

REQUIRED_GRAPHS = tuple(name for name in GRAPH_NAMES if name != "vae_encoder")
_WARNED: set[tuple[str, str]] = set()  # (package, format) already warned about in this process


class ModelPackage:
    def __init__(self, root: str | Path, options: SessionOptions = SessionOptions()):
        self.manifest: Manifest = read_manifest(root)
        self.root, self.options = Path(root), options
        missing = [name for name in REQUIRED_GRAPHS if name not in self.manifest.graphs]
        if missing:
            raise PackageError(f"the package at {root} lacks the graph(s) {', '.join(missing)}; re-export it")
        fmt = backend(options.backend).format
        lacking = [name for name in REQUIRED_GRAPHS if fmt not in self.manifest.graphs[name].files]
        if lacking:
            others = " or ".join(name for name in BACKENDS if name != options.backend)
            raise PackageError(
                f"the package at {root} has no {fmt} files for {', '.join(lacking)}; choose --backend "
                f"{others} or re-export with --format both"
            )
        self._warn_about_integer_kernels(fmt)
        path = self.manifest.constant_path("uncond_image_tokens")
        if not path.is_file():
            raise PackageError(f"{path} is missing; the package is incomplete (check it with `instantid-edge inspect`)")
        self.uncond_image_tokens = np.load(path).astype(np.float32)
        self.scheduler_config = json.loads(self.manifest.scheduler_path.read_text())
        self._sessions: dict[str, Session] = {}
        self._recording: dict[str, list[dict[str, np.ndarray]]] | None = None

    def _warn_about_integer_kernels(self, fmt: str) -> None:
        key = (str(self.root.resolve()), fmt)
        message = package_cpu_warning(self.manifest.data, fmt)
        if message and key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(message, IntegerKernelWarning, stacklevel=3)

    def use_levers(self, levers: Levers) -> None:
        """The backend switches of sessions opened from now on (open sessions keep theirs)."""
        self.options = replace(self.options, levers=levers)

    def session(self, name: str) -> Session:
        if name not in self._sessions:
            self._sessions[name] = open_session(self.manifest.graph(name), self.root, self.options)
        session = self._sessions[name]
        return session if self._recording is None else _RecordingSession(session, self._recording[name])

    def is_open(self, name: str) -> bool:
        return name in self._sessions

    def graph_bytes(self) -> dict[str, int]:
        """Bytes on disk of each graph's files in the format this package's backend reads."""
        return self.manifest.graph_bytes(backend(self.options.backend).format)

    def prepare(self, name: str, shapes: dict[str, tuple[int, ...]]) -> None:
        """Open `name` and get it ready for calls at `shapes` (OpenVINO compiles, or loads its cached blob)."""
        self.session(name)
        self._sessions[name].compile_for(shapes)

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, list[dict[str, np.ndarray]]]]:
        """While the block runs, a copy of every graph's feeds goes into the yielded {graph: [feeds, ...]}."""
        self._recording = defaultdict(list)
        try:
            yield self._recording
        finally:
            self._recording = None

    def release(self, *names: str) -> None:
        """Close sessions (they reopen on next use): a low-memory run holds only what the current stage needs."""
        from .memory import release_memory

        for name in names:
            self._sessions.pop(name, None)
        release_memory()

    def output_size(self, width: int | None, height: int | None, photo_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) to generate: asked for, else the package's static size, else the photo's."""
        static = self.manifest.static_size
        if width is not None:
            if static and (width, height) != static:
                raise ConfigError(
                    f"this package was exported for {static[0]}x{static[1]} only; ask for that size, or re-export "
                    "without --height/--width for any size"
                )
            return width, height
        return static or photo_size


class _RecordingSession:
    def __init__(self, session: Session, sink: list[dict[str, np.ndarray]]):
        self._session, self._sink = session, sink
        self.name, self.inputs, self.outputs = session.name, session.inputs, session.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._sink.append({name: np.array(value, copy=True) for name, value in feeds.items()})
        return self._session.run(feeds)
