"""int8 ONNX with onnxruntime.quantization: dynamic int8 MatMul, or static QDQ with calibration.

"weights": our streaming rewrite (onnx_weights): weight MatMuls dynamic int8, convolution weights int8.
"int4": the same rewrite with the weight MatMuls as 4-bit MatMulNBits (onnx_int4).
"hybrid": convolutions static QDQ (calibrated, onnxruntime.quantization), then weight MatMuls dynamic int8.
"int4-hybrid": the same static QDQ convolutions, then the weight MatMuls as MatMulNBits.
"full": static QDQ for convolutions and weight MatMuls.
Static QDQ weights are 7-bit (`reduce_range`): ONNX Runtime fuses each QDQ pair into a u8 x s8 integer kernel,
which saturates on CPUs without VNNI when weights use the full int8 range (runtime/cpu.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..export.onnx_files import consolidate_external_data


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over recorded feeds."""

    def __init__(self, samples: list[dict]):
        self._samples = iter(samples)

    def get_next(self):
        return next(self._samples, None)

    def rewind(self):  # pragma: no cover - only some calibrators call it
        pass


def _excluded(model_path: Path, patterns: list[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [node.name for node in graph.node if any(re.fullmatch(p, node.name) for p in patterns)]


def _unlinked(model: Path, scratch: Path) -> Path:
    """`model`, or a private copy of it when a file is hard-linked (another package shares it, e.g. one that
    quantized other graphs of the same source): onnx refuses to read external data with several links."""
    files = [model, *model.parent.glob(model.name + ".data")]
    if all(path.stat().st_nlink == 1 for path in files):
        return model
    for path in files:
        shutil.copyfile(path, scratch / path.name)
    return scratch / model.name


def quantize_onnx(source: Path, target: Path, action: str, samples: list[dict], keep_float: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .onnx_weights import quantize_weights
    from .policy import INT4, PRECISION, WEIGHT_ONLY

    int4 = INT4 if PRECISION[action] == "int4" else None
    if action in WEIGHT_ONLY:
        quantize_weights(source, target, keep_float, int4=int4)
        return
    exclude = _excluded(source, keep_float)
    # onnxruntime.quantization prints every node it visits to stdout
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quant-") as scratch, open(os.devnull, "w") as sink, \
            contextlib.redirect_stdout(sink):  # fmt: skip
        source = _unlinked(source, Path(scratch))
        static_out = Path(scratch) / "static.onnx"
        quantize_static(
            str(source), str(static_out), _Reader(samples),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul"] if action == "full" else ["Conv"],
            per_channel=True, reduce_range=True, nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=True, extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip
        if action == "full":
            consolidate_external_data(static_out, target)
        else:
            quantize_weights(static_out, target, keep_float, int4=int4)
