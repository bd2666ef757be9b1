"""Calibration inputs captured from the runtime pipeline itself (no torch): every graph's feeds at every step."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.errors import ConfigError
from ..runtime.images import load_rgb
from ..tools.defaults import default_face_photo

DEFAULT_PROMPTS = [
    "a portrait photo of a person, studio lighting, detailed skin",
    "an oil painting portrait in the style of the old masters",
    "a watercolor illustration of a person in a garden",
    "a cinematic film still of a person in a rainy city at night",
    "a pencil sketch portrait, high contrast",
    "a person as an astronaut, photorealistic, 35mm",
    "a comic book style portrait, bold lines, vivid colors",
    "a person at the beach, golden hour, analog film",
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class Recording:
    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=lambda: defaultdict(list))


def record(pipe, recording: Recording, jobs) -> None:
    """Run the pipeline over (face_rgb, settings) jobs, adding every graph's feeds to `recording`."""
    with pipe.package.recording() as feeds:
        for face_rgb, settings in jobs:
            pipe(face_rgb, settings)
    for name, items in feeds.items():
        recording.feeds[name].extend(items)


def calibration_faces(folder: Path | None) -> list[tuple[str, np.ndarray]]:
    if folder is None:
        face_rgb, _ = default_face_photo()
        return [("skimage astronaut", face_rgb)]
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--calibration-faces {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"--calibration-faces {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [(p.name, load_rgb(p)) for p in paths]


def calibration_prompts(file: Path | None) -> list[str]:
    if file is None:
        return list(DEFAULT_PROMPTS)
    prompts = [line.strip() for line in Path(file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"--calibration-prompts {file} holds no prompts (one per line)")
    return prompts
