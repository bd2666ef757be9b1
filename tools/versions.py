"""Installed versions of libraries, for manifests and benchmark reports."""

from __future__ import annotations

import contextlib
import importlib.metadata


def library_versions(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """name -> installed version, for the distributions of `names` that are installed."""
    versions = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions
