"""The hardware's practical limit, measured in the same run: the best fp32 and int8 matrix products we can get.

Libraries differ a lot on one CPU (on this project's AVX-512 machine OpenBLAS reaches about half of what
ONNX Runtime's MLAS and OpenVINO's oneDNN do), so the peak is the best of numpy, ONNX Runtime and OpenVINO.
The int8 peak is ONNX Runtime's MatMulInteger (u8 x s8 -> s32, what dynamic int8 MatMuls run) with weights in
-64..64, as our packages store them, counted as 2 operations per multiply-add like the fp32 FLOPs. Beside it,
the two other weight encodings one could choose (runtime/cpu.py): full-range int8 (same kernel; exact only with
VNNI) and uint8 (the u8 x u8 kernel; exact everywhere).
"""

from __future__ import annotations

import time

import numpy as np


def _best_rate(run, n: int, repeat: int) -> float:
    run()  # warm-up: packing, allocation, compilation
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _onnx_matmul(b: np.ndarray, integer: bool, threads: int | None, b_zero: int | None = None):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = b.shape[0]
    if integer:
        op, a_type, out_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        op, a_type, out_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    inputs, initializers = ["a", "b"], [numpy_helper.from_array(b, "b")]
    if b_zero is not None:
        inputs += ["a_zero", "b_zero"]
        initializers += [numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
                         numpy_helper.from_array(np.array(b_zero, b.dtype), "b_zero")]  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["c"])], "gemm",
        [helper.make_tensor_value_info("a", a_type, [n, n])], [helper.make_tensor_value_info("c", out_type, [n, n])],
        initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _openvino_matmul(b: np.ndarray, threads: int | None):
    import openvino as ov
    import openvino.opset13 as ops

    a = ops.parameter(list(b.shape), np.float32)
    model = ov.Model([ops.matmul(a, ops.constant(b), False, False)], [a])
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(model, "CPU", config).create_infer_request()


def gemm_peaks(threads: int | None = None, n: int = 4096, repeat: int = 3) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of an n x n x n product per library, and the best fp32 figure as `fp32`."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    peaks = {"numpy": _best_rate(lambda: a @ b, n, repeat)}
    session = _onnx_matmul(b, False, threads)
    peaks["onnxruntime"] = _best_rate(lambda: session.run(None, {"a": a}), n, repeat)
    request = _openvino_matmul(b, threads)
    peaks["openvino"] = _best_rate(lambda: request.infer({0: a}), n, repeat)
    a8 = rng.integers(0, 256, (n, n), dtype=np.uint8)
    weights = {  # name -> (weights, their zero point)
        "onnxruntime_int8": (rng.integers(-64, 65, (n, n), dtype=np.int8), 0),
        "onnxruntime_int8_full_range": (rng.integers(-127, 128, (n, n), dtype=np.int8), 0),
        "onnxruntime_int8_u8u8": (rng.integers(1, 256, (n, n), dtype=np.uint8), 128),
    }
    for name, (b8, zero) in weights.items():
        session = _onnx_matmul(b8, True, threads, zero)
        peaks[name] = _best_rate(lambda session=session: session.run(None, {"a": a8}), n, repeat)
    peaks["fp32"] = max(peaks["numpy"], peaks["onnxruntime"], peaks["openvino"])
    return peaks
