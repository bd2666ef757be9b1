"""Are int8 convolutions faster than fp32 ones on this CPU? The UNet's 3x3 convolutions, timed alone.

What the `hybrid` and `full` int8 methods buy depends on it: `weights` keeps every convolution in float (ONNX
Runtime dequantizes the int8 weights; OpenVINO decompresses them to f32 at compile time), while calibrated
convolutions run integer kernels. Each UNet level's ResNet convolution (channels from the architecture preset,
at the level's latent size for the output size asked) runs in four forms, each a one-node graph:

    onnxruntime fp32   Conv
    onnxruntime int8   QuantizeLinear -> DequantizeLinear -> Conv (int8 weights through DequantizeLinear)
                       -> QuantizeLinear -> DequantizeLinear: the QDQ form our calibrated packages store, which
                       ONNX Runtime fuses into QLinearConv (u8 activations, s8 weights)
    openvino fp32      Convolution at INFERENCE_PRECISION_HINT f32
    openvino int8      FakeQuantize on the input and the weights -> Convolution: what NNCF's calibrated IR
                       holds, run by oneDNN's int8 kernels

Weights use half the int8 range (|w| <= 64), as the packages store them on both backends (runtime/cpu.py:
full-range weights saturate the u8 x s8 kernels of CPUs without VNNI, and the error column would show it).
Rates are GFLOP/s (2 per multiply-add) of the best of `repeat` calls after a warm-up; the ISA the figures come
from (AVX2, AVX-512, VNNI, AMX) is part of the result (runtime/cpu.py).
"""

from __future__ import annotations

import time

import numpy as np

from ..export.architecture import architecture, vae_scale_factor
from ..runtime.cpu import SAFE_INT8_WEIGHT, cpu_info

FORMS = ("onnxruntime_fp32", "onnxruntime_int8", "openvino_fp32", "openvino_int8")


