"""Where the real small test assets live: $INSTANTID_EDGE_ASSETS, else ../shared/assets beside the project."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "INSTANTID_EDGE_ASSETS"


def shared_assets() -> Path | None:
    """The shared assets folder if one exists (a user's own clone usually has none)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    project_root = Path(__file__).resolve().parents[1]
    for candidate in (Path.cwd() / ".." / "shared" / "assets", project_root / ".." / "shared" / "assets"):
        if candidate.is_dir():
            return candidate.resolve()
    return None
