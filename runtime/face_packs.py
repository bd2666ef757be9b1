"""Which insightface pack to use when none is given: the shared test pack, else antelopev2 (fetched if online)."""

from __future__ import annotations

from pathlib import Path

from .assets import shared_assets
from .errors import FaceModelError
from .face import DEFAULT_PACK


def default_face_pack(allow_download: bool = True) -> tuple[Path, str]:
    """(pack folder, a plain description of it) for demos and defaults."""
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
