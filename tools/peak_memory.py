"""Peak memory of this process, split into anonymous memory and memory-mapped files.

RSS alone misleads for model runtimes: weights read through mmap count in RSS but are clean file-backed
pages the kernel can drop under pressure, while anonymous memory (heap, arenas, repacked weights) is what
runs a machine out of memory. On Linux a background thread samples /proc/self/status, and the kernel's own
high-water mark (VmHWM) catches what happens between samples; `PeakMemory(reset=True)` first resets that mark
(/proc/self/clear_refs), so the peak is the block's own. Elsewhere only the kernel's lifetime maximum is known.
"""

from __future__ import annotations

import resource
import threading
from dataclasses import dataclass

_FIELDS = ("RssAnon", "RssFile", "VmRSS", "VmHWM")


def _status() -> dict[str, float] | None:
    try:
        with open("/proc/self/status") as f:
            values = {k: int(v.split()[0]) / 2**20 for k, v in (line.split(":", 1) for line in f) if k in _FIELDS}
    except OSError:
        return None
    return values if len(values) == len(_FIELDS) else None


def memory_now() -> dict[str, float]:
    """This process's RSS now, in GiB: {"rss", "anon", "file"} (empty where /proc is missing)."""
    status = _status()
    return {"rss": status["VmRSS"], "anon": status["RssAnon"], "file": status["RssFile"]} if status else {}


def reset_kernel_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """`with PeakMemory() as peak: ...` then peak.rss_gib, peak.anon_gib, peak.file_gib."""

    interval: float = 0.1
    reset: bool = False  # reset the kernel's high-water mark on entry (else it covers the process's life)
    rss_gib: float = 0.0
    anon_gib: float = 0.0
    file_gib: float = 0.0

    def _sample(self) -> None:
        status = _status()
        if status:
            self.rss_gib = max(self.rss_gib, status["VmRSS"], status["VmHWM"] if self._kernel_mark else 0.0)
            self.anon_gib = max(self.anon_gib, status["RssAnon"])
            self.file_gib = max(self.file_gib, status["RssFile"])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._stop = threading.Event()
        self._kernel_mark = self.reset and reset_kernel_peak()
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
