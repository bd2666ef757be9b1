"""The small error hierarchy: every problem a user can fix raises one of these; and `check_finite`.

The library raises them with a message that says what was wrong and what to do; only the CLI turns them
into an exit code (1) and a one-line message.
"""

from __future__ import annotations

import numpy as np

PACKAGE_ADVICE = "the package may be corrupt (check it with `instantid-edge inspect`) or quantized too aggressively"


class InstantIDError(Exception):
    """Base class for errors caused by input, files or settings (not by bugs)."""


class InputImageError(InstantIDError):
    """A photo could not be read: missing, corrupt, truncated, too large, or of an unsupported kind."""


class NoFaceError(InstantIDError):
    """The face detector found no face in the photo."""


class CheckpointError(InstantIDError):
    """A checkpoint folder or file is missing, incomplete, or does not match the expected architecture."""


class FaceModelError(InstantIDError):
    """The insightface model pack is missing or lacks a detection or recognition model."""


class PackageError(InstantIDError):
    """A model package is missing, incomplete, altered, or of another schema version."""


class ConfigError(InstantIDError):
    """A generation setting is out of range or inconsistent."""


class NumericalError(InstantIDError):
    """A stage produced NaN or infinite values."""


class ExportError(InstantIDError):
    """An export or quantization produced graphs that disagree with PyTorch beyond tolerance."""


class InstantIDWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as one `warning:` line."""


def check_finite(stage: str, array: np.ndarray, advice: str = PACKAGE_ADVICE) -> np.ndarray:
    """`array` unchanged, or NumericalError naming the stage that produced NaN or infinite values."""
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise NumericalError(f"{stage} produced {bad} NaN/infinite values out of {array.size}; {advice}")
    return array
