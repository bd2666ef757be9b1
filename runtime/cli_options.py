"""Generation options shared by `reference` and `generate`, and their conversion to settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from .errors import ConfigError
from .memory import MEMORY_MODES
from .settings import GenerationSettings

_OPTIONS = [
    click.option("--face", type=click.Path(path_type=Path), required=True, help="Photo of one person's face."),
    click.option("--prompt", required=True, help="What to generate."),
    click.option("--out", type=click.Path(path_type=Path), required=True, help="Output PNG path."),
    click.option("--negative-prompt", default=None, help="Default: none (zero negative embeddings, as SDXL)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--steps", type=int, default=30, show_default=True),
    click.option("--guidance", type=float, default=5.0, show_default=True, help="CFG runs only when > 1."),
    click.option("--ip-scale", type=float, default=0.8, show_default=True, help="Image-adapter strength."),
    click.option("--identitynet-scale", type=float, default=0.8, show_default=True, help="IdentityNet strength."),
    click.option("--height", type=int, help="Output height (default: the face photo resized, long side 1280)."),
    click.option("--width", type=int, help="Output width (give both or neither)."),
    click.option(
        "--face-models",
        type=click.Path(path_type=Path),
        help="Folder holding an insightface pack's .onnx files (default ~/.insightface/models/antelopev2).",
    ),
    click.option("--latents", type=click.Path(path_type=Path), help="Initial unit noise (.npy) instead of --seed."),
    click.option("--save-latents", type=click.Path(path_type=Path), help="Write the final latents (.npy)."),
]


def memory_option(help_text: str):
    return click.option("--memory", type=click.Choice(MEMORY_MODES), default="auto", show_default=True, help=help_text)


def generation_options(command):
    for option in reversed(_OPTIONS):
        command = option(command)
    return functools.wraps(command)(command)


@dataclass(frozen=True)
class GenerationInputs:
    face: Path
    out: Path
    face_models: Path | None
    latents: Path | None
    save_latents: Path | None

    def load_latents(self) -> np.ndarray | None:
        if self.latents is None:
            return None
        try:
            return np.load(self.latents, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read --latents {self.latents} as a .npy array: {exc}") from exc


def settings_from_options(options: dict) -> tuple[GenerationSettings, GenerationInputs]:
    inputs = GenerationInputs(**{k: options.pop(k) for k in ("face", "out", "face_models", "latents", "save_latents")})
    if inputs.out.suffix.lower() != ".png":
        raise ConfigError(f"--out must end in .png (the output carries its provenance in PNG metadata): {inputs.out}")
    settings = GenerationSettings(**options).validate()
    return settings, inputs
