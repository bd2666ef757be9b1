"""The one app definition: `create_app(engine, config)` gives the FastAPI app for any engine.

Routes translate HTTP to engine calls and errors to JSON bodies; they hold no job logic (engine.py).

    POST   /v1/jobs                 multipart: face [, pose], prompt and/or style, settings -> 202 {id, queue_position}
    GET    /v1/jobs/{id}            the job's state, progress, settings, timings, error
    GET    /v1/jobs/{id}/events     server-sent events: queued, started, step..., then done / error / cancelled
    GET    /v1/jobs/{id}/image      the PNG with its provenance labels
    DELETE /v1/jobs/{id}            cancel (queued), stop at the next step (running), or forget (finished)
    GET    /v1/styles               the style templates
    GET    /healthz, /readyz        alive; model loaded and warmed up
    GET    /metrics                 Prometheus text
    GET    /                        the kiosk page
"""

from __future__ import annotations

import hmac
import re
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from instantid_edge import __version__
from instantid_edge.runtime.errors import InstantIDError
from instantid_edge.runtime.styles import StyleBook

from .engine import Engine
from .errors import ServiceError, Unauthorized, job_error_code
from .headers import SecurityHeaders
from .job_form import job_request, request_body_schema
from .jobs import JobStatus, Submitted
from .metrics import CONTENT_TYPE, render
from .schemas import ErrorBody, Health, Ready, StyleInfo, StyleList
from .sse import event_stream
from .uploads import parse_multipart, read_body

KIOSK = Path(__file__).with_name("kiosk")
EVENT_ID = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class AppConfig:
    styles: StyleBook
    max_upload_bytes: int = 10 * 2**20
    token: str | None = None  # every /v1 call then needs `Authorization: Bearer <token>`


def _errors(*statuses: int) -> dict:
    return {status: {"model": ErrorBody} for status in statuses}


def _error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(asdict(ErrorBody(code, message)), status_code=status, headers=headers)


def create_app(engine: Engine, config: AppConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="instantid-edge kiosk service",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN: nothing here may reach off the machine
        redoc_url=None,
        # nothing a visitor sends may leave the machine, whatever the environment says about exporters
        telemetry={"auto_configure": False, "tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(SecurityHeaders)
    rejected: Counter[str] = Counter()  # submissions refused before reaching the engine, by code

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return _error_response(exc.status, exc.code, str(exc), exc.headers)

    @app.exception_handler(InstantIDError)
    async def runtime_error(request: Request, exc: InstantIDError):
        return _error_response(422, job_error_code(exc), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, f"http_{exc.status_code}", str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_response(422, "bad_request", problems)

    bearer = HTTPBearer(auto_error=False, description="Given with --token-file")

    async def check_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, config.token.encode()):
            raise Unauthorized("this server needs `Authorization: Bearer <token>` (the token in its --token-file)")

    api = APIRouter(
        prefix="/v1",
        dependencies=[Depends(check_token)] if config.token else [],
        responses=_errors(401) if config.token else {},
    )

    @api.post(
        "/jobs",
        status_code=202,
        response_model=Submitted,
        openapi_extra={"requestBody": request_body_schema()},
        responses=_errors(413, 415, 422, 429, 503),
    )
    async def submit_job(request: Request, response: Response) -> Submitted:
        """Queue a portrait: the face photo, a prompt and/or a style, and optional settings."""
        try:
            parts = parse_multipart(
                await read_body(request, config.max_upload_bytes), request.headers.get("content-type")
            )
            job = await run_in_threadpool(job_request, parts, config.styles)
        except ServiceError as exc:
            rejected[exc.code] += 1
            raise
        except InstantIDError as exc:
            rejected[job_error_code(exc)] += 1
            raise
        del parts
        submitted = await engine.submit(job)
        response.headers["Location"] = f"/v1/jobs/{submitted.id}"
        return submitted

    @api.get("/jobs/{job_id}", response_model=JobStatus, responses=_errors(404))
    async def job_status(job_id: str) -> JobStatus:
        return await engine.status(job_id)

    @api.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **_errors(404)},
    )
    async def job_events(job_id: str, last_event_id: str | None = Header(None)):
        """Server-sent events; reconnect with Last-Event-ID to get only what came after."""
        await engine.status(job_id)  # unknown ids get a 404 before the stream starts
        after = int(last_event_id) if last_event_id and EVENT_ID.fullmatch(last_event_id) else 0
        return StreamingResponse(
            event_stream(engine.events(job_id, after)),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    @api.get(
        "/jobs/{job_id}/image",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
            **_errors(404, 409),
        },
    )
    async def job_image(job_id: str) -> Response:
        """The finished portrait as PNG, labelled as AI-generated in its metadata."""
        data = await engine.image(job_id)
        return Response(
            data, media_type="image/png", headers={"Content-Disposition": 'inline; filename="portrait.png"'}
        )

    @api.delete(
        "/jobs/{job_id}",
        response_model=JobStatus,
        responses={202: {"model": JobStatus}, 204: {"description": "Forgotten, with its image"}, **_errors(404)},
    )
    async def delete_job(job_id: str):
        """Queued: cancelled (200). Running: stops at its next step (202). Finished: forgotten with its image (204)."""
        status = await engine.cancel(job_id)
        if status is None:
            return Response(status_code=204)
        return JSONResponse(jsonable_encoder(status), status_code=200 if status.state.finished else 202)

    @api.get("/styles", response_model=StyleList)
    async def styles() -> StyleList:
        return StyleList([StyleInfo(s.name, s.label, s.prompt, s.negative_prompt) for s in config.styles])

    app.include_router(api)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health("ok")

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz():
        readiness = await engine.ready()
        body = jsonable_encoder(Ready(readiness.ready, readiness.detail))
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(render(await engine.metrics(), rejected), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def kiosk_page() -> FileResponse:
        return FileResponse(KIOSK / "index.html", media_type="text/html")

    app.mount("/kiosk", StaticFiles(directory=KIOSK), name="kiosk")
    return app
