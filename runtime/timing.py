"""Seconds and calls per stage of a run, and what ran, for GenerationResult.timings and the CLI's table.

    {stage: seconds, ..., "calls": {stage: count},
     "run": {"batch": 1|2, "steps": n, "decoder": graph, "seconds_to_first_step": s}}

"run" says what the noise predictor ran with (batch 2 is CFG's [uncond, cond]), which decoder graph made the
images, and how long after the process started the first denoising step began with its graphs open (the warm
start: imports, face analysis, text, and opening or compiling the denoisers; None where the system does not
say when the process started). The "open" stage is the time spent opening the denoiser graphs before their
steps. `stage_seconds(timings)` is the stages alone.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    run_record: dict = field(default_factory=dict)  # timings["run"] (see the module docstring), set by the pipeline

    def run(self, name: str, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        return result

    def summary(self) -> dict:
        """{stage: seconds (rounded)} plus "calls": {stage: count} and, once set, "run"."""
        timings = {name: round(seconds, 4) for name, seconds in self.seconds.items()}
        timings["calls"] = dict(self.calls)
        if self.run_record:
            timings["run"] = dict(self.run_record)
        return timings


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that is not known."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
            started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, ticks after boot
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def stage_seconds(timings: dict) -> dict[str, float]:
    """The stages' seconds of a summary, without its "calls" and "run" records."""
    return {name: value for name, value in timings.items() if name not in ("calls", "run")}
