"""The engine interface the app runs on: submit, status, events, image, cancel, readiness, metrics.

The routes in app.py hold no job logic; everything about queueing, running, cancelling and forgetting jobs lives
behind this interface. LocalEngine (local_engine.py) runs jobs in one worker thread of the serving process; an
engine that runs them on other processes or machines implements the same methods.

Errors: submit raises serve.errors.QueueFull or NotReady, or the runtime's InputImageError / NoFaceError /
ConfigError for a request it cannot run; the per-job methods raise JobNotFound for an unknown or forgotten id,
and image() raises NotFinished while there is no image.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from .jobs import EngineMetrics, JobEvent, JobRequest, JobStatus, Readiness, Submitted


class Engine(Protocol):
    async def start(self) -> None:
        """Begin loading and serving; called once from the app's startup, inside its event loop."""

    async def stop(self) -> None:
        """Stop taking jobs, stop the running one at its next step, and forget every job."""

    async def ready(self) -> Readiness: ...

    async def submit(self, request: JobRequest) -> Submitted: ...

    async def status(self, job_id: str) -> JobStatus: ...

    def events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events with seq > after, then each new one as it happens; ends after the final event
        (done, error or cancelled) or when the job is forgotten."""

    async def image(self, job_id: str) -> bytes:
        """The finished image as a labelled PNG (it carries its provenance)."""

    async def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a queued job, ask a running one to stop at its next step (both: the new status), or forget
        a finished job and its image (None)."""

    async def metrics(self) -> EngineMetrics: ...
