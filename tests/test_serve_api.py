"""The service's HTTP API on the tiny package: every endpoint and error path, for each engine.

local: in process (FastAPI's TestClient); each test builds its own engine over one shared, already loaded pipeline,
so limits (queue, TTL, deadline, token) can differ per test without reloading models.
ray: the same app deployed on a local Ray cluster per test (one worker replica), through Serve's HTTP proxy; only
inside the loopback-only namespace that tests/test_serve_ray.py starts (it runs `pytest -k ray` on this file).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402
from ray_cluster import inside_namespace, serve_app  # noqa: E402
from serving import SMALL_JOB, decompression_bomb, faceless_photo, parse_events, provenance  # noqa: E402

from instantid_edge.runtime.styles import load_styles  # noqa: E402
from instantid_edge.serve.app import AppConfig, create_app  # noqa: E402
from instantid_edge.serve.loading import PipelineSpec, load_pipeline  # noqa: E402
from instantid_edge.serve.local_engine import EngineConfig, LocalEngine  # noqa: E402

LONG_JOB = {**SMALL_JOB, "steps": "400"}  # about 30 s on the tiny package: long enough to act on while it runs


ENGINES = ["local", "ray"] if inside_namespace() else ["local"]


@dataclass(frozen=True)
class OnRay:
    """What the ray variant serves: the pipeline spec for its replicas, on this cluster."""

    cluster: object
    spec: PipelineSpec


@pytest.fixture(scope="module", params=ENGINES)
def pipe(request, runtime_package, face_pack):
    spec = PipelineSpec(runtime_package, threads=1, face_models=face_pack, memory="normal")
    if request.param == "ray":
        return OnRay(request.getfixturevalue("ray_cluster"), spec)
    return load_pipeline(spec)


@pytest.fixture(scope="module")
def face(astronaut) -> bytes:
    return astronaut.read_bytes()


@pytest.fixture(scope="module")
def strict_client(pipe):
    with serving(pipe, max_upload_bytes=2**20) as client:
        yield client


REFUSED: Counter[str] = Counter()  # what the bad-submission cases sent to strict_client


@contextlib.contextmanager
def serving(pipe, load=None, token=None, max_upload_bytes=10 * 2**20, **engine_options):
    if isinstance(pipe, OnRay):
        config = AppConfig(load_styles(), max_upload_bytes, token)
        with serve_app(pipe.cluster, pipe.spec, EngineConfig(**engine_options), config) as client:
            yield client
        return
    engine = LocalEngine(load or (lambda: pipe), EngineConfig(**engine_options))
    app = create_app(engine, AppConfig(load_styles(), max_upload_bytes, token))
    with TestClient(app) as client:
        if load is None:
            _wait(lambda: client.get("/readyz").status_code == 200, "ready")
        yield client


def _wait(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _submit(client, face: bytes, fields=SMALL_JOB, **extra):
    return client.post("/v1/jobs", files={"face": ("face.png", face, "image/png")}, data={**fields, **extra}, **{})


def _state(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def _error(response, status: int, code: str, match: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and re.search(match, body["message"]), body
    return body


def test_a_job_from_upload_to_deletion(pipe, face):
    with serving(pipe) as client:
        response = _submit(client, face, seed="11", style="watercolor")
        assert response.status_code == 202
        job = response.json()
        assert job["queue_position"] == 1 and response.headers["location"] == f"/v1/jobs/{job['id']}"

        events = parse_events(client.get(f"/v1/jobs/{job['id']}/events").text)
        kinds = [e["event"] for e in events]
        assert kinds[0] == "queued" and "started" in kinds and kinds[-1] == "done", kinds
        assert [e["data"]["step"] for e in events if e["event"] == "step"] == [1, 2]
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))

        status = _state(client, job["id"])
        assert status["state"] == "done" and status["step"] == status["total"] == 2
        assert status["settings"]["seed"] == 11 and status["settings"]["style"] == "watercolor"
        assert status["settings"]["prompt"] == load_styles().get("watercolor").apply("a portrait")[0]
        assert status["timings"]["denoise"] > 0 and status["expires"] > status["finished"]

        image = client.get(f"/v1/jobs/{job['id']}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.headers["cache-control"] == "no-store"
        record = provenance(image.content)
        assert record["size"] == (64, 64) and record["seed"] == 11 and record["style"] == "watercolor"

        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
        for path in ("", "/image", "/events"):
            _error(client.get(f"/v1/jobs/{job['id']}{path}"), 404, "not_found")
        _error(client.delete(f"/v1/jobs/{job['id']}"), 404, "not_found")


def test_served_images_carry_the_watermark_and_the_label(pipe, face):
    """Through the provenance package's one output call (512 px: smaller images hold too few watermark tiles)."""
    import io

    import numpy as np
    from PIL import Image

    from instantid_edge.runtime.provenance.watermark import detect

    with serving(pipe) as client:
        # a fixed seed: on the stand-in's noise images the watermark is missed now and then (seed 6 here scored
        # z = 6.2 against the 6.5 threshold; seeds 0-5 and 7 scored 7.9-9.8), which is the watermark's business
        fields = {**SMALL_JOB, "width": "512", "height": "512", "steps": "1", "seed": "5"}
        job_id = _submit(client, face, fields).json()["id"]
        client.get(f"/v1/jobs/{job_id}/events")
        png = client.get(f"/v1/jobs/{job_id}/image").content
    record = provenance(png)
    assert record["generator"] == "server" and record["size"] == (512, 512)
    found = detect(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    assert found.detected and found.payload.generator_name == "server"


def test_reconnecting_with_last_event_id_gets_only_later_events(pipe, face):
    with serving(pipe) as client:
        job_id = _submit(client, face).json()["id"]
        everything = parse_events(client.get(f"/v1/jobs/{job_id}/events").text)
        later = parse_events(client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "3"}).text)
        assert later == everything[3:] and later[0]["id"] == 4


