"""No retention: the server writes no photo (or anything else made from one) under its working or temporary
directory, not even for a moment while an upload arrives, and its log carries no image data.

The mid-upload check looks at the server's open files while a large upload is half sent (a spooled upload is an
unlinked file: it never shows in a directory listing, only among the process's open files). The same probe is
first pointed at a stock FastAPI endpoint taking an UploadFile, which does spool such an upload to disk, to show
that the probe sees what it looks for.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from serving import free_port, get, parse_events, running_server

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve]'")

IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"WEBP": "WebP",
    b"GIF8": "GIF",
    b"\x93NUMPY": "numpy array",
}
STOCK_UPLOAD_APP = """
from fastapi import FastAPI, UploadFile

app = FastAPI()


@app.post("/v1/jobs")
async def upload(face: UploadFile):
    return {"size": len(await face.read())}
"""


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    for name, data in files.items():
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def open_files_under(pid: int, folders: list[Path]) -> list[str]:
    """What the process holds open under the folders (deleted files included)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if any(target.startswith(str(folder)) for folder in folders):
            found.append(target)
    return found


def upload_with_a_pause(url: str, body: bytes, content_type: str, pause_after: int, pid: int, folders: list[Path]):
    """Send the first `pause_after` bytes, look at the server's open files, then send the rest."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.putrequest("POST", "/v1/jobs")
    connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    connection.send(body[:pause_after])
    time.sleep(1.5)  # the server reads what has arrived
    seen = open_files_under(pid, folders)
    connection.send(body[pause_after:])
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    return response.status, answer, seen


def image_data_in(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {kind}" for magic, kind in IMAGE_SIGNATURES.items() if magic in data]
            found += [f"{path}: a file (the server should write none)"]
    return found


@pytest.fixture
def dirs(tmp_path) -> dict[str, Path]:
    made = {name: tmp_path / name for name in ("work", "tmp")}
    for folder in made.values():
        folder.mkdir()
    return made


def test_the_probe_sees_a_stock_upload_endpoint_spool_a_large_photo_to_disk(dirs, astronaut, tmp_path):
    (tmp_path / "stock_upload.py").write_text(STOCK_UPLOAD_APP)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "stock_upload:app", "--app-dir", str(tmp_path), "--port", str(port)]
    server = subprocess.Popen(command, cwd=dirs["work"], env={**os.environ, "TMPDIR": str(dirs["tmp"])},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"{url}/openapi.json", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the stock app did not start"
            time.sleep(0.2)
        photo = astronaut.read_bytes() * 2  # 1.6 MB: past starlette's 1 MiB spooling threshold
        body, content_type = multipart({}, {"face": photo})
        status, _, seen = upload_with_a_pause(url, body, content_type, 1_400_000, server.pid, list(dirs.values()))
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert status == 200
    assert seen and all(target.startswith(str(dirs["tmp"])) and "(deleted)" in target for target in seen), seen


def test_no_photo_touches_the_disk_and_the_log_holds_no_image_data(dirs, runtime_package, face_pack, assets, tmp_path):
    log = tmp_path / "server.log"
    env = {"TMPDIR": str(dirs["tmp"])}
    folders = list(dirs.values())
    small = {"width": "64", "height": "64", "steps": "2", "prompt": "a portrait"}
    gauss = (assets / "faces" / "gauss.png").read_bytes()  # 1.6 MB, with a face
    with running_server(runtime_package, face_pack, cwd=dirs["work"], env=env, log=log) as (url, server):
        body, content_type = multipart(small, {"face": gauss})
        status, answer, seen = upload_with_a_pause(url, body, content_type, 1_400_000, server.pid, folders)
        assert status == 202, answer
        assert seen == [], seen
        jobs = [answer]
        for files in (
            {
                "face": (assets / "faces" / "astronaut.png").read_bytes(),
                "pose": (assets / "faces" / "newton.png").read_bytes(),
            },
            {"face": (assets / "faces" / "grace_hopper.jpg").read_bytes()},
        ):
            body, content_type = multipart(small, files)
            status, answer, seen = upload_with_a_pause(url, body, content_type, len(body) // 2, server.pid, folders)
            assert status == 202 and seen == [], (answer, seen)
            jobs.append(answer)
        broken = multipart(small, {"face": b"\x89PNG\r\n\x1a\n" + b"\0" * 5000})
        assert upload_with_a_pause(url, *broken, 2000, server.pid, folders)[0] == 422
        for answer in jobs:
            job_id = re.search(rb'"id":"([^"]+)"', answer).group(1).decode()
            events = parse_events(get(f"{url}/v1/jobs/{job_id}/events", timeout=120)[1].decode())
            assert events[-1]["event"] == "done", events
            assert open_files_under(server.pid, folders) == []
            status, png = get(f"{url}/v1/jobs/{job_id}/image")
            assert status == 200 and png.startswith(b"\x89PNG")
    assert image_data_in(dirs["work"]) == [] and image_data_in(dirs["tmp"]) == []
    text = log.read_bytes()
    assert b"job " in text and b"done" in text  # the log is there, and says what happened
    assert not [kind for magic, kind in IMAGE_SIGNATURES.items() if magic in text]
    assert not re.search(rb"[A-Za-z0-9+/=]{200,}", text), "a long base64-like run in the log"
    assert not re.search(rb"(\\x[0-9a-f]{2}){8}", text), "escaped bytes in the log"
