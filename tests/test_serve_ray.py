"""The service on a Ray Serve cluster (`serve --engine ray`), tested on a two-node local cluster.

Every Ray test runs inside a private namespace: a network with only loopback (Ray's processes probe cloud-metadata
and usage-stats addresses at start; nothing may leave the machine) and its own PID namespace (so that stopping
the cluster can touch nothing else, and the kernel ends every process of it when the session ends). The one test
outside, test_ray_suite_in_a_private_namespace, starts that namespace and runs, inside it, the API suite's ray
variant (tests/test_serve_api.py) and the cluster tests below.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# an environment without the service (the torch-free runtime's) has nothing to run on Ray: skip there, CI or not
pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve,cluster]'")
pytest.importorskip("httpx", reason="the tests' HTTP client: pip install httpx")

from ray_cluster import INSIDE, NAMESPACE_COMMAND, cluster_env  # noqa: E402
from serving import SMALL_JOB, get, parse_events, running_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# what runs inside: the API suite's ray variant (less not_ready, LocalEngine's load hook) and the two-node tests
SELECTION = "on_two_nodes or (test_serve_api and ray and not not_ready)"
LONG_JOB = {**SMALL_JOB, "steps": "400"}  # about 30 s on the tiny package


def _required(reason: str):
    """Under CI the Ray tests must run: what would skip them elsewhere fails there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the Ray tests)")
    pytest.skip(reason)


