"""Loading the runtime's pipeline once per server (or per replica) and warming it up before the first visitor."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PipelineSpec:
    package: Path
    backend: str = "onnxruntime"
    threads: int | None = None
    face_models: Path | None = None
    memory: str = "auto"
    precision: str = "f32"


def load_pipeline(spec: PipelineSpec):
    """The runtime's InstantIDPipeline, loaded and warmed up."""
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    pipe = InstantIDPipeline.load(
        spec.package,
        backend=spec.backend,
        threads=spec.threads,
        face_models=spec.face_models,
        precision_hint=spec.precision,
        memory=spec.memory,
    )
    pipe.watermark = False  # the server marks each image as it encodes it, with its own generator id ("server")
    warm_up(pipe)
    return pipe


def warm_up(pipe) -> None:
    """Open (compile) every graph a job runs and run the face models once, so that a broken package fails at
    start and the first visitor does not wait for compilation. OpenVINO still specialises the denoiser for each
    new output size on the first job of that size."""
    from instantid_edge.runtime.errors import NoFaceError
    from instantid_edge.runtime.memory import STAGES
    from instantid_edge.runtime.package import REQUIRED_GRAPHS

    for name in REQUIRED_GRAPHS:
        pipe.package.session(name)
    for stage in STAGES:  # a lean memory policy closes again what it would close after each stage
        pipe.memory.close(stage, pipe.package)
    with contextlib.suppress(NoFaceError):  # expected: a blank frame holds no face
        pipe.analyzer.analyze(np.zeros((256, 256, 3), np.uint8), "the warm-up frame")


def verify_package(package: Path) -> None:
    """Every file of the package against its manifest's size and sha256: for a node that holds its own copy (or a
    shared mount that may be stale), so that a partial or different copy fails that replica's start by name."""
    from instantid_edge.runtime.errors import PackageError
    from instantid_edge.runtime.manifest import read_manifest, verify_files

    problems = verify_files(read_manifest(package))
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise PackageError(f"the model package at {package} differs from its manifest: {'; '.join(problems[:3])}{more}")
