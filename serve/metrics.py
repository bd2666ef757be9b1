"""GET /metrics: the engine's counters in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

from collections.abc import Mapping

from .jobs import EngineMetrics, JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = tuple(state.value for state in JobState if state.finished)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, dict[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for sample, labels, value in samples:
        tags = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
        lines.append(f"{sample}{{{tags}}} {value:g}" if tags else f"{sample} {value:g}")
    return lines


def render(metrics: EngineMetrics, rejected: Mapping[str, int]) -> str:
    """`rejected`: submissions the app refused before they reached the engine (too large, not an image...)."""
    refused = dict(rejected)
    for reason, count in metrics.refused.items():
        refused[reason] = refused.get(reason, 0) + count
    stage_samples = []
    for stage, (seconds, count) in sorted(metrics.stage_seconds.items()):
        stage_samples += [
            ("instantid_stage_seconds_sum", {"stage": stage}, seconds),
            ("instantid_stage_seconds_count", {"stage": stage}, count),
        ]
    lines = [
        *_family(
            "instantid_queue_length",
            "gauge",
            "Jobs waiting to run.",
            [("instantid_queue_length", {}, metrics.queue_length)],
        ),
        *_family(
            "instantid_jobs_running", "gauge", "Jobs running now.", [("instantid_jobs_running", {}, metrics.running)]
        ),
        *_family(
            "instantid_jobs_total",
            "counter",
            "Finished jobs by outcome.",
            [("instantid_jobs_total", {"outcome": o}, metrics.outcomes.get(o, 0)) for o in OUTCOMES],
        ),
        *_family(
            "instantid_submissions_refused_total",
            "counter",
            "Job submissions refused, by reason.",
            [("instantid_submissions_refused_total", {"reason": r}, n) for r, n in sorted(refused.items())],
        ),
        *_family(
            "instantid_stage_seconds", "summary", "Seconds spent per pipeline stage in finished jobs.", stage_samples
        ),
    ]
    return "\n".join(lines) + "\n"
