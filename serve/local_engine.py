"""LocalEngine: jobs run one at a time in a worker thread of this process, off the event loop.

One worker owns the pipeline (loaded and warmed up in that thread, so the server answers /healthz meanwhile).
A bounded queue holds what waits; a full queue refuses with a Retry-After estimate. A running job is stopped at
its next denoising step (the pipeline's progress callback raises) when it is cancelled or passes its deadline.
Finished jobs, with their images, live in memory until deleted or until their TTL passes; the photos are dropped
as soon as the job starts running and are never written anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from instantid_edge.runtime.errors import InstantIDError

from .errors import JobNotFound, NotFinished, NotReady, QueueFull, job_error_code
from .event_hub import EventHub
from .job_run import Cancelled, DeadlineExceeded, check_faces, run_job, status_settings
from .job_settings import job_settings
from .jobs import EngineMetrics, JobError, JobEvent, JobRequest, JobState, JobStatus, Readiness, Submitted, TrackedJob

log = logging.getLogger("instantid_edge.serve")


@dataclass(frozen=True)
class EngineConfig:
    max_queue: int = 4  # jobs waiting besides the running one
    job_ttl: float = 600.0  # seconds a finished job and its image are kept
    job_timeout: float = 3600.0  # seconds a job may run; checked at every denoising step
    profile: str | None = None  # run profile applied under each job's own settings
    generator: str = "server"  # names this server in every image's provenance record
    sign_dir: Path | None = None  # C2PA signer folder (`provenance init`); None: $INSTANTID_EDGE_SIGNER, else unsigned


@dataclass(eq=False, kw_only=True)
class _Job(TrackedJob):
    request: JobRequest | None  # the photos: dropped when the job starts running
    settings: object  # GenerationSettings
    style: str | None


class LocalEngine:
    def __init__(self, load: Callable[[], object], config: EngineConfig = EngineConfig()):
        """`load()` returns the pipeline (the runtime's InstantIDPipeline, warmed up); it runs in the worker."""
        self.config = config
        self.on_failure: Callable[[BaseException], None] | None = None  # called if loading fails
        self._load = load
        self._lock = threading.Lock()
        self._work_waiting = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[str] = deque()
        self._pipe = None
        self._signer = None
        self._failure: str | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._sweeper: asyncio.Task | None = None
        self._check_limiter = None
        self._hub = EventHub()
        self._outcomes: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._stages: dict[str, list[float]] = {}
        self._mean_job_seconds = 10.0  # until the first job has run

    # -- lifecycle

    async def start(self) -> None:
        import anyio

        self._hub.attach(asyncio.get_running_loop())
        self._check_limiter = anyio.CapacityLimiter(1)  # one face check at a time beside the worker
        self._sweeper = asyncio.create_task(self._sweep_periodically())
        self._thread = threading.Thread(target=self._work, name="instantid-worker", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for job_id in list(self._queue):
                self._finish_locked(self._jobs[job_id], JobState.CANCELLED)
            self._queue.clear()
            for job in self._jobs.values():
                job.cancel_requested = True
            self._work_waiting.notify_all()
        if self._thread is not None:
            thread = self._thread
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 30.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        with self._lock:
            for job_id in list(self._jobs):
                self._forget_locked(job_id)

    async def ready(self) -> Readiness:
        with self._lock:
            if self._failure is not None:
                return Readiness(False, f"the model failed to load: {self._failure}")
            if self._stopping:
                return Readiness(False, "shutting down")
            if self._pipe is None:
                return Readiness(False, "loading and warming up the model")
            return Readiness(True, "model loaded and warmed up")

    # -- jobs

    async def submit(self, request: JobRequest) -> Submitted:
        import anyio

        readiness = await self.ready()
        if not readiness.ready:
            raise NotReady(readiness.detail)
        try:
            with self._lock:
                self._sweep_locked()
                self._check_capacity_locked()  # cheap refusals first: a full queue needs no face check
            settings = job_settings(request.settings, self.config.profile, self._pipe.package.manifest)
            await anyio.to_thread.run_sync(self._check_faces, request, limiter=self._check_limiter)
            with self._lock:
                self._check_capacity_locked()
                job = _Job(id=secrets.token_urlsafe(16), request=request, settings=settings, style=request.style,
                           created=time.time(), total=settings.steps)  # fmt: skip
                self._jobs[job.id] = job
                self._queue.append(job.id)
                position = len(self._queue)
                self._publish_locked(job, "queued", {"queue_position": position})
                self._work_waiting.notify()
        except QueueFull:
            self._count_refusal("queue_full")
            raise
        except InstantIDError as exc:
            self._count_refusal(job_error_code(exc))
            raise
        log.info("job %s queued at position %d", job.id[:8], position)
        return Submitted(job.id, position)

    async def status(self, job_id: str) -> JobStatus:
        with self._lock:
            self._sweep_locked()
            return self._status_locked(self._get_locked(job_id))

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        first = True
        while True:
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None:
                    if first:
                        raise JobNotFound(f"no job {job_id}")
                    return  # forgotten (deleted or expired) while streaming
                new, final = job.events[after:], job.state.finished
            first = False
            if new:
                for event in new:
                    yield event
                after = new[-1].seq
                continue  # look again before sleeping: more may have come while the reader was busy
            if final:
                return
            waiter = self._hub.waiter(job_id)  # no await since the snapshot: no notify can be missed
            try:
                await waiter
            finally:
                self._hub.discard(job_id, waiter)

    async def image(self, job_id: str) -> bytes:
        with self._lock:
            self._sweep_locked()
            job = self._get_locked(job_id)
            if job.image is None:
                raise NotFinished(f"job {job_id} is {job.state.value}; it has no image")
            return job.image

    async def cancel(self, job_id: str) -> JobStatus | None:
        with self._lock:
            self._sweep_locked()
            job = self._get_locked(job_id)
            if job.state is JobState.QUEUED:
                self._queue.remove(job_id)
                self._finish_locked(job, JobState.CANCELLED)
                self._announce_positions_locked()
                return self._status_locked(job)
            if job.state is JobState.RUNNING:
                job.cancel_requested = True
                return self._status_locked(job)
            self._forget_locked(job_id)
            return None

    async def metrics(self) -> EngineMetrics:
        with self._lock:
            running = sum(job.state is JobState.RUNNING for job in self._jobs.values())
            return EngineMetrics(
                queue_length=len(self._queue),
                running=running,
                outcomes=dict(self._outcomes),
                refused=dict(self._refused),
                stage_seconds={stage: (total, int(count)) for stage, (total, count) in self._stages.items()},
            )

    # -- the worker thread

    def _work(self) -> None:
        try:
            from instantid_edge.runtime.provenance.credentials import configured_signer

            self._signer = configured_signer(self.config.sign_dir)
            pipe = self._load()
        except BaseException as exc:  # noqa: BLE001 - any failure to load is reported, then the server stops
            with self._lock:
                self._failure = str(exc)
            log.error("could not load the pipeline: %s", exc)
            if self.on_failure is not None:
                self.on_failure(exc)
            return
        with self._lock:
            self._pipe = pipe
        log.info("ready: model loaded and warmed up")
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._work_waiting.wait()
                if self._stopping:
                    return
                job = self._jobs[self._queue.popleft()]
                job.state, job.started = JobState.RUNNING, time.time()
                request, job.request = job.request, None
                self._publish_locked(job, "started", {"total": job.total})
                self._announce_positions_locked()
            self._run(pipe, job, request)
            del request

    def _run(self, pipe, job: _Job, request: JobRequest) -> None:
        deadline = time.monotonic() + self.config.job_timeout

        def progress(done: int, total: int) -> None:
            if job.cancel_requested:
                raise Cancelled
            if time.monotonic() > deadline:
                raise DeadlineExceeded
            with self._lock:
                job.step, job.total = done, total
                self._publish_locked(job, "step", {"step": done, "total": total})

        record = {"generator": self.config.generator, "profile": self.config.profile, "style": job.style}
        outcome = run_job(pipe, request, job.settings, record, progress, self._signer, self.config.job_timeout)
        state, error, timings = outcome.state, outcome.error, outcome.timings
        with self._lock:
            job.timings, job.image = timings, outcome.image
            self._finish_locked(job, state, error)
            if state is JobState.DONE:
                for stage, value in timings.items():
                    total = self._stages.setdefault(stage, [0.0, 0])
                    total[0] += value
                    total[1] += 1
                self._mean_job_seconds = 0.7 * self._mean_job_seconds + 0.3 * outcome.seconds
        log.info(
            "job %s %s after %.2f s%s", job.id[:8], state.value, outcome.seconds, f" ({error.code})" if error else ""
        )

    def _check_faces(self, request: JobRequest) -> None:
        check_faces(self._pipe, request)

    # -- bookkeeping, all under self._lock

    def _get_locked(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id} (never submitted, deleted, or expired)")
        return job

    def _check_capacity_locked(self) -> None:
        if len(self._queue) >= self.config.max_queue:
            retry = min(3600, max(1, math.ceil(self._mean_job_seconds)))
            raise QueueFull(f"the queue is full ({self.config.max_queue} waiting); try again in {retry} s", retry)

    def _publish_locked(self, job: _Job, kind: str, data: dict) -> None:
        job.events.append(JobEvent(len(job.events) + 1, kind, data))
        self._hub.notify(job.id)

    def _announce_positions_locked(self) -> None:
        for position, job_id in enumerate(self._queue, start=1):
            self._publish_locked(self._jobs[job_id], "queued", {"queue_position": position})

    def _finish_locked(self, job: _Job, state: JobState, error: JobError | None = None) -> None:
        job.state, job.error, job.request = state, error, None
        job.finished = time.time()
        job.expires = job.finished + self.config.job_ttl
        job.expires_at = time.monotonic() + self.config.job_ttl
        self._outcomes[state.value] += 1
        data = {"code": error.code, "message": error.message} if error else {}
        if state is JobState.DONE:
            data = {"timings": job.timings}
        self._publish_locked(job, state.value, data)

    def _forget_locked(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.image = job.request = None
            self._hub.notify(job_id)

    def _sweep_locked(self) -> None:
        now = time.monotonic()
        for job_id in [job.id for job in self._jobs.values() if job.expires_at <= now]:
            self._forget_locked(job_id)

    async def _sweep_periodically(self) -> None:
        interval = min(1.0, max(0.05, self.config.job_ttl / 4))
        while True:
            await asyncio.sleep(interval)
            with self._lock:
                self._sweep_locked()

    def _count_refusal(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] += 1

    def _status_locked(self, job: _Job) -> JobStatus:
        position = self._queue.index(job.id) + 1 if job.state is JobState.QUEUED else None
        return job.status(status_settings(job.settings, job.style, self.config.profile), position)
