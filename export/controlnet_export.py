"""Extra SDXL ControlNets in a package (`export --controlnet NAME=DIR`), exported like IdentityNet.

A ControlNet in diffusers' layout (config.json + diffusion_pytorch_model.safetensors, e.g.
diffusers/controlnet-canny-sdxl-1.0, diffusers/controlnet-depth-sdxl-1.0-small,
thibaud/controlnet-openpose-sdxl-1.0, the ones InstantID's multi-ControlNet app uses) becomes the graph
`controlnet_<NAME>`; the manifest's "controlnets" records its graph, how its condition is made
(runtime/controlnets.py: names starting with "canny" get edges computed by the runtime, others a prepared image)
and where it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..runtime.controlnets import condition_of
from ..runtime.errors import CheckpointError, ConfigError
from ..runtime.manifest import CONTROLNET_PREFIX, GRAPH_NAMES
from .graphs import ControlNetGraph

_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class ControlNetSpec:
    name: str
    folder: Path

    @classmethod
    def parse(cls, text: str) -> ControlNetSpec:
        """NAME=DIR, e.g. canny=controlnet-canny-sdxl-1.0."""
        name, _, folder = text.partition("=")
        if not folder or not _NAME.fullmatch(name):
            raise ConfigError(
                f"--controlnet takes NAME=DIR with NAME in lower-case letters, digits and _ (e.g. "
                f"canny=controlnet-canny-sdxl-1.0), got {text!r}"
            )
        return cls(name, Path(folder))

    @property
    def graph(self) -> str:
        return CONTROLNET_PREFIX + self.name

    def check(self) -> None:
        if self.graph in GRAPH_NAMES:
            raise ConfigError(f"the ControlNet name {self.name!r} clashes with the graph {self.graph}; choose another")
        if not (self.folder / "config.json").is_file():
            raise CheckpointError(
                f"{self.folder} is not a ControlNet in diffusers' layout (no config.json); give the folder holding "
                "config.json and diffusion_pytorch_model.safetensors"
            )

    def manifest_entry(self) -> dict:
        return {"graph": self.graph, "condition": condition_of(self.name), "source": str(self.folder)}


def check_specs(specs: tuple[ControlNetSpec, ...]) -> None:
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--controlnet {', '.join(repeated)} given more than once")
    for spec in specs:
        spec.check()


def controlnet_module(loader, spec: ControlNetSpec) -> tuple[ControlNetGraph, dict]:
    """The graph wrapper of one extra ControlNet, checked against the UNet, and its baked facts."""
    from .reference_models import check_controlnet

    net = loader.controlnet(spec.folder, f"the {spec.name} ControlNet")
    check_controlnet(loader.unet_config, net.config, spec.name)
    return ControlNetGraph(net), {"conditioning_scale": "input", "encoder_hidden_states": "the text embeddings"}
