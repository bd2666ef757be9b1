"""torch -> ONNX, with every large tensor in ONE external data file beside the graph (see onnx_files)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from ..runtime.manifest import TensorSpec
from .onnx_files import consolidate_external_data

OPSET = 17


def dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {
        s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
        for s in specs
        if any(isinstance(d, str) for d in s.shape)
    }


def export_onnx(
    module: torch.nn.Module, args: tuple, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path
) -> None:
    """Trace `module(*args)` to `path` (+ `path`.data)."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as scratch:
        raw = Path(scratch) / "model.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes are expected
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=[s.name for s in inputs],
                output_names=[s.name for s in outputs],
                dynamic_axes=dynamic_axes(inputs + outputs),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        consolidate_external_data(raw, path)
