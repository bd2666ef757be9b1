"""Streamed calibration and the QDQ rewrite (quantize/onnx_static.py) on a small graph with external weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building test graphs needs onnx: pip install '.[export]'")
ort = pytest.importorskip("onnxruntime")

from instantid_edge.quantize.onnx_static import (  # noqa: E402
    activation_ranges,
    calibrated_tensors,
    quantizable_layers,
    quantize_static_streamed,
)
from instantid_edge.runtime.errors import ConfigError  # noqa: E402


def _graph(folder: Path) -> Path:
    """x -> Conv -> Relu -> Conv -> Flatten -> MatMul -> Relu -> y, and x -> Conv -> z (a graph output), with
    the weights in an external data file."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    initializers = [weight("w1", 8, 4, 3, 3), weight("b1", 8), weight("w2", 8, 8, 3, 3), weight("b2", 8),
                    weight("w3", 8 * 6 * 6, 16), weight("w4", 2, 4, 1, 1)]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["h2"], name="conv2"),
        helper.make_node("Flatten", ["h2"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w3"], ["m"], name="matmul"),
        helper.make_node("Relu", ["m"], ["y"], name="relu_out"),
        helper.make_node("Conv", ["x", "w4"], ["z"], name="conv_out"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return _graph(tmp_path_factory.mktemp("static"))


def _samples(count: int = 4) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32) * (1 + 0.1 * i)} for i in range(count)]


def _run(path: Path, feeds: dict, optimized: Path | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_layers_skip_graph_outputs_and_keep_float(graph):
    model = onnx.load(str(graph), load_external_data=False)
    names = [layer.node for layer in quantizable_layers(model, ("Conv", "MatMul"), [])]
    assert names == ["conv1", "conv2", "matmul"]  # conv_out produces a graph output: it stays float
    assert [layer.node for layer in quantizable_layers(model, ("Conv",), [r"conv2"])] == ["conv1"]
    layers = quantizable_layers(model, ("Conv",), [])
    assert calibrated_tensors(layers) == ["x", "h1", "r1", "h2"]


def test_ranges_equal_onnxruntime_minmax_calibration(graph, tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    samples = _samples()
    tensors = ["x", "h1", "r1", "h2"]
    ours = activation_ranges(graph, tensors, samples)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(samples)

        def get_next(self):
            return next(self.items, None)

    calibrator = create_calibrator(graph, op_types_to_calibrate=["Conv", "Relu"],
                                   augmented_model_path=str(tmp_path / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    calibrator.collect_data(Reader())
    theirs = calibrator.compute_data()
    for tensor in tensors:
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in theirs[tensor].range_value)
        assert ours[tensor] == pytest.approx((min(low, 0.0), max(high, 0.0)), rel=1e-6), tensor


@pytest.mark.parametrize(
    ("op_types", "fused"),
    [(("Conv",), {"QLinearConv": 2, "MatMul": 1}), (("Conv", "MatMul"), {"QLinearConv": 2, "QLinearMatMul": 1})],
)
def test_rewrite_runs_integer_kernels_close_to_float(graph, tmp_path, op_types, fused):
    target = tmp_path / "model.onnx"
    counts = quantize_static_streamed(graph, target, _samples(), op_types, [])
    assert counts["Conv"] == 2
    feeds = _samples(1)[0]
    reference = _run(graph, feeds)
    produced = _run(target, feeds, optimized=tmp_path / "optimized.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node]
    for op, count in fused.items():
        assert ops.count(op) == count, ops  # ONNX Runtime fused every quantized layer into an integer kernel
    assert ops.count("Conv") == 1  # conv_out, whose output is a graph output, stays float
    np.testing.assert_array_equal(produced[1], reference[1])
    y, y_ref = produced[0], reference[0]
    assert np.abs(y - y_ref).max() < 0.05 * np.abs(y_ref).max()


def test_weights_and_biases_stored_int8_and_int32(graph, tmp_path):
    from onnx import TensorProto, numpy_helper

    target = tmp_path / "model.onnx"
    quantize_static_streamed(graph, target, _samples(), ("Conv",), [])
    model = onnx.load(str(target))
    tensors = {t.name: t for t in model.graph.initializer}
    assert "w1" not in tensors and tensors["w1_int8"].data_type == TensorProto.INT8
    assert np.abs(numpy_helper.to_array(tensors["w1_int8"])).max() == 64  # half range: exact without VNNI
    assert tensors["b1_int32"].data_type == TensorProto.INT32
    assert tensors["w3"].data_type == TensorProto.FLOAT  # the MatMul was not asked for
    assert (tmp_path / "model.onnx.data").stat().st_size > 0


def test_calibration_without_samples_is_a_config_error(graph, tmp_path):
    with pytest.raises(ConfigError, match="needs recorded inputs"):
        quantize_static_streamed(graph, tmp_path / "model.onnx", [], ("Conv",), [])
    assert not (tmp_path / "model.onnx").exists()


def test_non_finite_calibration_values_are_a_config_error(graph, tmp_path):
    samples = [{"x": np.full((1, 4, 8, 8), np.inf, np.float32)}]
    with pytest.raises(ConfigError, match="non-finite"):
        quantize_static_streamed(graph, tmp_path / "model.onnx", samples, ("Conv",), [])
    assert not (tmp_path / "model.onnx").exists()
