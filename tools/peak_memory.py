"""Peak memory of this process, split into anonymous memory and memory-mapped files.

RSS alone misleads for model runtimes: weights read through mmap count in RSS but are clean file-backed
pages the kernel can drop under pressure, while anonymous memory (heap, arenas, repacked weights) is what
runs a machine out of memory. On Linux a background thread samples /proc/self/status; elsewhere only the
kernel's maximum RSS is known.
"""

from __future__ import annotations

import resource
import threading
from dataclasses import dataclass

_FIELDS = ("RssAnon", "RssFile", "VmRSS")


def _status() -> dict[str, float] | None:
    try:
        with open("/proc/self/status") as f:
            values = {k: int(v.split()[0]) / 2**20 for k, v in (line.split(":", 1) for line in f) if k in _FIELDS}
    except OSError:
        return None
    return values if len(values) == len(_FIELDS) else None


@dataclass
class PeakMemory:
    """`with PeakMemory() as peak: ...` then peak.rss_gib, peak.anon_gib, peak.file_gib."""

    interval: float = 0.1
    rss_gib: float = 0.0
    anon_gib: float = 0.0
    file_gib: float = 0.0

    def _sample(self) -> None:
        status = _status()
        if status:
            self.rss_gib = max(self.rss_gib, status["VmRSS"])
            self.anon_gib = max(self.anon_gib, status["RssAnon"])
            self.file_gib = max(self.file_gib, status["RssFile"])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.rss_gib == 0.0:  # no /proc: the kernel's lifetime maximum is all there is
            self.rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def to_dict(self) -> dict[str, float]:
        return {"peak_rss_gib": round(self.rss_gib, 2), "peak_anon_gib": round(self.anon_gib, 2),
                "peak_file_backed_gib": round(self.file_gib, 2)}  # fmt: skip

    def __str__(self) -> str:
        return (f"peak RSS {self.rss_gib:.2f} GiB (anonymous {self.anon_gib:.2f} GiB; "
                f"memory-mapped files {self.file_gib:.2f} GiB)")  # fmt: skip
