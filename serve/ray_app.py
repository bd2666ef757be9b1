"""The kiosk service on a Ray Serve cluster: the same app (create_app) in an ingress deployment over RayEngine,
worker replicas that each load the pipeline once, and the job registry actor on the head node.

    HTTP proxy (head) -> Front (ingress, head; create_app over RayEngine) -> PortraitWorker x N (any node)
                                   \\-> job registry (named actor, head) <-/

What a node failure loses: a worker node takes its replicas' queued and running jobs with it; they end as errors
(`replica_lost`, seen by the ingress when their run call fails); finished jobs and images live on the head and stay.
The head node holds the registry, the ingress and the proxy: losing it loses the service and every job.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import ray
from ray import serve

from .app import AppConfig, create_app
from .job_book import JobBook
from .loading import PipelineSpec
from .local_engine import EngineConfig
from .ray_engine import RayEngine
from .ray_worker import PortraitWorker

NAMESPACE = "instantid-edge"
APP_NAME = "instantid-edge"
ON_HEAD = {"node:__internal_head__": 0.001}  # Ray's built-in resource of the head node
log = logging.getLogger("instantid_edge.serve")


@dataclass(frozen=True)
class Scaling:
    replicas: int = 1
    cpus_per_replica: float = 1.0
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; None: a fixed number

    def options(self, max_queue: int) -> dict:
        """The worker deployment's Serve options."""
        options = {
            "max_ongoing_requests": 1 + max_queue,  # the running job and the queue: the router sends no more
            "ray_actor_options": {"num_cpus": self.cpus_per_replica},
            "graceful_shutdown_timeout_s": 5,
        }
        if self.autoscale is None:
            return {**options, "num_replicas": self.replicas}
        low, high = self.autoscale
        # one ongoing job per replica is the target: a queue forming anywhere asks for another replica
        # (a queue at a booth is worth a replica soon: Serve's default waits 30 s before scaling up)
        autoscaling = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 1, "upscale_delay_s": 5}
        return {**options, "autoscaling_config": autoscaling}


@serve.ingress()
class Front:
    """The ingress: the one app definition over RayEngine."""

    def __init__(self, workers, app_config: AppConfig, registry_name: str, slots_per_replica: int):
        self._engine = RayEngine(workers, registry_name, NAMESPACE, slots_per_replica)
        self._app_config = app_config

    def __serve_build_asgi_app__(self):
        return create_app(self._engine, self._app_config)


def start_registry(job_ttl: float, name: str | None = None):
    """The job registry: a detached named actor on the head node (stop it with ray.kill)."""
    name = name or f"instantid-edge-jobs-{secrets.token_hex(4)}"
    registry = (
        ray.remote(JobBook)
        .options(name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0, resources=ON_HEAD)
        .remote(job_ttl)
    )
    ray.get(registry.metrics.remote())  # started and answering
    return name, registry


def build_app(spec: PipelineSpec, config: EngineConfig, app_config: AppConfig, scaling: Scaling, registry_name: str):
    """The Serve application: ingress over the workers."""
    worker = serve.deployment(PortraitWorker, name="PortraitWorker", **scaling.options(config.max_queue))
    front = serve.deployment(
        Front, name="Front", num_replicas=1, ray_actor_options={"num_cpus": 0, "resources": ON_HEAD}
    )
    workers = worker.bind(spec, config, registry_name, NAMESPACE)
    return front.bind(workers, app_config, registry_name, 1 + config.max_queue)


def run_on_ray(spec: PipelineSpec, config: EngineConfig, app_config: AppConfig, scaling: Scaling, address: str | None,
                 host: str, port: int) -> None:  # fmt: skip
    """Run the service on a Ray cluster until SIGINT/SIGTERM: connect to `address` (or start Ray on this machine),
    start Serve's proxy on the head at host:port, deploy, wait; then remove what this command started."""
    import os
    import signal
    import threading

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a cluster of our own gets no dashboard (it serves a web page on 0.0.0.0 we do not need)
    ray.init(address=address, namespace=NAMESPACE, **({} if address else {"include_dashboard": False}))
    registry = None
    try:
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        registry_name, registry = start_registry(config.job_ttl)
        serve.run(build_app(spec, config, app_config, scaling, registry_name), name=APP_NAME, route_prefix="/")
        nodes = len({node["NodeID"] for node in ray.nodes() if node["Alive"]})
        log.info("ready on http://%s:%d/ (Ray cluster of %d node(s))", host, port, nodes)
        stopped = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopped.set())
        stopped.wait()
    finally:
        serve.shutdown()
        if registry is not None:
            ray.kill(registry)
        ray.shutdown()