def unet_convolutions(preset: str, height: int, width: int) -> list[dict]:
    """One 3x3 channels-to-channels convolution per UNet level: (channels, latent height, latent width)."""
    arch = architecture(preset)
    scale = vae_scale_factor(arch.vae)
    latent = (height // scale, width // scale)
    return [{"level": level, "channels": channels, "height": latent[0] >> level, "width": latent[1] >> level}
            for level, channels in enumerate(arch.unet["block_out_channels"])]  # fmt: skip


def _flops(conv: dict) -> int:
    return 2 * conv["channels"] ** 2 * 9 * conv["height"] * conv["width"]


def _onnx_conv(weight: np.ndarray, shape: list[int], ranges: tuple[float, float] | None, threads: int | None):
    """fp32, or int8 (QDQ) where `ranges` gives the input's and output's calibrated bounds."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def scalar(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)

    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    if ranges:  # int8 weights, per-tensor scales, u8 activations: the QDQ form of our calibrated packages
        w_scale = float(np.abs(weight).max()) / SAFE_INT8_WEIGHT
        initializers = [numpy_helper.from_array(np.round(weight / w_scale).astype(np.int8), "w8"),
                        scalar("w_scale", w_scale, np.float32), scalar("w_zero", 0, np.int8),
                        scalar("x_scale", 2 * ranges[0] / 255, np.float32), scalar("x_zero", 128, np.uint8),
                        scalar("y_scale", 2 * ranges[1] / 255, np.float32),
                        scalar("y_zero", 128, np.uint8)]  # fmt: skip
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w8", "w_scale", "w_zero"], ["wd"]),
            helper.make_node("Conv", ["xd", "wd"], ["yf"], **conv),
            helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zero"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"]),
        ]
    else:
        initializers = [numpy_helper.from_array(weight, "w")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], **conv)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def _openvino_conv(weight: np.ndarray, shape: list[int], ranges: tuple[float, float] | None, threads: int | None):
    """f32, or int8 (FakeQuantize) where `ranges` gives the input's calibrated bound (and the output's)."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter(shape, np.float32)
    w = ops.constant(weight)
    source = x
    if ranges:  # NNCF's calibrated form: FakeQuantize on activations (256 levels) and weights (255)
        # NNCF's overflow fix (quantize/openvino_int8.py) widens the weights' range so they take half the levels
        bound, x_bound = float(np.abs(weight).max()) * 127 / SAFE_INT8_WEIGHT, np.float32(ranges[0])
        source = ops.fake_quantize(x, ops.constant(-x_bound), ops.constant(x_bound), ops.constant(-x_bound),
                                   ops.constant(x_bound), 256)  # fmt: skip
        w = ops.fake_quantize(w, ops.constant(np.float32(-bound)), ops.constant(np.float32(bound)),
                              ops.constant(np.float32(-bound)), ops.constant(np.float32(bound)), 255)  # fmt: skip
    y = ops.convolution(source, w, [1, 1], [1, 1], [1, 1], [1, 1])
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(ov.Model([y], [x]), "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})[0]


def _best_seconds(run, x: np.ndarray, repeat: int) -> float:
    run(x)  # warm-up: packing, allocation, compilation
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(x)
        best = min(best, time.perf_counter() - start)
    return best


def conv_rates(preset: str = "full", height: int = 768, width: int = 768, threads: int | None = None,
               repeat: int = 5) -> dict:  # fmt: skip
    """Per UNet level, GFLOP/s of each form, its largest difference from ONNX Runtime's fp32 output (relative to
    that output's range) and int8's speed-up over fp32 per library; with the CPU's ISA."""
    cpu = cpu_info()
    rng = np.random.default_rng(0)
    builders = {"onnxruntime": _onnx_conv, "openvino": _openvino_conv}
    rows = []
    for conv in unet_convolutions(preset, height, width):
        shape = [1, conv["channels"], conv["height"], conv["width"]]
        weight = (rng.standard_normal((conv["channels"], conv["channels"], 3, 3)) * 0.02).astype(np.float32)
        x = rng.standard_normal(shape).astype(np.float32)
        row = dict(conv)
        reference = _onnx_conv(weight, shape, None, threads)(x)  # fp32: the int8 forms' calibration and yardstick
        ranges = (float(np.abs(x).max()), float(np.abs(reference).max()))
        for form in FORMS:
            library, precision = form.split("_")
            run = builders[library](weight, shape, ranges if precision == "int8" else None, threads)
            row[form] = round(_flops(conv) / _best_seconds(run, x, repeat) / 1e9, 1)
            error = np.abs(np.asarray(run(x)) - reference).max() / np.abs(reference).max()
            row[f"{form}_error"] = float(f"{error:.2g}")  # largest difference from fp32, relative to its range
        for library in builders:
            row[f"{library}_int8_speedup"] = round(row[f"{library}_int8"] / row[f"{library}_fp32"], 2)
        rows.append(row)
    return {"cpu": cpu.model, "isa": cpu.isa, "preset": preset, "height": height, "width": width,
            "threads": threads, "repeat": repeat, "rows": rows}  # fmt: skip


def markdown_table(result: dict) -> str:
    head = ("| level | channels | latent | " + " | ".join(f"{form} GFLOP/s" for form in FORMS)
            + " | int8 / fp32, onnxruntime | int8 / fp32, openvino |")  # fmt: skip
    lines = [f"CPU: {result['cpu']}; ISA: {', '.join(result['isa']) or 'none reported'}", "", head,
             "|" + "---|" * (len(FORMS) + 5)]  # fmt: skip
    for row in result["rows"]:
        rates = " | ".join(str(row[form]) for form in FORMS)
        lines.append(f"| {row['level']} | {row['channels']} | {row['height']}x{row['width']} | {rates} | "
                     f"{row['onnxruntime_int8_speedup']}x | {row['openvino_int8_speedup']}x |")  # fmt: skip
    return "\n".join(lines) + "\n"
