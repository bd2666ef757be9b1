"""The main job on embedded defaults: a locally built tiny stand-in, exported, then run by the runtime.

Defaults (tools/defaults.py): scikit-image's astronaut photo as the face; the shared 128-d test face pack when
the shared assets are there, else antelopev2 (insightface fetches it when online); a tiny random-weight stand-in
built and exported once into the cache folder. Every default is described in plain words in the command's output.
"""

from __future__ import annotations

from pathlib import Path

from ..runtime.backends import cache_dir
from ..runtime.face import FaceAnalyzer
from ..tools.defaults import default_face_pack, default_face_photo

DEMO_PROMPT = "a portrait photo of an astronaut, studio lighting, detailed"


def demo_package(embedding_dim: int, work: Path, log) -> Path:
    """The tiny stand-in for this embedding width, exported to a package; both built once and kept."""
    from .package import ExportRequest, export_package
    from .standin import build_standin

    standin, package = work / f"standin-tiny-{embedding_dim}", work / f"package-tiny-{embedding_dim}"
    if not standin.exists():
        log(f"building a tiny random-weight stand-in in {standin}")
        build_standin(standin, "tiny", seed=0, embedding_dim=embedding_dim)
    if not package.exists():
        log(f"exporting it to ONNX and OpenVINO in {package}")
        export_package(ExportRequest(standin, package), log=lambda line: None)
    return package


def demo_inputs(face_models: Path | None, work: Path | None, log) -> dict:
    if face_models is None:
        face_models, pack_text = default_face_pack()
    else:
        pack_text = f"the face pack at {face_models}"
    analyzer = FaceAnalyzer(face_models)
    package = demo_package(analyzer.embedding_dim, work or cache_dir(), log)
    face_rgb, face_text = default_face_photo()
    return {
        "face_models": face_models,
        "package": package,
        "face_rgb": face_rgb,
        "described": {
            "weights": f"RANDOM-WEIGHT tiny stand-in, exported to {package} (not a real model: expect noise)",
            "face photo": face_text,
            "face pack": pack_text,
        },
    }
