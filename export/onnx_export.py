"""torch -> ONNX, with every large tensor in ONE external data file beside the graph.

The TorchScript exporter writes graphs over 2 GB as one file per tensor; smaller ones inline. Either way the
result is rewritten as `model.onnx` (structure only) + `model.onnx.data` (weights), streaming tensor by tensor,
so a 10 GB UNet never sits in memory twice.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..runtime.manifest import TensorSpec

OPSET = 17
INLINE_LIMIT = 1024  # tensors up to this many bytes stay inside the graph
ALIGNMENT = 4096  # page-aligned offsets let runtimes memory-map the weights


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


def consolidate_external_data(source: Path, target: Path) -> None:
    """Rewrite `source` (inline or per-tensor external data) as `target` + one `target.name`.data file."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    data_name = target.name + ".data"
    offset = 0
    with open(target.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {entry.key: entry.value for entry in tensor.external_data}
                with open(source.parent / info["location"], "rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    payload = f.read(int(info["length"])) if "length" in info else f.read()
            elif len(tensor.raw_data) > INLINE_LIMIT:
                payload = tensor.raw_data
            else:
                continue
            padding = -offset % ALIGNMENT
            data.write(b"\0" * padding)
            offset += padding
            data.write(payload)
            del tensor.external_data[:]
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(payload)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(payload)
    onnx.save(model, str(target))


def onnx_files(path: Path) -> list[Path]:
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def remove_onnx(path: Path) -> None:
    for file in onnx_files(path):
        file.unlink()
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        shutil.rmtree(path.parent)
