"""Running one job on a loaded pipeline: the face pre-check, the generation with cancel and deadline at each step,
and the labelled PNG. Shared by every engine (a worker thread here, a Ray replica elsewhere), so that a job runs
the same way whichever engine holds it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from instantid_edge.runtime.errors import InstantIDError
from instantid_edge.runtime.memory import release_memory

from .errors import job_error_code
from .jobs import JobError, JobRequest, JobState
from .output import encode_result

log = logging.getLogger("instantid_edge.serve")


class Cancelled(Exception):
    """Raised by a progress callback: the client cancelled the job."""


class DeadlineExceeded(Exception):
    """Raised by a progress callback: the job ran past its deadline."""


@dataclass
class JobOutcome:
    state: JobState
    image: bytes | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: JobError | None = None
    seconds: float = 0.0


def check_faces(pipe, request: JobRequest) -> None:
    """The pipeline's own face analysis, run before queueing so that a photo without a face is refused at once
    (the pipeline repeats it; detection is a small part of a job)."""
    from instantid_edge.runtime.images import resize_like_instantid

    pipe.analyzer.analyze(resize_like_instantid(request.face), "the face photo")
    if request.pose is not None:
        pipe.analyzer.analyze(resize_like_instantid(request.pose), "the pose photo")


def run_job(pipe, request: JobRequest, settings, record: dict, progress: Callable[[int, int], None],
            signer=None, timeout: float = 3600.0) -> JobOutcome:  # fmt: skip
    """Generate one portrait. `progress(done, total)` is called after each step and may raise Cancelled or
    DeadlineExceeded; `record` holds the provenance fields this engine knows (the result adds the rest)."""
    start = time.perf_counter()
    outcome = JobOutcome(JobState.DONE)
    try:
        result = pipe(request.face, settings, request.pose, progress=progress)
        outcome.timings = {k: float(v) for k, v in result.timings.items() if isinstance(v, int | float)}
        encode_start = time.perf_counter()
        full_record = {
            **record,
            "settings": result.settings.to_dict(),
            "package": pipe.package.root.name,
            "standin": bool(pipe.package.manifest.standin),
            "faces_found": result.conditioning.face.num_faces,
            "pose_photo": request.pose is not None,
            "image_index": 0,
            "seed": result.settings.seed,
        }
        outcome.image = encode_result(result.images[0], full_record, result.watermarked, signer)
        outcome.timings["encode"] = round(time.perf_counter() - encode_start, 4)
        del result
    except Cancelled:
        outcome.state = JobState.CANCELLED
    except DeadlineExceeded:
        outcome.state = JobState.ERROR
        outcome.error = JobError(
            "deadline_exceeded", f"the job ran past its {timeout:g}-second deadline and was stopped"
        )
    except InstantIDError as exc:
        outcome.state, outcome.error = JobState.ERROR, JobError(job_error_code(exc), str(exc))
    except Exception as exc:  # noqa: BLE001 - a job's failure must never take the worker down
        log.exception("a job failed")
        outcome.state = JobState.ERROR
        message = f"the job failed ({type(exc).__name__}); the server is still running"
        outcome.error = JobError("internal_error", message)
    outcome.seconds = time.perf_counter() - start
    release_memory()  # hand the job's freed arrays back to the system: a kiosk runs for days
    return outcome


def status_settings(settings, style: str | None, profile: str | None) -> dict:
    """What a job's status reports it runs with: its GenerationSettings (one image per job), style and profile."""
    fields = settings.to_dict()
    fields.pop("num_images", None)
    return {**fields, "style": style, "profile": profile}
