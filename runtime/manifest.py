"""The model package: a folder with `manifest.json` describing every graph, and the files it lists.

The manifest is the contract between export and the runtime: the runtime reads only the manifest (and the files
it names), through the typed view `read_manifest` returns, never through constants of its own; `inspect`
verifies sizes and sha256 of every file. Schema version 1:

    {"schema": "instantid-edge/model-package", "schema_version": 1,
     "producer": {library versions}, "source": {"files": {name: sha256}, "standin": {...}|null, "loras": [...]},
     "architecture": {ModelFacts}, "shapes": {"height": H|null, "width": W|null},
     "profiles": {"fast"|"quality": {RunProfile}},    # absent in packages exported before run profiles
     "scheduler": "scheduler/scheduler_config.json",
     "tokenizers": {"tokenizer": [files], "tokenizer_2": [files]},     # folders, in text-encoder order
     "constants": {"uncond_image_tokens": {"file": ..., "shape": [...]}},
     "graphs": {name: {"precision", "files": {"onnx"|"openvino": [{"path", "bytes", "sha256"}]},
                       "inputs": [{"name", "dtype", "shape"}], "outputs": [...], "baked": {...},
                       "validation": {...}}},
     "controlnets": {name: {"graph": "controlnet_<name>", "condition": "canny"|"image", "source": ...}},
     "files": [{"path", "bytes", "sha256"}]}     # every file of the package, for verification

Schema version 2 (this version's exports) adds the UNet's `face_mask` input and a symbolic context length,
the VAE encoder's `latents_std` output and the optional "controlnets"; version 1 packages still run, without
what needs those (capabilities.py says what a package can do).

Public surface: `read_manifest(root) -> Manifest` (`.architecture` ModelFacts, `.graphs` GraphInfo by name,
`.static_size`, `.tokenizer_folders`, `.profiles` RunProfile by name, `.scheduler_path`, `.constant_path(name)`,
`.standin`, `.loras`, `.graph_bytes(fmt)`, `.decoder_graph(decoder)`, `.controlnets`, `.data` for the rest),
`verify_files`, and the helpers export uses to write one (`file_entry`, `sha256_of`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import PackageError

SCHEMA = "instantid-edge/model-package"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
GRAPH_NAMES = ("text_encoder", "text_encoder_2", "image_proj", "identitynet", "unet", "vae_decoder", "vae_encoder")
TINY_DECODER = "vae_decoder_tiny"  # TAESD-XL: a graph only packages exported with --tiny-decoder have
DECODER_GRAPHS = {"full": "vae_decoder", "tiny": TINY_DECODER}  # what --decoder chooses
PROFILE_NAMES = ("fast", "quality")
# IdentityNet's outputs / the UNet's residual inputs: 9 down residuals (the UNet's skip features) and the mid
# residual, with their latent strides.
RESIDUALS = tuple(f"down_{i}" for i in range(9)) + ("mid",)
RESIDUAL_STRIDES = (1, 1, 1, 2, 2, 2, 4, 4, 4, 4)
# Prompt lengths in tokens: symbolic in packages whose UNet takes prompts of any length (weighted and long
# prompts), a number in older ones. The UNet's context is the text tokens, then the face tokens; the extra
# ControlNets see the text tokens alone.
CONTEXT_TOKENS, TEXT_TOKENS = "context_tokens", "text_tokens"


def level_size(latent_h: int, latent_w: int, stride: int) -> tuple[int, int]:
    """(height, width) at a UNet level of `stride`: the latents halved (rounding up) per stride-2 level."""
    while stride > 1:
        latent_h, latent_w, stride = -(-latent_h // 2), -(-latent_w // 2), stride // 2
    return latent_h, latent_w


def latent_size(height: int, width: int, vae_scale_factor: int, stride: int = 1) -> tuple[int, int]:
    """Latent (height, width) of `height` x `width` pixels at a UNet level of `stride`."""
    return level_size(height // vae_scale_factor, width // vae_scale_factor, stride)


def dim_sizes(height: int, width: int, batch: int, vae_scale_factor: int, text_tokens: int = 0,
              image_tokens: int = 0) -> dict[str, int]:  # fmt: skip
    """Values of the symbolic dims in the graphs' specs for one run of `height` x `width` pixels, with
    `text_tokens` prompt tokens and `image_tokens` face tokens."""
    sizes = {"batch": batch, "height": height, "width": width, TEXT_TOKENS: text_tokens,
             CONTEXT_TOKENS: text_tokens + image_tokens}  # fmt: skip
    for stride in (1, 2, 4):
        suffix = "" if stride == 1 else f"_{stride}"
        sizes[f"latent_height{suffix}"], sizes[f"latent_width{suffix}"] = latent_size(
            height, width, vae_scale_factor, stride
        )
    return sizes


@dataclass(frozen=True)
class ModelFacts:
    """What export measured about the model and the runtime needs (the manifest's "architecture")."""

    cross_attention_dim: int  # the UNet's context width (the two text encoders' widths summed)
    text_widths: tuple[int, int]  # hidden widths of text_encoder and text_encoder_2
    pooled_dim: int  # text_encoder_2's projected pooled embedding
    embedding_dim: int  # the face embedding the image adapter takes (antelopev2: 512)
    num_image_tokens: int  # face tokens the image adapter makes (16)
    text_length: int  # tokens per prompt (CLIP: 77)
    latent_channels: int  # (SDXL: 4)
    vae_scale_factor: int  # pixels per latent (SDXL: 8)
    force_zeros_for_empty_prompt: bool  # no negative prompt: zero negative embeddings (SDXL)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latents."""
        return (self.latent_channels, *latent_size(height, width, self.vae_scale_factor))

    def latent_size(self, height: int, width: int, stride: int = 1) -> tuple[int, int]:
        return latent_size(height, width, self.vae_scale_factor, stride)

    def dim_sizes(self, height: int, width: int, batch: int, text_tokens: int | None = None) -> dict[str, int]:
        """For `text_tokens` prompt tokens (default: one chunk of `text_length`, an unweighted prompt)."""
        tokens = self.text_length if text_tokens is None else text_tokens
        return dim_sizes(height, width, batch, self.vae_scale_factor, tokens, self.num_image_tokens)

    def to_dict(self) -> dict:
        return {**self.__dict__, "text_widths": list(self.text_widths)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelFacts:
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise KeyError(f"architecture lacks {', '.join(missing)}")
        values = {name: data[name] for name in names}
        return cls(**{**values, "text_widths": tuple(values["text_widths"])})


@dataclass(frozen=True)
class RunProfile:
    """How the package is meant to be sampled (export/profiles.py writes them), or why it cannot be: the
    GenerationSettings fields it sets, where it comes from, and `unavailable` (the reason) when it is none."""

    sampler: str | None = None
    timestep_spacing: str | None = None
    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None
    timesteps: tuple[int, ...] | None = None
    decoder: str | None = None  # a key of DECODER_GRAPHS
    source: str = ""  # the manifest's "from": the distillation and how it was identified, or the defaults
    unavailable: str | None = None

    @classmethod
    def settings_fields(cls) -> tuple[str, ...]:
        """The fields a profile sets on GenerationSettings."""
        return tuple(f.name for f in fields(cls) if f.name not in ("source", "unavailable"))

    def settings(self) -> dict:
        return {name: getattr(self, name) for name in self.settings_fields()}

    def to_dict(self) -> dict:
        if self.unavailable is not None:
            return {"unavailable": self.unavailable}
        timesteps = list(self.timesteps) if self.timesteps is not None else None
        return {**self.settings(), "timesteps": timesteps, "from": self.source}

    @classmethod
    def from_dict(cls, data: dict) -> RunProfile:
        if "unavailable" in data:
            return cls(unavailable=str(data["unavailable"]))
        names = cls.settings_fields()
        missing = [name for name in names if name not in data]
        if missing:
            raise KeyError(f"run profile lacks {', '.join(missing)}")
        values = {name: data[name] for name in names}
        timesteps = values["timesteps"]
        return cls(**{**values, "timesteps": tuple(timesteps) if timesteps is not None else None},
                   source=str(data.get("from", "")))  # fmt: skip


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

    def weight_paths(self, root: Path, fmt: str) -> tuple[Path, ...]:
        """The files beside the graph file (ONNX external data, OpenVINO's .bin): what a backend maps."""
        self.path(root, fmt)
        return tuple(root / entry["path"] for entry in self.files[fmt][1:])

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


CONDITIONS = ("canny", "image")  # how an extra ControlNet's condition is made: edges computed here, or given
CONTROLNET_PREFIX = "controlnet_"  # an extra ControlNet's graph is called controlnet_<name>


@dataclass(frozen=True)
class ControlNetInfo:
    """An extra SDXL ControlNet the package carries beside IdentityNet (export --controlnet NAME=DIR)."""

    name: str
    graph: str  # its graph's name in "graphs"
    condition: str  # one of CONDITIONS

    def to_dict(self) -> dict:
        return {"graph": self.graph, "condition": self.condition}


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict  # the whole manifest, for what has no typed view (producer, source files, validation)
    graphs: dict[str, GraphInfo]
    architecture: ModelFacts
    static_size: tuple[int, int] | None  # (width, height) the graphs were exported for; None: any size
    tokenizer_folders: tuple[Path, Path]  # for text_encoder and text_encoder_2
    profiles: dict[str, RunProfile] | None = None  # None: exported before run profiles (runtime/profiles.py)

    @property
    def formats(self) -> set[str]:
        return {fmt for graph in self.graphs.values() for fmt in graph.files}

    @property
    def scheduler_path(self) -> Path:
        return self.root / self.data["scheduler"]

    @property
    def standin(self) -> dict | None:
        """STANDIN.json of the checkpoint when the weights are a random stand-in, else None."""
        return self.data["source"].get("standin")

    @property
    def loras(self) -> list[dict]:
        """The LoRAs fused into the UNet: file, sha256, scale, and the release and profile it was taken for."""
        return self.data["source"].get("loras") or []

    def decoder_graph(self, decoder: str) -> str:
        """The graph that decodes for `decoder` (a key of DECODER_GRAPHS), which this package must have."""
        graph = DECODER_GRAPHS[decoder]
        if graph not in self.graphs:
            raise PackageError(
                f"the package at {self.root} has no {decoder} decoder (graph {graph}); re-export it with "
                "--tiny-decoder taesdxl_decoder.pth, or use --decoder full"
            )
        return graph

    def constant_path(self, name: str) -> Path:
        return self.root / self.data["constants"][name]["file"]

    def graph(self, name: str) -> GraphInfo:
        if name not in self.graphs:
            raise PackageError(f"the package at {self.root} has no {name} graph; re-export it")
        return self.graphs[name]

    def input_shapes(self, graph: str, height: int, width: int, batch: int,
                     text_tokens: int | None = None) -> dict[str, tuple[int, ...]]:  # fmt: skip
        """{input: shape} of one call of `graph` on `height` x `width` pixels (symbolic dims resolved)."""
        sizes = self.architecture.dim_sizes(height, width, batch, text_tokens)
        return {spec.name: tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
                for spec in self.graph(graph).inputs}  # fmt: skip

    @property
    def controlnets(self) -> dict[str, ControlNetInfo]:
        """The extra ControlNets by name (none in packages exported without them)."""
        return {
            name: ControlNetInfo(name, entry["graph"], entry["condition"])
            for name, entry in self.data.get("controlnets", {}).items()
        }

    def graph_bytes(self, fmt: str) -> dict[str, int]:
        """Bytes on disk of each graph's files in `fmt` (0 for a graph without that format)."""
        return {name: sum(f["bytes"] for f in graph.files.get(fmt, [])) for name, graph in self.graphs.items()}


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
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise PackageError(
            f"{path} has schema version {data.get('schema_version')}; this instantid-edge reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Re-export the package with this version, or use the "
            "matching instantid-edge"
        )
    try:
        graphs = {name: GraphInfo.from_dict(name, graph) for name, graph in data["graphs"].items()}
        shapes = data["shapes"]
        tokenizers = tuple(root / folder for folder in data["tokenizers"])
        if len(tokenizers) != 2:
            raise ValueError(f"{len(tokenizers)} tokenizer folders listed, expected 2")
        profiles = data.get("profiles")
        if profiles is not None:
            if sorted(profiles) != sorted(PROFILE_NAMES):
                raise ValueError(f"run profiles {sorted(profiles)}, expected {list(PROFILE_NAMES)}")
            profiles = {name: RunProfile.from_dict(profile) for name, profile in profiles.items()}
        for name, entry in data.get("controlnets", {}).items():
            if entry["graph"] not in graphs or entry["condition"] not in CONDITIONS:
                raise ValueError(
                    f"controlnet {name!r} names graph {entry['graph']!r} / condition {entry['condition']!r}"
                )
        return Manifest(
            root=root,
            data=data,
            graphs=graphs,
            architecture=ModelFacts.from_dict(data["architecture"]),
            static_size=(shapes["width"], shapes["height"]) if shapes["height"] is not None else None,
            tokenizer_folders=tokenizers,
            profiles=profiles,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{path} is malformed: {type(exc).__name__} {exc}") from exc


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