def test_styles_are_listed(pipe):
    with serving(pipe) as client:
        styles = client.get("/v1/styles").json()["styles"]
    assert [s["name"] for s in styles] == [s.name for s in load_styles()]
    assert all("{prompt}" in s["prompt"] and s["label"] for s in styles)


@pytest.mark.parametrize(
    "case, status, code, match",
    [
        ("not multipart", 415, "unsupported_media_type", "multipart/form-data"),
        ("no face part", 422, "bad_form", "needs a `face` file part"),
        ("face given twice", 422, "bad_form", "more than once"),
        ("body cut short", 422, "bad_form", "ends before its closing boundary"),
        ("unknown field", 422, "bad_form", "colour"),
        ("steps not a number", 422, "bad_form", "steps"),
        ("not an image", 422, "bad_image", "cannot read the face photo as an image"),
        ("truncated photo", 422, "bad_image", "(?i)truncated"),
        ("decompression bomb", 422, "bad_image", "megapixels, above the limit"),
        ("no face", 422, "no_face", "no face found in the face photo"),
        ("no face in the pose photo", 422, "no_face", "no face found in the pose photo"),
        ("steps out of range", 422, "bad_settings", "steps must be between 1 and 1000"),
        ("width without height", 422, "bad_settings", "give both"),
        ("unknown style", 422, "bad_settings", "unknown style 'cubism'; choose one of none"),
        ("no prompt or style", 422, "bad_settings", "give a prompt, a style, or both"),
        ("unknown decoder", 422, "bad_settings", "decoder must be one of full, tiny"),
        ("decoder the package lacks", 422, "bad_settings", "this package has no tiny decoder .it has: full."),
        ("too large", 413, "upload_too_large", "limit of 1 MiB"),
    ],
)
def test_bad_submissions_get_a_clear_error(strict_client, face, case, status, code, match):
    photo = ("face.png", face, "image/png")
    small = ("small.png", faceless_photo(), "image/png")
    requests = {
        "not multipart": {"json": {"prompt": "x"}},
        "no face part": {"files": {"pose": photo}, "data": {"prompt": "x"}},
        "body cut short": {
            "content": b'--b\r\nContent-Disposition: form-data; name="face"; filename="f.png"\r\n\r\n\x89PNG',
            "headers": {"Content-Type": "multipart/form-data; boundary=b"},
        },
        "face given twice": {"files": [("face", small), ("face", small)], "data": {"prompt": "x"}},
        "unknown field": {"files": {"face": photo}, "data": {"prompt": "x", "colour": "red"}},
        "steps not a number": {"files": {"face": photo}, "data": {"prompt": "x", "steps": "many"}},
        "not an image": {"files": {"face": ("f.png", b"\x89PNG not really", "image/png")}, "data": {"prompt": "x"}},
        "truncated photo": {"files": {"face": ("f.png", face[:3000], "image/png")}, "data": {"prompt": "x"}},
        "decompression bomb": {
            "files": {"face": ("f.png", decompression_bomb(), "image/png")},
            "data": {"prompt": "x"},
        },
        "no face": {"files": {"face": ("f.png", faceless_photo(), "image/png")}, "data": {"prompt": "x"}},
        "no face in the pose photo": {
            "files": {"face": photo, "pose": ("p.png", faceless_photo(), "image/png")},
            "data": {"prompt": "x"},
        },
        "steps out of range": {"files": {"face": photo}, "data": {"prompt": "x", "steps": "0"}},
        "width without height": {"files": {"face": photo}, "data": {"prompt": "x", "width": "64"}},
        "unknown style": {"files": {"face": photo}, "data": {"style": "cubism"}},
        "no prompt or style": {"files": {"face": photo}, "data": {"seed": "1"}},
        "unknown decoder": {"files": {"face": photo}, "data": {"prompt": "x", "decoder": "medium"}},
        "decoder the package lacks": {"files": {"face": photo}, "data": {"prompt": "x", "decoder": "tiny"}},
        "too large": {"files": {"face": ("big.png", face + b"\0" * 400_000, "image/png")}, "data": {"prompt": "x"}},
    }
    _error(strict_client.post("/v1/jobs", **requests[case]), status, code, match)
    REFUSED[code] += 1


