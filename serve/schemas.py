"""Response bodies of the HTTP layer itself (job bodies are the engine's types in jobs.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorBody:
    error: str  # a stable code: queue_full, no_face, bad_image, upload_too_large, not_found, ...
    message: str  # what was wrong and what to do, for people


@dataclass(frozen=True)
class StyleInfo:
    name: str
    label: str
    prompt: str  # the template; {prompt} marks where the visitor's prompt goes
    negative_prompt: str


@dataclass(frozen=True)
class StyleList:
    styles: list[StyleInfo]


@dataclass(frozen=True)
class Health:
    status: str


@dataclass(frozen=True)
class Ready:
    ready: bool
    detail: str