def test_ray_suite_in_a_private_namespace(runtime_package, tmp_path):
    if os.environ.get(INSIDE) == "1":
        pytest.skip("already inside the namespace")
    if importlib.util.find_spec("ray") is None:
        _required("Ray Serve is not installed: pip install '.[cluster]'")
    probe = subprocess.run([*NAMESPACE_COMMAND, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        _required(f"cannot make a private network and PID namespace (needs root or user namespaces): {probe.stderr}")
    inner = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", "-rs", "-x",
             "tests/test_serve_api.py", "tests/test_serve_ray.py", "tests/test_serve_ray_autoscale.py",
             "-k", SELECTION]  # fmt: skip
    env = {**os.environ, **cluster_env(tmp_path), "INSTANTID_EDGE_TEST_PACKAGE": str(runtime_package)}
    command = [*NAMESPACE_COMMAND, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, report
    assert "skipped" not in done.stdout.splitlines()[-1], report  # everything selected ran in there
    assert " passed" in done.stdout.splitlines()[-1], report
    print(done.stdout.splitlines()[-1])


# -- inside the namespace


@pytest.fixture(scope="module")
def cluster_server(ray_cluster, runtime_package, face_pack, tmp_path_factory):
    """`instantid-edge serve --engine ray --replicas 2 --max-queue 1` against the two-node cluster."""
    log = tmp_path_factory.mktemp("ray-serve") / "serve.log"
    options = ("--engine", "ray", "--ray-address", ray_cluster.address, "--replicas", "2", "--max-queue", "1")
    with running_server(runtime_package, face_pack, *options, port=ray_cluster.http_port, env=ray_cluster.env,
                        log=log, ready_timeout=240) as (url, process):  # fmt: skip
        # ready as soon as one replica has loaded; the tests want both
        _wait(lambda: "2 replica(s), 2 node(s)" in json.loads(get(f"{url}/readyz")[1])["detail"], "both replicas")
        yield url, process


def _client(url: str):
    import httpx

    return httpx.Client(base_url=url, timeout=120)


def _submit(client, face: bytes, fields=SMALL_JOB, **extra):
    return client.post("/v1/jobs", files={"face": ("face.png", face, "image/png")}, data={**fields, **extra})


def _wait(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _registry():
    """The job registry actor the `serve` command started (its name is its own)."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("instantid-edge-jobs-")]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_on_two_nodes_jobs_spread_over_both_and_every_full_queue_refuses(cluster_server, astronaut):
    import ray

    url, _ = cluster_server
    face = astronaut.read_bytes()
    with _client(url) as client:
        # 2 replicas x (1 running + 1 queued): four jobs fit, the fifth finds every queue full
        fields = {**SMALL_JOB, "steps": "120"}
        accepted = [_submit(client, face, fields, seed=str(seed)) for seed in range(4)]
        assert [r.status_code for r in accepted] == [202] * 4, [r.text for r in accepted]
        refused = _submit(client, face, fields)
        assert refused.status_code == 429 and refused.json()["error"] == "queue_full", refused.text
        assert int(refused.headers["retry-after"]) >= 1
        statuses = []
        for response in accepted:
            job_id = response.json()["id"]
            assert parse_events(client.get(f"/v1/jobs/{job_id}/events").text)[-1]["event"] == "done"
            statuses.append(client.get(f"/v1/jobs/{job_id}").json())
        nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(nodes) == 2
        assert {status["node"] for status in statuses} == nodes, statuses
        assert len({status["replica"] for status in statuses}) == 2
        assert _submit(client, face).status_code == 202  # room again


def test_on_two_nodes_results_equal_the_single_process_servers(cluster_server, runtime_package, face_pack, astronaut):
    url, _ = cluster_server
    face = astronaut.read_bytes()
    fields = {**SMALL_JOB, "seed": "7", "style": "watercolor"}
    with _client(url) as client:
        job_id = _submit(client, face, fields).json()["id"]
        assert parse_events(client.get(f"/v1/jobs/{job_id}/events").text)[-1]["event"] == "done"
        on_ray = client.get(f"/v1/jobs/{job_id}/image").content
    with running_server(runtime_package, face_pack) as (local_url, _), _client(local_url) as client:
        job_id = _submit(client, face, fields).json()["id"]
        assert parse_events(client.get(f"/v1/jobs/{job_id}/events").text)[-1]["event"] == "done"
        local = client.get(f"/v1/jobs/{job_id}/image").content
    assert np.array_equal(_pixels(on_ray), _pixels(local))


def test_on_two_nodes_a_killed_replica_fails_its_job_and_serve_restores_it(cluster_server, astronaut):
    import ray

    url, _ = cluster_server
    face = astronaut.read_bytes()
    registry = _registry()
    with _client(url) as client:
        victim = _submit(client, face, LONG_JOB).json()["id"]
        running = _wait(lambda: (s := client.get(f"/v1/jobs/{victim}").json())["step"] >= 1 and s, "the job to run")
        pids = {replica.id: replica.pid for replica in ray.get(registry.replicas.remote())}
        os.kill(pids[running["replica"]], signal.SIGKILL)

        failed = _wait(lambda: (s := client.get(f"/v1/jobs/{victim}").json())["state"] != "running" and s, "an end")
        assert failed["state"] == "error" and failed["error"]["code"] == "replica_lost", failed
        events = parse_events(client.get(f"/v1/jobs/{victim}/events").text)
        assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == "replica_lost"

        for seed in range(2):  # the survivor (and soon the replacement) take the next jobs
            job_id = _submit(client, face, seed=str(seed)).json()["id"]
            assert parse_events(client.get(f"/v1/jobs/{job_id}/events").text)[-1]["event"] == "done"

        def restored():
            replicas = {replica.id for replica in ray.get(registry.replicas.remote())}
            return len(replicas) == 2 and running["replica"] not in replicas

        _wait(restored, "Serve to restore the replica", timeout=180)
        assert "2 replica(s)" in client.get("/readyz").json()["detail"]

        # a replica that dies idle has no job whose call fails: the liveness check strikes it off (readyz runs it)
        idle = ray.get(registry.replicas.remote())[0]
        os.kill(idle.pid, signal.SIGKILL)

        def struck_off():
            client.get("/readyz")
            return idle.id not in {replica.id for replica in ray.get(registry.replicas.remote())}

        _wait(struck_off, "the dead idle replica to be struck off", timeout=60)
        _wait(lambda: "2 replica(s)" in client.get("/readyz").json()["detail"], "its replacement", timeout=180)


def test_cluster_options_need_the_ray_engine(runtime_package, face_pack):
    """Refused before anything starts (no Ray needed)."""
    command = [sys.executable, "-m", "instantid_edge.cli", "serve", "--package", str(runtime_package),
               "--replicas", "2", "--autoscale", "1:2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "--replicas, --autoscale need --engine ray" in done.stderr
    bad = subprocess.run([*command[:5], str(runtime_package), "--engine", "ray", "--autoscale", "3:1"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "1 <= MIN <= MAX" in bad.stderr


def test_a_package_copy_that_differs_from_its_manifest_fails_by_name(runtime_package, tmp_path):
    """What a replica checks before loading, on a node with its own copy (no Ray needed)."""
    import shutil

    from instantid_edge.runtime.errors import PackageError
    from instantid_edge.serve.loading import verify_package

    copy = tmp_path / "pkg"
    shutil.copytree(runtime_package, copy)
    verify_package(copy)
    altered = next(path for path in sorted(copy.rglob("*.json")) if path.name != "manifest.json")
    altered.write_bytes(altered.read_bytes() + b" ")
    with pytest.raises(PackageError, match=f"differs from its manifest: {altered.relative_to(copy)} has"):
        verify_package(copy)


def test_scaling_gives_serve_a_bounded_replica_queue_and_valid_autoscaling():
    """The worker deployment's options as Serve reads them (importing Serve starts nothing)."""
    if importlib.util.find_spec("ray") is None:
        _required("Ray Serve is not installed: pip install '.[cluster]'")
    from ray import serve

    from instantid_edge.serve.ray_app import Scaling
    from instantid_edge.serve.ray_worker import PortraitWorker

    fixed = serve.deployment(PortraitWorker, **Scaling(3, 2.0).options(max_queue=4))
    assert fixed.num_replicas == 3 and fixed.max_ongoing_requests == 5
    assert fixed.ray_actor_options["num_cpus"] == 2.0
    scaled = serve.deployment(PortraitWorker, **Scaling(autoscale=(1, 4)).options(max_queue=2))
    config = scaled._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas, config.target_ongoing_requests) == (1, 4, 1)
