"""The hardware's practical limit, measured in the same run: fp32 GEMM throughput (numpy/OpenBLAS)."""

from __future__ import annotations

import time

import numpy as np


def gemm_gflops(n: int = 4096, repeat: int = 3) -> float:
    """Best GFLOP/s of an n x n x n fp32 matrix product over `repeat` runs (after one warm-up)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
