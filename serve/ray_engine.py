"""RayEngine: the Engine protocol (engine.py) over Ray Serve replicas, run inside the ingress deployment.

Where things live:
- a job runs on one worker replica (ray_worker.py), chosen by Serve's router; the replica's `run` call is a stream
  that yields once when the job is accepted and ends when the job has finished;
- the job's state, events and image live in the job registry, a named actor on the head node holding a JobBook
  (job_book.py), written by the replica as the job moves and read here for any client;
- this engine follows each job's stream: if the replica or its node dies, the stream fails and the job is turned
  into an error (`replica_lost`), so no job stays queued or running forever.
- the bounded queue is cluster-wide: the registry admits at most (replicas x (1 + max_queue)) unfinished jobs,
  and each replica takes at most 1 + max_queue run calls (Serve's max_ongoing_requests), so the router has room
  (at worst it holds a call for the moment a finished job's call takes to end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

from .errors import JobNotFound, NotReady, QueueFull, ServiceError, job_error_code
from .jobs import EngineMetrics, JobEvent, JobRequest, JobState, JobStatus, Readiness, Submitted

log = logging.getLogger("instantid_edge.serve")
EVENT_POLL_SECONDS = 0.1  # how often an event stream asks the registry for news
LIVENESS_SECONDS = 2.0  # how often the registered replicas are checked for a dead one (at most, on demand)


def _unwrapped(exc: BaseException) -> BaseException:
    """The service's or the runtime's own error behind a Ray task error (so the app maps it to its status)."""
    from instantid_edge.runtime.errors import InstantIDError

    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, ServiceError | InstantIDError) else exc


class RayEngine:
    def __init__(self, workers, registry_name: str, namespace: str, slots_per_replica: int):
        """`workers`: the DeploymentHandle of the worker deployment; `slots_per_replica`: 1 + max_queue."""
        self._workers = workers
        self._registry_name = registry_name
        self._namespace = namespace
        self._slots = slots_per_replica
        self._registry = None
        self._streams: dict[str, object] = {}  # job id -> its run call, while it lasts
        self._following: set[asyncio.Task] = set()
        self._stopping = False
        self._checked = 0.0  # monotonic time of the last liveness check

    async def _ask(self, method: str, *args):
        try:
            return await getattr(self._registry, method).remote(*args)
        except Exception as exc:
            raise _unwrapped(exc) from None

    # -- lifecycle

    async def start(self) -> None:
        import ray

        self._registry = ray.get_actor(self._registry_name, namespace=self._namespace)

    async def stop(self) -> None:
        self._stopping = True
        for stream in list(self._streams.values()):
            stream.cancel()

    async def _replicas(self) -> list:
        """The replicas that have loaded, less any found dead: a replica that dies while idle has no job whose call
        would fail, and must not count for capacity while Serve replaces it."""
        from ray.exceptions import RayActorError

        replicas = await self._ask("replicas")
        if time.monotonic() - self._checked < LIVENESS_SECONDS:
            return replicas
        self._checked = time.monotonic()
        alive = []
        for replica in replicas:
            try:
                if replica.actor is not None:
                    await asyncio.wait_for(replica.actor.__ray_ready__.remote(), LIVENESS_SECONDS)
            except RayActorError:
                await self._ask("replica_lost", replica.id)
                continue
            except asyncio.TimeoutError:
                pass  # busy or slow to answer is not dead
            alive.append(replica)
        return alive

    async def ready(self) -> Readiness:
        if self._stopping:
            return Readiness(False, "shutting down")
        replicas = await self._replicas()
        if not replicas:
            return Readiness(False, "loading and warming up the model on the replicas")
        nodes = len({replica.node for replica in replicas})
        return Readiness(True, f"model loaded and warmed up on {len(replicas)} replica(s), {nodes} node(s)")

    # -- jobs

    async def submit(self, request: JobRequest) -> Submitted:
        replicas = await self._replicas()
        if not replicas or self._stopping:
            raise NotReady("loading and warming up the model on the replicas" if replicas == [] else "shutting down")
        retry = await self._ask("admit", len(replicas) * self._slots)
        if retry is not None:
            raise QueueFull(
                f"every replica's queue is full ({len(replicas)} replica(s)); try again in {retry} s", retry
            )
        job_id = secrets.token_urlsafe(16)
        try:
            stream = self._workers.options(stream=True).run.remote(job_id, request)
            accepted = await stream.__anext__()
        except BaseException as exc:
            await self._ask("release")
            cause = _unwrapped(exc)
            if cause is not exc:
                await self._ask("count_refusal", job_error_code(cause))
                raise cause from None
            raise
        self._streams[job_id] = stream
        task = asyncio.create_task(self._follow(job_id, accepted["replica"], stream))
        self._following.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._following.discard)
        log.info("job %s queued at position %d on %s", job_id[:8], accepted["position"], accepted["replica"])
        return Submitted(job_id, accepted["position"])

    async def _follow(self, job_id: str, replica: str, stream) -> None:
        """Wait for the job's run call to end; if it ends without an outcome (the replica or its node died, the call
        was cancelled), the job becomes an error instead of staying queued or running forever."""
        from ray.exceptions import RayActorError

        reason = "the replica ended the job without an outcome"
        try:
            async for _ in stream:
                pass
        except asyncio.CancelledError:
            reason = "the service is shutting down"
            raise
        except RayActorError as exc:  # the replica's process or its node is gone
            reason = f"the replica running this job was lost ({type(exc).__name__}); please submit it again"
            log.warning("job %s: replica %s lost: %s", job_id[:8], replica, type(exc).__name__)
            with contextlib.suppress(Exception):
                await self._ask("replica_lost", replica)
        except Exception as exc:  # noqa: BLE001 - cancelled by us (a queued job), or anything else: the job must end
            reason = f"the job's call to its replica failed ({type(exc).__name__})"
        finally:
            self._streams.pop(job_id, None)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._ask("fail_unfinished", job_id, "replica_lost", reason))

    async def status(self, job_id: str) -> JobStatus:
        return await self._ask("status", job_id)

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        first = True
        while True:
            try:
                new, final = await self._ask("events_after", job_id, after)
            except JobNotFound:
                if first:
                    raise
                return  # forgotten (deleted or expired) while streaming
            first = False
            if new:
                for event in new:
                    yield event
                after = new[-1].seq
                continue
            if final:
                return
            await asyncio.sleep(EVENT_POLL_SECONDS)

    async def image(self, job_id: str) -> bytes:
        return await self._ask("image", job_id)

    async def cancel(self, job_id: str) -> JobStatus | None:
        status = await self._ask("cancel", job_id)
        stream = self._streams.get(job_id)
        if status is not None and status.state is JobState.CANCELLED and stream is not None:
            stream.cancel()  # a job cancelled while it waited: end its run call now, freeing the replica's slot
        return status

    async def metrics(self) -> EngineMetrics:
        return await self._ask("metrics")
