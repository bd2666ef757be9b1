"""`instantid-edge serve`: the kiosk service on uvicorn. Imported lazily by instantid_edge.cli."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
from functools import partial
from pathlib import Path

import click
import fastapi  # noqa: F401 - imported here so that a missing `serve` extra is reported before anything starts
import uvicorn

from instantid_edge.runtime.backends import BACKENDS
from instantid_edge.runtime.cli_options import memory_option
from instantid_edge.runtime.errors import ConfigError, InstantIDError
from instantid_edge.runtime.manifest import PROFILE_NAMES
from instantid_edge.runtime.provenance.cli import sign_option

from .cluster_options import cluster_options, collect

MIN_TOKEN_LENGTH = 16


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --token-file {path}: {exc}") from exc
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"--token-file {path} must hold one token of at least {MIN_TOKEN_LENGTH} characters without spaces "
            "(make one with: python3 -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return token


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (default 8 per core). The server's request threads each grow an arena
    that keeps freed upload buffers as fragmentation; with two, RSS stops growing once the traffic pattern has
    been seen (measured: +72 MiB once, then flat over 90 jobs, against +120 MiB and still climbing)."""
    m_arena_max = -8  # from glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(m_arena_max, arenas)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--package", "package_dir", type=click.Path(path_type=Path), required=True, help="Model package folder.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; loopback unless given.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads (default: the backend's choice).")
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    help="Run every job as the package was exported for (fast: its few-step distillation and tiny decoder; "
    "see inspect); the fields a client sends win.",
)
@click.option(
    "--face-models",
    type=click.Path(path_type=Path),
    help="Folder holding an insightface pack's .onnx files (default ~/.insightface/models/antelopev2).",
)
@memory_option("Which graphs stay open between stages (see generate --help).")
@click.option("--max-queue", type=click.IntRange(1, 1000), default=4, show_default=True, help="Jobs waiting.")
@click.option(
    "--job-ttl", type=click.FloatRange(min=1), default=600, show_default=True, help="Seconds a result is kept."
)
@click.option(
    "--job-timeout",
    type=click.FloatRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds a job may run before it is stopped (checked at each step).",
)
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 1024), default=10, show_default=True)
@click.option("--styles", "styles_file", type=click.Path(path_type=Path), help="Style templates (JSON; see README).")
@click.option(
    "--token-file", type=click.Path(path_type=Path), help="File holding a token every /v1 call must send as Bearer."
)
@sign_option
@cluster_options
def serve(package_dir, host, port, backend, threads, profile, face_models, memory, max_queue, job_ttl, job_timeout,
          max_upload_mb, styles_file, token_file, sign_dir, **cluster_values):  # fmt: skip
    """Serve the kiosk page and an HTTP API: the model loads once, jobs run one at a time, nothing is kept.

    \b
    Example:
      instantid-edge serve --package pkg --face-models ~/.insightface/models/antelopev2
      # then open http://127.0.0.1:8000/ (the API's OpenAPI document: http://127.0.0.1:8000/openapi.json)
    """
    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.provenance.credentials import configured_signer
    from instantid_edge.runtime.styles import load_styles

    from .app import AppConfig, create_app
    from .job_settings import check_profile
    from .loading import PipelineSpec, load_pipeline
    from .local_engine import EngineConfig, LocalEngine

    cluster = collect(cluster_values)
    limit_malloc_arenas()  # before any thread starts
    manifest = read_manifest(package_dir)  # a wrong folder fails here, before the server starts
    check_profile(manifest, profile)  # and so does a profile the package does not have
    configured_signer(sign_dir)  # a bad signing set-up fails here too
    styles = load_styles(styles_file)
    token = read_token(token_file) if token_file else None
    if not is_loopback(host) and token is None:
        click.echo(
            f"warning: serving on {host} without --token-file: anyone who can reach this port can submit photos",
            err=True,
        )
    spec = PipelineSpec(package_dir, backend, threads, face_models, memory)
    config = EngineConfig(max_queue, job_ttl, job_timeout, profile, f"server ({backend})", sign_dir)
    if cluster.engine == "ray":
        from .ray_launch import serve_on_ray

        return serve_on_ray(spec, config, AppConfig(styles, int(max_upload_mb * 2**20), token), cluster, host, port)
    engine = LocalEngine(partial(load_pipeline, spec), config)
    app = create_app(engine, AppConfig(styles, int(max_upload_mb * 2**20), token))
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=5, server_header=False, log_level="info")
    )
    log = logging.getLogger("instantid_edge.serve")
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler())
    failures: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    engine.on_failure = stop
    server.run()
    if failures:
        if isinstance(failures[0], InstantIDError):
            raise failures[0]
        raise click.ClickException(f"the model could not be loaded: {failures[0]}")
