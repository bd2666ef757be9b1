"""Where the real small test assets live: $INSTANTID_EDGE_ASSETS, else ../shared/assets beside the source checkout.

Never relative to the working directory: what a command picks must not depend on where it was started.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "INSTANTID_EDGE_ASSETS"
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root in a source checkout or an editable install


def shared_assets(project_root: Path = CHECKOUT) -> Path | None:
    """The shared assets folder if one exists (a user's own clone, or an installed wheel, usually has none)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    candidate = Path(project_root) / ".." / "shared" / "assets"
    return candidate.resolve() if candidate.is_dir() else None
