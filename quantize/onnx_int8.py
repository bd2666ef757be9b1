"""Quantized ONNX graphs, streamed tensor by tensor: each method's rewrites, in order.

"weights": int8 weights (onnx_weights): weight MatMuls dynamic int8, convolution weights int8, float compute.
"int4": the same rewrite with the weight MatMuls as 4-bit MatMulNBits (onnx_int4).
"hybrid": calibrated int8 convolutions (onnx_static: static QDQ, fused to QLinearConv), then "weights".
"int4-hybrid": the same calibrated convolutions, then "int4".
"full": calibrated int8 convolutions and weight MatMuls (onnx_static).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def quantize_onnx(source: Path, target: Path, action: str, samples: list[dict], keep_float: list[str]) -> None:
    from .onnx_static import quantize_static_streamed
    from .onnx_weights import quantize_weights
    from .policy import INT4, PRECISION, WEIGHT_ONLY

    int4 = INT4 if PRECISION[action] == "int4" else None
    if action in WEIGHT_ONLY:
        quantize_weights(source, target, keep_float, int4=int4)
        return
    if action == "full":
        quantize_static_streamed(source, target, samples, ("Conv", "MatMul"), keep_float)
        return
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quant-") as scratch:
        static = Path(scratch) / "static.onnx"
        quantize_static_streamed(source, static, samples, ("Conv",), keep_float)
        quantize_weights(static, target, keep_float, int4=int4)
