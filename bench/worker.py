"""One benchmark configuration in its own process, so that its peak memory is its own.

python -m instantid_edge.bench.worker CONFIG.json RESULT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(config_path: str, result_path: str) -> None:
    from .stages import Config, time_runtime, time_torch

    raw = json.loads(Path(config_path).read_text())
    if raw.get("kind") == "gemm":
        from .gemm import gemm_peaks

        result = {"gemm": gemm_peaks(raw.get("threads"))}
    elif raw.get("kind") == "memory":
        from .memory_breakdown import measure_graph

        result = measure_graph(raw)
    else:
        config = Config(**raw)
        result = time_torch(config) if config.backend == "torch" else time_runtime(config)
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
