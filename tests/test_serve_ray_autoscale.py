"""`serve --engine ray --autoscale 1:2` on the two-node cluster: a full queue gets 429 and asks Serve for another
replica; once it has loaded, the service takes more. Runs inside the namespace that tests/test_serve_ray.py
starts, after that module's server has stopped (the cluster has one CPU per node)."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve,cluster]'")
httpx = pytest.importorskip("httpx", reason="the tests' HTTP client: pip install httpx")

from serving import SMALL_JOB, get, running_server  # noqa: E402

LONG_JOB = {**SMALL_JOB, "steps": "400"}


def test_on_two_nodes_autoscaling_adds_a_replica_when_the_queue_is_full(ray_cluster, runtime_package, face_pack,
                                                                          astronaut, tmp_path):  # fmt: skip
    options = ("--engine", "ray", "--ray-address", ray_cluster.address, "--autoscale", "1:2", "--max-queue", "1")
    face = {"face": ("face.png", astronaut.read_bytes(), "image/png")}
    with running_server(runtime_package, face_pack, *options, port=ray_cluster.http_port, env=ray_cluster.env,
                        log=tmp_path / "serve.log", ready_timeout=240) as (url, _):  # fmt: skip
        detail = lambda: json.loads(get(f"{url}/readyz")[1])["detail"]  # noqa: E731
        assert "1 replica(s)" in detail()
        with httpx.Client(base_url=url, timeout=120) as client:
            answers = [client.post("/v1/jobs", files=face, data=LONG_JOB) for _ in range(3)]
            assert [a.status_code for a in answers] == [202, 202, 429], [a.text for a in answers]
            deadline = time.monotonic() + 150
            while "2 replica(s)" not in detail():
                assert time.monotonic() < deadline, f"Serve did not add a replica: {detail()}"
                time.sleep(1)
            more = client.post("/v1/jobs", files=face, data=LONG_JOB)
            assert more.status_code == 202, more.text
            for answer in [*answers[:2], more]:  # stop the long jobs so the server stops quickly
                client.delete(f"/v1/jobs/{answer.json()['id']}")
