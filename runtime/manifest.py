"""The model package: a folder with `manifest.json` describing every graph, and the files it lists.

The runtime reads only the manifest (and the files it names); `inspect` verifies sizes and sha256 of every
file. Schema version 1:

    {"schema": "instantid-edge/model-package", "schema_version": 1,
     "producer": {library versions}, "source": {"files": {name: sha256}, "standin": bool, "loras": [...]},
     "architecture": {...}, "shapes": {"height": H|null, "width": W|null},
     "scheduler": {diffusers scheduler config}, "tokenizers": {"tokenizer": {files}, "tokenizer_2": {files}},
     "constants": {"uncond_image_tokens": {"file": ..., "shape": [...]}},
     "graphs": {name: {"precision", "files": {"onnx"|"openvino": [{"path", "bytes", "sha256"}]},
                       "inputs": [{"name", "dtype", "shape"}], "outputs": [...], "baked": {...},
                       "validation": {...}}},
     "files": [{"path", "bytes", "sha256"}]}     # every file of the package, for verification
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PackageError

SCHEMA = "instantid-edge/model-package"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPH_NAMES = ("text_encoder", "text_encoder_2", "image_proj", "identitynet", "unet", "vae_decoder", "vae_encoder")
# IdentityNet's outputs / the UNet's residual inputs: 9 down residuals (the UNet's skip features) and the mid
# residual, with their latent strides.
RESIDUALS = tuple(f"down_{i}" for i in range(9)) + ("mid",)
RESIDUAL_STRIDES = (1, 1, 1, 2, 2, 2, 4, 4, 4, 4)


def latent_size(height: int, width: int, stride: int = 1) -> tuple[int, int]:
    """Latent (height, width) at a UNet level: pixels / 8, then halved (rounding up) per stride-2 level."""
    h, w = height // 8, width // 8
    while stride > 1:
        h, w, stride = -(-h // 2), -(-w // 2), stride // 2
    return h, w


def dim_sizes(height: int, width: int, batch: int) -> dict[str, int]:
    """Values of the symbolic dims in the graphs' specs for one run of `height` x `width` pixels."""
    sizes = {"batch": batch, "height": height, "width": width}
    for stride in (1, 2, 4):
        suffix = "" if stride == 1 else f"_{stride}"
        sizes[f"latent_height{suffix}"], sizes[f"latent_width{suffix}"] = latent_size(height, width, stride)
    return sizes


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple[int | str, ...]  # ints are fixed, strings name a dynamic dimension

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class GraphInfo:
    name: str
    precision: str
    files: dict[str, list[dict]]  # format -> files, the first being the one to load
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    baked: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    quantization: dict | None = None

    def path(self, root: Path, fmt: str) -> Path:
        if fmt not in self.files:
            raise PackageError(f"graph {self.name} has no {fmt} files in this package (it has {sorted(self.files)})")
        return root / self.files[fmt][0]["path"]

    def to_dict(self) -> dict:
        data = {
            "precision": self.precision,
            "files": self.files,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "baked": self.baked,
            "validation": self.validation,
        }
        if self.quantization is not None:
            data["quantization"] = self.quantization
        return data

    @classmethod
    def from_dict(cls, name: str, data: dict) -> GraphInfo:
        return cls(
            name=name,
            precision=data["precision"],
            files=data["files"],
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            baked=data.get("baked", {}),
            validation=data.get("validation", {}),
            quantization=data.get("quantization"),
        )


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict
    graphs: dict[str, GraphInfo]

    @property
    def architecture(self) -> dict:
        return self.data["architecture"]

    @property
    def formats(self) -> set[str]:
        return {fmt for graph in self.graphs.values() for fmt in graph.files}

    def graph(self, name: str) -> GraphInfo:
        if name not in self.graphs:
            raise PackageError(f"the package at {self.root} has no {name} graph; re-export it")
        return self.graphs[name]


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(root: Path, path: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def read_manifest(root: str | Path) -> Manifest:
    """Parse and check the manifest of a package folder (not the file hashes: see verify_files)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise PackageError(
            f"{root} is not a model package: {MANIFEST} is missing (create one with `instantid-edge export`)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path} is not valid JSON: {exc}") from exc
    if data.get("schema") != SCHEMA:
        raise PackageError(f"{path} is not an instantid-edge manifest (schema {data.get('schema')!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise PackageError(
            f"{path} has schema version {data.get('schema_version')}; this instantid-edge reads version "
            f"{SCHEMA_VERSION}. Re-export the package with this version, or use the matching instantid-edge"
        )
    try:
        graphs = {name: GraphInfo.from_dict(name, graph) for name, graph in data["graphs"].items()}
    except (KeyError, TypeError) as exc:
        raise PackageError(f"{path} is malformed: {type(exc).__name__} {exc}") from exc
    return Manifest(root=root, data=data, graphs=graphs)


def verify_files(manifest: Manifest) -> list[str]:
    """Problems with the package's files (missing, wrong size, altered); empty when all is well."""
    problems = []
    for entry in manifest.data.get("files", []):
        path = manifest.root / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']} is missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{entry['path']} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"{entry['path']} was altered (sha256 differs from the manifest)")
    return problems
