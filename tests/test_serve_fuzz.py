"""Fuzzing the service's API from its own OpenAPI document (schemathesis) against a real server: no generated
request may get a 5xx, and every answer must match what the document says.

The document is built from the app at import (schemathesis parametrizes at collection time; its lazy fixture
loader does not work with pytest 9), and the test checks it is exactly what the server serves at /openapi.json.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis: pip install schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving import get, running_server  # noqa: E402

from instantid_edge.runtime.styles import load_styles  # noqa: E402
from instantid_edge.serve.app import AppConfig, create_app  # noqa: E402
from instantid_edge.serve.local_engine import LocalEngine  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
DOCUMENT = create_app(LocalEngine(lambda: None), AppConfig(load_styles())).openapi()  # the engine never starts
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def server(runtime_package, face_pack, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with running_server(runtime_package, face_pack, "--max-upload-mb", "1", log=log) as (url, _):
        status, body = get(f"{url}/openapi.json")
        assert status == 200 and json.loads(body) == json.loads(json.dumps(DOCUMENT))
        yield url


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case, server):
    case.call_and_validate(base_url=server, checks=CHECKS, timeout=30)
