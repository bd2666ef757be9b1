"""PortraitWorker: one Ray Serve replica that loads the pipeline once and runs jobs one at a time.

Serve's router sends it at most 1 + max_queue `run` calls at once (max_ongoing_requests); the calls wait for the
replica's single turn in arrival order. Each call is a stream: it yields once when the job is accepted (after the
settings and face checks, which refuse a job by raising the runtime's error) and ends when the job has finished.
The job's progress goes to the job registry (job_book.py), which also tells the replica at each step whether the
client cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import ray
from ray import serve

from .job_run import Cancelled, DeadlineExceeded, check_faces, run_job, status_settings
from .job_settings import job_settings
from .jobs import JobRequest
from .loading import PipelineSpec, load_pipeline, verify_package
from .local_engine import EngineConfig


class PortraitWorker:
    def __init__(self, spec: PipelineSpec, config: EngineConfig, registry_name: str, namespace: str):
        from instantid_edge.runtime.provenance.credentials import configured_signer

        from .cli import limit_malloc_arenas

        limit_malloc_arenas()
        self._config = config
        self._signer = configured_signer(config.sign_dir)
        verify_package(spec.package)  # this node's copy (or mount) of the package is the one the manifest describes
        self._pipe = load_pipeline(spec)  # once per replica; Serve routes nothing here until this returns
        self._registry = ray.get_actor(registry_name, namespace=namespace)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        self._waiting: list[str] = []  # accepted jobs waiting for this replica's turn, in order
        self._turn: asyncio.Lock | None = None
        self._face_check = threading.Lock()  # one face check at a time beside the running job
        actor = ray.get_runtime_context().current_actor
        ray.get(self._registry.register_replica.remote(self.replica, self.node, os.getpid(), actor))

    async def run(self, job_id: str, request: JobRequest):
        config = self._config
        settings = job_settings(request.settings, config.profile, self._pipe.package.manifest)
        await asyncio.to_thread(self._check_faces, request)
        if self._turn is None:
            self._turn = asyncio.Lock()  # created in the replica's event loop
        self._waiting.append(job_id)
        try:
            shown = status_settings(settings, request.style, config.profile)
            await self._registry.add.remote(job_id, shown, settings.steps, self.replica, self.node, len(self._waiting))
            yield {"replica": self.replica, "node": self.node, "position": len(self._waiting)}
            async with self._turn:
                self._waiting.remove(job_id)
                await self._announce_positions()
                if not await self._registry.start.remote(job_id):
                    return  # cancelled while it waited
                record = {"generator": config.generator, "profile": config.profile, "style": request.style}
                abandoned = threading.Event()  # the call was cancelled (shutdown): stop at the next step
                try:
                    outcome = await asyncio.to_thread(self._execute, job_id, request, settings, record, abandoned)
                except asyncio.CancelledError:
                    abandoned.set()
                    raise
                del request
                await self._registry.finish.remote(
                    job_id, outcome.state, outcome.error, outcome.image, outcome.timings, outcome.seconds
                )
            yield {"state": outcome.state.value}
        finally:
            if job_id in self._waiting:
                self._waiting.remove(job_id)

    async def __del__(self):
        """Serve calls this when it stops the replica (scaling down, redeploying): the registry stops counting its
        queue slots. A replica that dies instead is struck off by the ingress when its job's call fails."""
        with contextlib.suppress(Exception):
            await self._registry.replica_lost.remote(self.replica)

    def _check_faces(self, request: JobRequest) -> None:
        with self._face_check:
            check_faces(self._pipe, request)

    def _execute(self, job_id: str, request: JobRequest, settings, record: dict, abandoned: threading.Event):
        deadline = time.monotonic() + self._config.job_timeout

        def progress(done: int, total: int) -> None:
            if time.monotonic() > deadline:
                raise DeadlineExceeded
            if abandoned.is_set() or ray.get(self._registry.step.remote(job_id, done, total)):
                raise Cancelled

        return run_job(self._pipe, request, settings, record, progress, self._signer, self._config.job_timeout)

    async def _announce_positions(self) -> None:
        for position, waiting_id in enumerate(list(self._waiting), start=1):
            await self._registry.move_up.remote(waiting_id, position)
