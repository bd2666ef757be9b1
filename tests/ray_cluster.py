"""A local Ray cluster for the service's Ray tests: head and worker nodes started with `ray start` on 127.0.0.1,
token auth, no usage stats, Serve's proxy on the head. Only ever inside the private namespace that
tests/test_serve_ray.py starts (loopback-only network, own PID namespace): Ray's processes probe cloud-metadata
and usage-stats addresses at start, and `ray stop` kills Ray processes by name across its PID namespace."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from serving import free_port

INSIDE = "INSTANTID_EDGE_RAY_NAMESPACE"  # set by the test that starts the namespace
NAMESPACE_COMMAND = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--"]


def inside_namespace() -> bool:
    return os.environ.get(INSIDE) == "1"


def cluster_env(folder: Path) -> dict[str, str]:
    """What every process of a test cluster needs, the driver included (Ray reads it when imported): the same auth
    token (token auth on, as a real cluster should run; a node without the token cannot join) and no usage stats."""
    token = folder / "ray-token"
    token.write_text(secrets.token_hex(32))
    return {
        INSIDE: "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        # Ray's own memory monitor kills its workers when the *machine* passes 95% used, whoever uses it: on a
        # shared test machine another job's peak then kills Serve's proxy or a replica mid-test. Off in tests;
        # the kernel's OOM killer still guards the machine.
        "RAY_memory_monitor_refresh_ms": "0",
    }


@dataclass(frozen=True)
class Cluster:
    address: str  # the head's GCS, 127.0.0.1:PORT
    http_port: int  # Serve's proxy for the in-process apps
    env: dict[str, str]  # what every process of this cluster needs (token auth, no usage stats)


def _ray(*args: str, env: dict) -> None:
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, object_store_mib: int = 150):
    """Head + (nodes - 1) workers, one CPU each; this process is connected as a driver."""
    assert inside_namespace() and os.environ.get("RAY_AUTH_TOKEN_PATH"), "only in the namespace of test_serve_ray"
    import ray
    from ray import serve

    # short: Ray's socket paths must stay under the 107-character limit of Unix sockets
    folder = Path(tempfile.mkdtemp(prefix="ray-t", dir="/tmp"))
    env = dict(os.environ)  # token auth and no usage stats: set for the whole session (cluster_env), read at import
    port = free_port()
    node = ["--num-cpus", str(cpus_per_node), "--object-store-memory", str(object_store_mib * 2**20),
            "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]  # fmt: skip
    try:
        _ray("start", "--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(folder / "r"),
             *node, env=env)  # fmt: skip
        for _ in range(nodes - 1):
            _ray("start", "--address", f"127.0.0.1:{port}", *node, env=env)
        ray.init(address=f"127.0.0.1:{port}", namespace="instantid-edge", log_to_driver=False)
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < nodes:
            assert time.monotonic() < deadline, "the worker nodes did not join"
            time.sleep(0.5)
        yield Cluster(f"127.0.0.1:{port}", free_port(), env)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        # safe here only: this PID namespace holds nothing but this test session's processes
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def serve_app(cluster: Cluster, spec, engine_config, app_config, replicas: int = 1):
    """The service's app (ingress + workers + a fresh job registry) on the cluster at "/", for one test; yields an
    httpx client for Serve's proxy (the same calls as FastAPI's TestClient)."""
    import httpx
    import ray
    from ray import serve

    from instantid_edge.serve.ray_app import Scaling, build_app, start_registry

    # idempotent; again after a `serve` command on this cluster has shut Serve down on its way out
    serve.start(http_options={"host": "127.0.0.1", "port": cluster.http_port}, proxy_location="HeadOnly")
    name, registry = start_registry(engine_config.job_ttl)
    try:
        app = build_app(spec, engine_config, app_config, Scaling(replicas, 1.0), name)
        serve.run(app, name="api", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{cluster.http_port}", timeout=120) as client:
            yield client
    finally:
        with contextlib.suppress(Exception):
            serve.delete("api")
        ray.kill(registry)
