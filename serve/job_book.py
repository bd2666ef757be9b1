"""JobBook: every job's state, events and image for an engine whose jobs run elsewhere (Ray replicas).

Plain Python, single-threaded: the Ray engine runs one JobBook inside a named actor (ray_registry.py), so that
any ingress replica can answer for any job, whichever replica runs it. Workers write to it (accepted, started,
each step, finished), the ingress reads from it and asks it for cancellation; it also keeps the cluster-wide
count of admitted jobs (the bounded queue) and the replicas that have loaded the pipeline.

Errors are the service's own (JobNotFound, NotFinished); they cross the actor boundary and the engine re-raises
them unwrapped.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .errors import JobNotFound, NotFinished
from .jobs import EngineMetrics, JobError, JobEvent, JobState, JobStatus, TrackedJob


@dataclass(eq=False, kw_only=True)
class JobRecord(TrackedJob):
    settings: dict[str, Any]  # what the job runs with (resolved seed, style, profile)
    replica: str
    node: str
    queue_position: int | None = None


@dataclass(frozen=True)
class Replica:
    id: str
    node: str
    pid: int
    actor: object = None  # its Ray actor handle, to tell whether it is still alive (the engine asks; this does not)


class JobBook:
    def __init__(self, job_ttl: float = 600.0):
        self.job_ttl = job_ttl
        self._jobs: dict[str, JobRecord] = {}
        self._pending = 0  # admitted submissions not yet accepted by a replica
        self._replicas: dict[str, Replica] = {}
        self._outcomes: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._stages: dict[str, list[float]] = {}
        self._mean_job_seconds = 10.0  # until the first job has run

    # -- admission: the cluster-wide bounded queue

    def admit(self, capacity: int) -> int | None:
        """Take a queue slot if fewer than `capacity` jobs are queued, running or being submitted; else count a
        refusal and return the seconds to wait. A slot is given back when its job finishes (or by release())."""
        unfinished = sum(not job.state.finished for job in self._jobs.values())
        if self._pending + unfinished >= capacity:
            self._refused["queue_full"] += 1
            return min(3600, max(1, math.ceil(self._mean_job_seconds)))
        self._pending += 1
        return None

    def release(self) -> None:
        """A submission admitted but refused by its replica (no face, bad settings) or lost on its way."""
        self._pending = max(0, self._pending - 1)

    def count_refusal(self, reason: str) -> None:
        self._refused[reason] += 1

    # -- replicas

    def register_replica(self, replica: str, node: str, pid: int, actor: object = None) -> None:
        self._replicas[replica] = Replica(replica, node, pid, actor)

    def replica_lost(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    # -- written by the replica that runs the job

    def add(self, job_id: str, settings: dict, total: int, replica: str, node: str, position: int) -> None:
        self._sweep()
        self._pending = max(0, self._pending - 1)  # the job holds its slot itself now, until it finishes
        job = JobRecord(id=job_id, settings=settings, total=total, replica=replica, node=node, created=time.time(),
                        queue_position=position)  # fmt: skip
        self._jobs[job_id] = job
        self._publish(job, "queued", {"queue_position": position})

    def move_up(self, job_id: str, position: int) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.state is JobState.QUEUED and job.queue_position != position:
            job.queue_position = position
            self._publish(job, "queued", {"queue_position": position})

    def start(self, job_id: str) -> bool:
        """False when the job is gone or was cancelled while it waited: the replica then skips it."""
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.QUEUED:
            return False
        job.state, job.started, job.queue_position = JobState.RUNNING, time.time(), None
        self._publish(job, "started", {"total": job.total})
        return True

    def step(self, job_id: str, done: int, total: int) -> bool:
        """Record a finished step; True when the job should stop (cancelled or forgotten)."""
        job = self._jobs.get(job_id)
        if job is None or job.cancel_requested or job.state.finished:
            return True
        job.step, job.total = done, total
        self._publish(job, "step", {"step": done, "total": total})
        return False

    def finish(self, job_id: str, state: JobState, error: JobError | None, image: bytes | None,
               timings: dict[str, float], seconds: float) -> None:  # fmt: skip
        job = self._jobs.get(job_id)
        if job is None or job.state.finished:
            return
        job.timings, job.image = timings, image
        self._finish(job, state, error)
        if state is JobState.DONE:
            for stage, value in timings.items():
                total = self._stages.setdefault(stage, [0.0, 0])
                total[0] += value
                total[1] += 1
            self._mean_job_seconds = 0.7 * self._mean_job_seconds + 0.3 * seconds

    def fail_unfinished(self, job_id: str, code: str, message: str) -> None:
        """The job's replica (or its node) is gone: a job it held must not stay queued or running forever."""
        job = self._jobs.get(job_id)
        if job is not None and not job.state.finished:
            self._finish(job, JobState.ERROR, JobError(code, message))

    # -- read and cancelled through the API

    def status(self, job_id: str) -> JobStatus:
        self._sweep()
        return self._status(self._get(job_id))

    def events_after(self, job_id: str, after: int) -> tuple[list[JobEvent], bool]:
        """(the events with seq > after, whether the job is finished); JobNotFound once forgotten."""
        self._sweep()
        job = self._get(job_id)
        return job.events[after:], job.state.finished

    def image(self, job_id: str) -> bytes:
        self._sweep()
        job = self._get(job_id)
        if job.image is None:
            raise NotFinished(f"job {job_id} is {job.state.value}; it has no image")
        return job.image

    def cancel(self, job_id: str) -> JobStatus | None:
        self._sweep()
        job = self._get(job_id)
        if job.state is JobState.QUEUED:
            self._finish(job, JobState.CANCELLED)
            return self._status(job)
        if job.state is JobState.RUNNING:
            job.cancel_requested = True
            return self._status(job)
        del self._jobs[job_id]
        return None

    def metrics(self) -> EngineMetrics:
        self._sweep()
        states = Counter(job.state for job in self._jobs.values())
        return EngineMetrics(
            queue_length=states[JobState.QUEUED],
            running=states[JobState.RUNNING],
            outcomes=dict(self._outcomes),
            refused=dict(self._refused),
            stage_seconds={stage: (total, int(count)) for stage, (total, count) in self._stages.items()},
        )

    # -- inside

    def _get(self, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id} (never submitted, deleted, or expired)")
        return job

    def _publish(self, job: JobRecord, kind: str, data: dict) -> None:
        job.events.append(JobEvent(len(job.events) + 1, kind, data))

    def _finish(self, job: JobRecord, state: JobState, error: JobError | None = None) -> None:
        job.state, job.error, job.queue_position = state, error, None
        job.finished = time.time()
        job.expires = job.finished + self.job_ttl
        job.expires_at = time.monotonic() + self.job_ttl
        self._outcomes[state.value] += 1
        data = {"code": error.code, "message": error.message} if error else {}
        if state is JobState.DONE:
            data = {"timings": job.timings}
        self._publish(job, state.value, data)

    def _sweep(self) -> None:
        now = time.monotonic()
        for job_id in [job.id for job in self._jobs.values() if job.expires_at <= now]:
            del self._jobs[job_id]

    def _status(self, job: JobRecord) -> JobStatus:
        return job.status(dict(job.settings), job.queue_position, replica=job.replica, node=job.node)
