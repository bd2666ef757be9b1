"""The types that cross the engine boundary: what a client asks for, and what it can learn about its job.

They are plain dataclasses so that any engine (a thread here, replicas elsewhere) can hold and send them, and
FastAPI derives the API's response schemas from them: one definition for the engine and the OpenAPI document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.ERROR, JobState.CANCELLED)


@dataclass(frozen=True, eq=False)
class JobRequest:
    """A checked request: decoded photos (in memory only) and the settings the client gave."""

    face: np.ndarray  # HxWx3 uint8 RGB
    pose: np.ndarray | None
    settings: dict[str, Any]  # GenerationSettings fields the client gave, a style already applied
    style: str | None = None


@dataclass(frozen=True)
class Submitted:
    id: str
    queue_position: int  # 1: next to run


@dataclass(frozen=True)
class JobError:
    code: str  # no_face, bad_image, bad_settings, deadline_exceeded, internal_error, ...
    message: str


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: JobState
    queue_position: int | None  # 1: next to run; None unless queued
    step: int  # denoising steps done
    total: int  # denoising steps in all
    created: float  # Unix seconds
    started: float | None
    finished: float | None
    expires: float | None  # when a finished job and its image are forgotten (Unix seconds)
    cancel_requested: bool
    settings: dict[str, Any]  # what the job runs with: the resolved seed, steps, size, style...
    timings: dict[str, float]  # seconds per stage once done
    error: JobError | None = None
    replica: str | None = None  # the replica that holds the job, where replicas run it (None: this process)
    node: str | None = None  # the cluster node of that replica


@dataclass(eq=False, kw_only=True)
class TrackedJob:
    """What every engine keeps of a job while it lives (progress, outcome, image, events); engines add the rest."""

    id: str
    created: float  # Unix seconds
    total: int
    state: JobState = JobState.QUEUED
    step: int = 0
    started: float | None = None
    finished: float | None = None
    expires: float | None = None  # wall clock, for clients
    expires_at: float = math.inf  # monotonic, for the sweep
    cancel_requested: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    error: JobError | None = None
    image: bytes | None = None
    events: list[JobEvent] = field(default_factory=list)

    def status(self, settings: dict[str, Any], queue_position: int | None, **placement) -> JobStatus:
        """The client's view; `placement` is where replicas run it (replica, node)."""
        return JobStatus(
            id=self.id, state=self.state, queue_position=queue_position, step=self.step, total=self.total,
            created=self.created, started=self.started, finished=self.finished, expires=self.expires,
            cancel_requested=self.cancel_requested, settings=settings, timings=dict(self.timings), error=self.error,
            **placement,
        )  # fmt: skip


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event: `seq` numbers a job's events from 1 (the SSE id, for reconnecting)."""

    seq: int
    kind: str  # queued, started, step, done, error, cancelled
    data: dict[str, Any]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: str


@dataclass
class EngineMetrics:
    queue_length: int = 0
    running: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # finished jobs by state (done, error, cancelled)
    refused: dict[str, int] = field(default_factory=dict)  # submissions refused by reason (queue_full, no_face...)
    stage_seconds: dict[str, tuple[float, int]] = field(default_factory=dict)  # stage -> (total seconds, count)