def test_after_bad_submissions_the_worker_still_runs_jobs_and_metrics_count_them(strict_client, face):
    assert sum(REFUSED.values()) == 18
    metrics = strict_client.get("/metrics").text
    for code, count in REFUSED.items():
        assert f'instantid_submissions_refused_total{{reason="{code}"}} {count}' in metrics
    assert strict_client.get("/v1/jobs").status_code == 405  # no listing of other visitors' jobs
    job = _submit(strict_client, face).json()
    assert parse_events(strict_client.get(f"/v1/jobs/{job['id']}/events").text)[-1]["event"] == "done"
    assert 'instantid_jobs_total{outcome="done"} 1' in strict_client.get("/metrics").text


def test_full_queue_refuses_with_retry_after_and_cancels_queued_and_running_jobs(pipe, face):
    with serving(pipe, max_queue=1) as client:
        running = _submit(client, face, LONG_JOB).json()["id"]
        _wait(lambda: _state(client, running)["step"] >= 1, "the first job to run")
        queued = _submit(client, face).json()
        assert queued["queue_position"] == 1
        refused = _submit(client, face)
        _error(refused, 429, "queue_full", "queue is full")
        assert int(refused.headers["retry-after"]) >= 1

        _error(client.get(f"/v1/jobs/{queued['id']}/image"), 409, "no_image", "queued")
        cancelled = client.delete(f"/v1/jobs/{queued['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

        stopping = client.delete(f"/v1/jobs/{running}")
        assert stopping.status_code == 202 and stopping.json()["cancel_requested"] is True
        step_at_cancel = stopping.json()["step"]
        events = parse_events(client.get(f"/v1/jobs/{running}/events").text)
        assert events[-1]["event"] == "cancelled"
        final = _state(client, running)
        assert final["state"] == "cancelled" and final["step"] <= step_at_cancel + 1 < final["total"]
        _error(client.get(f"/v1/jobs/{running}/image"), 409, "no_image", "cancelled")

        metrics = client.get("/metrics").text
        assert 'instantid_jobs_total{outcome="cancelled"} 2' in metrics
        assert 'instantid_submissions_refused_total{reason="queue_full"} 1' in metrics
        after = _submit(client, face)  # room again
        assert after.status_code == 202


def test_a_job_past_its_deadline_ends_in_error_and_frees_the_worker(pipe, face):
    with serving(pipe, job_timeout=0.5) as client:
        slow = _submit(client, face, LONG_JOB).json()["id"]
        events = parse_events(client.get(f"/v1/jobs/{slow}/events").text)
        assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == "deadline_exceeded"
        status = _state(client, slow)
        assert status["state"] == "error" and status["error"]["code"] == "deadline_exceeded"
        assert status["step"] < status["total"]
        quick = _submit(client, face).json()["id"]  # face analysis alone is under the deadline here
        assert parse_events(client.get(f"/v1/jobs/{quick}/events").text)[-1]["event"] in ("done", "error")


def test_finished_jobs_and_images_are_forgotten_after_the_ttl(pipe, face):
    with serving(pipe, job_ttl=2.0) as client:
        job_id = _submit(client, face).json()["id"]
        client.get(f"/v1/jobs/{job_id}/events")
        assert client.get(f"/v1/jobs/{job_id}/image").status_code == 200
        time.sleep(3.0)
        _error(client.get(f"/v1/jobs/{job_id}/image"), 404, "not_found")
        _error(client.get(f"/v1/jobs/{job_id}"), 404, "not_found")


def test_token_guards_every_v1_call(pipe, face):
    token = "s3cret-token-0123456789"
    with serving(pipe, token=token) as client:
        for method, path in (("get", "/v1/styles"), ("get", "/v1/jobs/x"), ("delete", "/v1/jobs/x")):
            _error(getattr(client, method)(path), 401, "unauthorized", "Bearer")
            bad = getattr(client, method)(path, headers={"Authorization": "Bearer wrong-token-0123456789"})
            _error(bad, 401, "unauthorized")
        refused = client.post("/v1/jobs", files={"face": ("f.png", face, "image/png")}, data=SMALL_JOB)
        _error(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/styles", headers=auth).status_code == 200
        job = client.post("/v1/jobs", files={"face": ("f.png", face, "image/png")}, data=SMALL_JOB, headers=auth)
        assert job.status_code == 202
        _error(client.get(f"/v1/jobs/{job.json()['id']}"), 401, "unauthorized")
        for open_path in ("/healthz", "/readyz", "/metrics", "/"):
            assert client.get(open_path).status_code == 200


def test_not_ready_until_loaded_and_warmed_then_ready(pipe, face):
    if isinstance(pipe, OnRay):
        pytest.skip("LocalEngine's load hook; Serve routes nothing to a replica before it has loaded")
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return pipe

    with serving(pipe, load=slow_load) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        refused = _submit(client, face)
        _error(refused, 503, "not_ready", "loading")
        assert int(refused.headers["retry-after"]) >= 1
        release.set()
        _wait(lambda: client.get("/readyz").status_code == 200, "ready")
        assert _submit(client, face).status_code == 202


def test_a_package_that_fails_to_load_is_reported(tmp_path, face_pack):
    failures = []
    spec = PipelineSpec(tmp_path / "no-package", face_models=face_pack)
    engine = LocalEngine(lambda: load_pipeline(spec), EngineConfig())
    engine.on_failure = failures.append
    with TestClient(create_app(engine, AppConfig(load_styles()))) as client:
        _wait(lambda: failures, "the load to fail")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "failed to load" in ready.json()["detail"]
    assert "no-package" in str(failures[0])


def test_kiosk_page_and_its_files_are_served_with_strict_headers(pipe):
    with serving(pipe) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for text in ("consent-box", "AI-generated", 'id="progress"', 'id="download"', "start-over"):
            assert text in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["cache-control"] == "no-store"
        for name in ("kiosk.js", "kiosk.css"):
            assert client.get(f"/kiosk/{name}").status_code == 200
        assert client.get("/docs").status_code == 404  # its scripts would come from a CDN
        schema = client.get("/openapi.json").json()
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/image",
                "/v1/styles", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])  # fmt: skip
        body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["required"] == ["face"] and body["properties"]["face"]["format"] == "binary"
