"""Throughput of the kiosk service on a local Ray cluster: images per minute with 1, 2, 4... worker replicas.

    python -m instantid_edge.bench.serve_throughput --package PKG --face-models PACK --face PHOTO \\
        --replicas 1,2,4 --jobs 16 --out bench/results/serve-ray-tiny.json

Drives `instantid-edge serve --engine ray` over HTTP only (the service is not a layer bench may import). Ray runs
inside a private namespace (loopback-only network, own PID namespace; needs root), as in the tests: its processes
probe cloud-metadata addresses at start, and nothing may leave the machine. One head node with as many logical
CPUs as the most replicas asked for, one CPU (and one inference thread) per replica, so that 4 replicas on a
2-core machine show what oversubscription costs. Per replica count: a warm-up job per replica, then --jobs
visitors at once (one thread each: submit, follow the event stream, read the status), timed from the first
submission to the last image; the queue holds them all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

INSIDE = "INSTANTID_EDGE_BENCH_NAMESPACE"
NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", 'ip link set lo up && exec "$@"']


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 600):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _multipart(face: bytes, fields: dict[str, str]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="face"; filename="face.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + face
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _one_job(url: str, face: bytes, fields: dict[str, str]) -> dict:
    body, headers = _multipart(face, fields)
    status, answer = _http("POST", f"{url}/v1/jobs", body, headers)
    if status != 202:
        raise RuntimeError(f"submission refused: {status} {answer[:200]!r}")
    job_id = json.loads(answer)["id"]
    _http("GET", f"{url}/v1/jobs/{job_id}/events")  # ends with the job
    result = json.loads(_http("GET", f"{url}/v1/jobs/{job_id}")[1])
    if result["state"] != "done":
        raise RuntimeError(f"job {job_id} ended {result['state']}: {result.get('error')}")
    _http("DELETE", f"{url}/v1/jobs/{job_id}")
    return result


def _run_jobs(url: str, face: bytes, fields: dict[str, str], count: int) -> list[dict]:
    """`count` visitors at once, each submitting one job and following it to its image."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda seed: _one_job(url, face, {**fields, "seed": str(seed)}), range(count)))


@contextlib.contextmanager
def _serving(args, cluster: str, env: dict, replicas: int):
    port = _port()
    command = [sys.executable, "-m", "instantid_edge.cli", "serve", "--engine", "ray", "--ray-address", cluster,
               "--replicas", str(replicas), "--cpus-per-replica", "1", "--threads", "1", "--port", str(port),
               "--package", str(args.package), "--face-models", str(args.face_models), "--backend", args.backend,
               "--max-queue", str(args.jobs)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited with {process.returncode}")
            with contextlib.suppress(OSError):
                status, body = _http("GET", f"{url}/readyz", timeout=2)
                if status == 200 and f"{replicas} replica(s)" in json.loads(body)["detail"]:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not become ready")
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _inside(args) -> dict:
    ray = str(Path(sys.executable).with_name("ray"))
    folder = Path(tempfile.mkdtemp(prefix="ray-b", dir="/tmp"))
    # (Ray's memory monitor off: it kills workers when the shared machine, not this bench, passes 95% used)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(folder / "token"), "RAY_memory_monitor_refresh_ms": "0"}  # fmt: skip
    (folder / "token").write_text(secrets.token_hex(32))
    port = _port()
    subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", str(max(args.replicas)),
                    "--include-dashboard=false", "--object-store-memory", str(300 * 2**20), "--node-ip-address",
                    "127.0.0.1", "--temp-dir", str(folder / "r"), "--disable-usage-stats"],
                   env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    face = args.face.read_bytes()
    fields = {"width": str(args.size), "height": str(args.size), "steps": str(args.steps), "prompt": "a portrait"}
    runs = []
    for replicas in args.replicas:
        with _serving(args, f"127.0.0.1:{port}", env, replicas) as url:
            _run_jobs(url, face, fields, replicas)  # warm-up: one job per replica
            start = time.perf_counter()
            done = _run_jobs(url, face, fields, args.jobs)
            seconds = time.perf_counter() - start
        per_replica: dict[str, int] = {}
        for status in done:
            per_replica[status["replica"]] = per_replica.get(status["replica"], 0) + 1
        stages = sorted({stage for status in done for stage in status["timings"]})
        medians = {stage: sorted(s["timings"].get(stage, 0.0) for s in done)[len(done) // 2] for stage in stages}
        runs.append({
            "replicas": replicas,
            "jobs": args.jobs,
            "seconds": round(seconds, 2),
            "images_per_minute": round(args.jobs / seconds * 60, 1),
            "jobs_per_replica": sorted(per_replica.values()),
            "median_stage_seconds": {stage: round(value, 3) for stage, value in medians.items()},
        })  # fmt: skip
        runs[-1]["load_average_after"] = round(os.getloadavg()[0], 1)  # the machine is shared: how busy it was
        print(json.dumps(runs[-1]), flush=True)
    subprocess.run([ray, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = runs[0]["images_per_minute"]
    for run in runs:
        run["speedup"] = round(run["images_per_minute"] / base, 2)
    return {"job": fields, "backend": args.backend, "runs": runs}


def _isa() -> dict:
    flags, model = set(), "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {"cpu": model, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags],
            "machine": platform.machine()}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--face-models", type=Path, required=True)
    parser.add_argument("--face", type=Path, required=True, help="A photo with one face.")
    parser.add_argument("--replicas", default="1,2,4", help="Replica counts, comma-separated.")
    parser.add_argument("--jobs", type=int, default=16, help="Jobs in each timed burst.")
    parser.add_argument("--size", type=int, default=128, help="Output width and height.")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--out", type=Path, required=True, help="Results JSON.")
    args = parser.parse_args(argv)
    args.replicas = [int(n) for n in args.replicas.split(",")]
    if os.environ.get(INSIDE) != "1":
        command = [*NAMESPACE, "sh", sys.executable, "-m", "instantid_edge.bench.serve_throughput", *sys.argv[1:]]
        sys.exit(subprocess.run(command, env={**os.environ, INSIDE: "1"}).returncode)
    result = {"machine": _isa(), "package": args.package.name, **_inside(args)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
