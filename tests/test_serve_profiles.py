"""`instantid-edge serve --profile fast` on the fast path's package (the tiny stand-in with the SDXL-Lightning
stand-in fused and the TAESD-XL stand-in): jobs run with the profile's sampling and decoder, and the fields a
client sends win over it, over real HTTP to a real server process.

Apart from test_serve_cli.py because building this package needs torch (export); CI's torch-free environment
runs test_serve_cli.py and must see no skip there.
"""

from __future__ import annotations

import pytest
from serving import parse_events, provenance, running_server

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the test client needs httpx: pip install httpx")

pytestmark = pytest.mark.torch

SIZE = {"width": "64", "height": "64"}


def _run_job(client: httpx.Client, face: bytes, fields: dict) -> tuple[dict, list[dict], dict]:
    """Submit, follow the events to the end, and return the final status, the events and the image's record."""
    response = client.post("/v1/jobs", files={"face": ("face.png", face, "image/png")}, data=fields)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    events = parse_events(client.get(f"/v1/jobs/{job_id}/events").text)
    assert events[-1]["event"] == "done", events[-1]
    status = client.get(f"/v1/jobs/{job_id}").json()
    record = provenance(client.get(f"/v1/jobs/{job_id}/image").content)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    return status, events, record


def test_jobs_run_with_the_fast_profile_under_the_clients_fields(fast_package, face_pack, astronaut):
    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.profiles import package_profiles
    from instantid_edge.runtime.settings import GenerationSettings

    fast = package_profiles(read_manifest(fast_package))["fast"]
    default = GenerationSettings(prompt="")
    # what makes this test able to tell the profile was applied: it differs from the defaults a job would get
    assert fast.unavailable is None and fast.steps != default.steps and fast.decoder != default.decoder, fast
    assert fast.guidance != default.guidance, fast
    face = astronaut.read_bytes()
    with (
        running_server(fast_package, face_pack, "--profile", "fast") as (url, _),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        status, events, record = _run_job(client, face, {**SIZE, "prompt": "a portrait"})
        assert status["step"] == status["total"] == fast.steps, status
        assert [e["data"]["step"] for e in events if e["event"] == "step"] == list(range(1, fast.steps + 1))
        for name in ("sampler", "timestep_spacing", "guidance", "decoder", "steps"):
            assert status["settings"][name] == getattr(fast, name), (name, status["settings"])
            assert record["settings"][name] == getattr(fast, name), (name, record["settings"])
        assert status["settings"]["profile"] == record["profile"] == "fast"

        # a client's steps and decoder win; the rest of the profile still applies
        status, _, record = _run_job(client, face, {**SIZE, "prompt": "a portrait", "steps": "2", "decoder": "full"})
        assert status["step"] == status["total"] == 2, status
        assert record["settings"]["decoder"] == "full" and record["settings"]["guidance"] == fast.guidance

        response = client.post(
            "/v1/jobs", files={"face": ("face.png", face, "image/png")}, data={"prompt": "x", "decoder": "medium"}
        )
        assert response.status_code == 422 and response.json()["error"] == "bad_settings", response.text
        assert "decoder must be one of full, tiny" in response.json()["message"]
