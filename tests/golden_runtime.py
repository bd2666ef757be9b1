"""Final latents of the runtime on the tiny stand-in for fixed settings, recorded so that a refactor can prove it
changed no image (tests/test_runtime_golden.py compares against them).

    python tests/golden_runtime.py PACKAGE FACE_PACK FACES_DIR   # writes tests/data/runtime_golden.npz

PACKAGE is the tiny stand-in exported as the tests export it (`instantid-edge standin --preset tiny
--embedding-dim 128` then `instantid-edge export`), FACE_PACK the 128-d test pack, FACES_DIR the shared faces.
Regenerate only for an intended change of the images, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "data" / "runtime_golden.npz"
THREADS = 2  # pinned: a kernel may split its sums differently for another thread count
# face_region False: the recording predates face-region control (on by default since), so these pin the runtime
# with the face mask all ones
BASE = {"prompt": "a portrait of an astronaut", "height": 128, "width": 128, "steps": 3, "face_region": False}

# name -> (backend, memory mode, settings overrides, pose photo or None)
CASES = {
    "ort-euler-cfg": ("onnxruntime", "normal", {"sampler": "euler", "guidance": 5.0, "seed": 1}, None),
    "ort-euler-nocfg": ("onnxruntime", "normal", {"sampler": "euler", "guidance": 1.0, "seed": 1}, None),
    "ort-ancestral-cfg": ("onnxruntime", "normal", {"sampler": "euler_ancestral", "guidance": 5.0, "seed": 2}, None),
    "ort-ancestral-nocfg": ("onnxruntime", "normal", {"sampler": "euler_ancestral", "guidance": 1.0, "seed": 2}, None),
    "ort-dpmpp-cfg": ("onnxruntime", "normal", {"sampler": "dpmpp_2m", "guidance": 5.0, "seed": 3}, None),
    "ort-dpmpp-nocfg": ("onnxruntime", "normal", {"sampler": "dpmpp_2m", "guidance": 1.0, "seed": 3}, None),
    "ort-lcm-cfg": ("onnxruntime", "normal", {"sampler": "lcm", "guidance": 1.5, "seed": 4}, None),
    "ort-lcm-nocfg": ("onnxruntime", "normal", {"sampler": "lcm", "guidance": 1.0, "seed": 4}, None),
    "ort-euler-karras": ("onnxruntime", "normal", {"sampler": "euler", "karras": True, "seed": 5}, None),
    "ort-euler-trailing": (
        "onnxruntime",
        "normal",
        {"sampler": "euler", "timestep_spacing": "trailing", "seed": 5},
        None,
    ),
    "ort-dpmpp-karras-trailing": (
        "onnxruntime",
        "normal",
        {"sampler": "dpmpp_2m", "karras": True, "timestep_spacing": "trailing", "seed": 6},
        None,
    ),
    "ort-minimal-window-negative": (
        "onnxruntime",
        "minimal",
        {
            "steps": 4,
            "control_start": 0.0,
            "control_end": 0.5,
            "negative_prompt": "blurry, lowres",
            "ip_scale": 0.6,
            "identitynet_scale": 0.9,
            "seed": 7,
        },
        None,
    ),
    "ort-low-two-images": ("onnxruntime", "low", {"sampler": "euler_ancestral", "num_images": 2, "seed": 10}, None),
    "ort-pose": ("onnxruntime", "normal", {"seed": 8}, "grace_hopper.jpg"),
    "ov-euler-cfg": ("openvino", "normal", {"sampler": "euler", "guidance": 5.0, "seed": 1}, None),
    "ov-ancestral-nocfg": ("openvino", "normal", {"sampler": "euler_ancestral", "guidance": 1.0, "seed": 2}, None),
    "ov-dpmpp-cfg": ("openvino", "normal", {"sampler": "dpmpp_2m", "guidance": 5.0, "seed": 3}, None),
    "ov-low-lcm": ("openvino", "low", {"sampler": "lcm", "guidance": 1.0, "num_images": 2, "seed": 4}, None),
}


def package_digest(package: Path) -> str:
    """sha256 over the package's files as its manifest lists them, except OpenVINO's .xml (whose layer names
    count up per process, so two exports of the same weights differ there and nowhere else)."""
    files = json.loads((Path(package) / "manifest.json").read_text())["files"]
    listed = sorted((f["path"], f["sha256"]) for f in files if not f["path"].endswith(".xml"))
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def machine() -> dict[str, str]:
    """What decides the exact bits: the CPU's vector extensions and the backend libraries."""
    from instantid_edge.runtime.cpu import cpu_info

    versions = {name: importlib.metadata.version(name) for name in ("onnxruntime", "openvino", "numpy")}
    return {"isa": ",".join(cpu_info().isa), "threads": str(THREADS), **versions}


def run_case(name: str, package: Path, face_pack: Path, faces: Path, pipelines: dict):
    """(final latents, sha256 of each image) of one case, with the runtime as it is now."""
    from instantid_edge.runtime.images import load_rgb
    from instantid_edge.runtime.pipeline import InstantIDPipeline
    from instantid_edge.runtime.settings import GenerationSettings

    backend, memory, overrides, pose = CASES[name]
    key = (backend, memory)
    if key not in pipelines:
        pipelines[key] = InstantIDPipeline.load(
            package, backend=backend, threads=THREADS, face_models=face_pack, memory=memory, cache=False
        )
        # the invisible watermark (added after the recording, provenance/) is tested apart; this pins generation
        pipelines[key].watermark = False
    settings = GenerationSettings(**{**BASE, **overrides})
    pose_rgb = load_rgb(faces / pose) if pose else None
    result = pipelines[key](load_rgb(faces / "astronaut.png"), settings, pose_rgb)
    return result.latents, [hashlib.sha256(image.tobytes()).hexdigest() for image in result.images]


def main(package: str, face_pack: str, faces: str) -> None:
    pipelines, arrays, images = {}, {}, {}
    for name in CASES:
        arrays[name], images[name] = run_case(name, Path(package), Path(face_pack), Path(faces), pipelines)
        print(name, arrays[name].shape, float(np.abs(arrays[name]).max()))
    meta = {"package": package_digest(Path(package)), "machine": machine(), "images": images}
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main(*sys.argv[1:4])
