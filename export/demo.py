"""The main job with embedded defaults: a locally built tiny stand-in, skimage's astronaut, a face pack."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..runtime.face import FaceAnalyzer
from ..runtime.face_packs import default_face_pack

DEMO_PROMPT = "a portrait photo of an astronaut, studio lighting, detailed"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instantid-edge"


def demo_face() -> tuple[np.ndarray, str]:
    from skimage import data

    return data.astronaut(), "skimage.data.astronaut() (NASA photo of Eileen Collins, public domain)"


def demo_inputs(face_models: Path | None, work: Path | None) -> dict:
    """Resolve (and build when missing) everything the demo uses, with a plain description of each."""
    from .standin import build_standin

    if face_models is None:
        face_models, pack_text = default_face_pack()
    else:
        pack_text = f"the face pack at {face_models}"
    analyzer = FaceAnalyzer(face_models)
    work = work or cache_dir()
    standin = work / f"standin-tiny-{analyzer.embedding_dim}"
    if not standin.exists():
        build_standin(standin, "tiny", seed=0, embedding_dim=analyzer.embedding_dim)
    face_rgb, face_text = demo_face()
    return {
        "analyzer": analyzer,
        "standin": standin,
        "face_rgb": face_rgb,
        "described": {
            "weights": f"RANDOM-WEIGHT tiny stand-in at {standin} (not a real model: expect noise, not a portrait)",
            "face photo": face_text,
            "face pack": pack_text,
        },
    }
