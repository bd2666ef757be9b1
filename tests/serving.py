"""Helpers for the service's tests: photos as upload bytes, event-stream parsing, label checks, and a real
`instantid-edge serve` process on 127.0.0.1 (started and stopped by its handle)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

SMALL_JOB = {"width": "64", "height": "64", "steps": "2", "prompt": "a portrait"}


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def faceless_photo() -> bytes:
    return png_bytes(np.full((320, 320, 3), 128, np.uint8))


def decompression_bomb() -> bytes:
    """A small PNG (about 50 kB) that declares 7088x7088 pixels, above the runtime's 50-megapixel limit."""
    buffer = io.BytesIO()
    Image.new("L", (7088, 7088)).save(buffer, format="PNG")
    return buffer.getvalue()


def parse_events(text: str) -> list[dict]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line and not line.startswith(":") and ":" in line:
                name, value = line.split(":", 1)
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


def provenance(png: bytes) -> dict:
    """The label a served image must carry (the XMP/IPTC digital source type and the JSON provenance record),
    read back with the provenance package's own reader; returns the record and the image's size."""
    from instantid_edge.runtime.provenance import read_label

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        label = read_label(image)
        size = image.size
    assert label.ai_generated and label.record is not None, label
    return {"size": size, **label.record}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextlib.contextmanager
def running_server(package: Path, face_pack: Path, *options: str, cwd: Path | None = None, env: dict | None = None,
                   log: Path | None = None, ready_timeout: float = 120.0, port: int | None = None):  # fmt: skip
    """`instantid-edge serve` in its own process; yields (base url, Popen). Stopped with SIGINT, then killed."""
    port = port or free_port()
    command = [sys.executable, "-m", "instantid_edge.cli", "serve", "--package", str(package),
               "--face-models", str(face_pack), "--port", str(port), "--threads", "1", *options]  # fmt: skip
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}: {command}")
            with contextlib.suppress(OSError):
                if get(f"{url}/readyz", timeout=1)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log:
            out.close()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")
