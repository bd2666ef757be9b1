"""Seconds and calls per stage of a run, for GenerationResult.timings and the CLI's table."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def run(self, name: str, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        return result

    def summary(self) -> dict:
        """{stage: seconds (rounded)} plus "calls": {stage: count}."""
        timings = {name: round(seconds, 4) for name, seconds in self.seconds.items()}
        timings["calls"] = dict(self.calls)
        return timings
