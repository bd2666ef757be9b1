"""Embedded defaults for commands run without inputs (demo, quantize's calibration, bench): a face photo that
ships inside an installed package, and a face pack. Each comes with a plain description for the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.errors import FaceModelError
from .assets import shared_assets

FACE_PHOTO = "scikit-image's astronaut photo (NASA photo of Eileen Collins, public domain)"


def default_face_photo() -> tuple[np.ndarray, str]:
    """(HxWx3 uint8 RGB, description): scikit-image's astronaut, which ships inside the scikit-image wheel."""
    from skimage import data

    return data.astronaut(), FACE_PHOTO


def default_face_pack(allow_download: bool = True) -> tuple[Path, str]:
    """(pack folder, a plain description of it): the shared 128-d test pack when the assets are there, else
    antelopev2 from ~/.insightface, downloaded by insightface when allowed and the machine is online."""
    from ..runtime.face import DEFAULT_PACK  # imports opencv: not at import time, so that --help stays quick

    assets = shared_assets()
    if assets is not None and (assets / "insightface" / "models" / "test_pack").is_dir():
        return (
            assets / "insightface" / "models" / "test_pack",
            "the shared 128-d TEST face pack (SCRFD-2.5G + MobileFaceNet)",
        )
    if DEFAULT_PACK.is_dir() and any(DEFAULT_PACK.glob("*.onnx")):
        return DEFAULT_PACK, f"antelopev2 at {DEFAULT_PACK}"
    if allow_download:
        try:
            from insightface.utils import ensure_available

            folder = Path(ensure_available("models", "antelopev2", root=str(DEFAULT_PACK.parents[1])))
        except Exception as exc:  # network, zip or disk errors all mean the same to the user
            raise FaceModelError(
                f"no face pack found and antelopev2 could not be downloaded ({type(exc).__name__}: {exc}); "
                f"unzip antelopev2 into {DEFAULT_PACK} or pass --face-models DIR"
            ) from exc
        return folder, f"antelopev2, downloaded by insightface to {folder}"
    raise FaceModelError(f"no face pack found: unzip antelopev2 into {DEFAULT_PACK} or pass --face-models DIR")
