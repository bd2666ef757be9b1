"""ONNX files without torch: one external data file per graph, written tensor by tensor.

Exporters and quantizers write graphs over 2 GB as one file per tensor, or inline when small. Either way
the result is rewritten as `model.onnx` (structure only) + `model.onnx.data` (weights, page-aligned),
streaming tensor by tensor, so a 10 GB UNet never sits in memory twice.
"""

from __future__ import annotations

import shutil
from pathlib import Path

INLINE_LIMIT = 1024  # tensors up to this many bytes stay inside the graph
ALIGNMENT = 4096  # page-aligned offsets let runtimes memory-map the weights


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
