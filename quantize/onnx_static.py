"""Calibrated int8 (static QDQ) for an ONNX graph, streamed: the full-size UNet in one session's memory.

onnxruntime.quantization.quantize_static loads the whole float graph, then runs an augmented copy of it in a
session of its own: the 10 GB UNet twice and more, past 24 GiB. Here the same two steps stream:

1. Ranges (`activation_ranges`): the graph's structure, without its weights, gets a ReduceMin and a ReduceMax
   output per calibrated tensor; ONNX Runtime runs it with its weights read from the source's own data file, so
   one session's memory is all it takes. The recorded feeds run one at a time; a tensor's range is the smallest
   minimum and largest maximum seen, widened to include 0 (onnxruntime's MinMax calibration).
2. Rewrite (`rewrite_qdq`), tensor by tensor: each calibrated tensor passes QuantizeLinear -> DequantizeLinear
   (uint8, asymmetric, from its range); a quantized layer's output is read dequantized by every consumer (so
   that the layer's only consumer is its QuantizeLinear), any other tensor only by the quantized layers that
   take it as input (float layers beside them keep reading float); weights become int8 per
   output channel in -64..64 (runtime/cpu.py: the u8 x s8 kernels of CPUs without VNNI saturate on full-range
   weights), biases int32 at input scale x weight scale. ONNX Runtime fuses each DequantizeLinear -> Conv ->
   QuantizeLinear group into QLinearConv (MatMul: QLinearMatMul).

A layer is quantized when its weight (and bias) are float constants used by it alone, no `keep_float` pattern
names it and its output is not a graph output: a graph output stays float (the UNet's noise prediction,
IdentityNet's residuals), which also leaves the layer producing it float.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.cpu import SAFE_INT8_WEIGHT
from ..runtime.errors import ConfigError
from .onnx_weights import _TensorStore, symmetric_int8

WEIGHT_AXIS = {"Conv": 0, "MatMul": 1}  # the output-channel axis of each op's weight
U8 = 255


@dataclass(frozen=True)
class Layer:
    node: str
    op: str
    activation: str
    output: str


def quantizable_layers(model, op_types: tuple[str, ...], keep_float: list[str]) -> list[Layer]:
    """The layers `rewrite_qdq` quantizes, in graph order."""
    from onnx import TensorProto

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1

    def constant(name: str) -> bool:
        tensor = initializers.get(name)
        return tensor is not None and tensor.data_type == TensorProto.FLOAT and uses[name] == 1

    layers = []
    for node in graph.node:
        if node.op_type not in op_types or any(re.fullmatch(p, node.name) for p in keep_float):
            continue
        if node.output[0] in outputs or not constant(node.input[1]) or node.input[0] in initializers:
            continue
        if node.op_type == "MatMul" and len(initializers[node.input[1]].dims) != 2:
            continue
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] and not constant(node.input[2]):
            continue
        layers.append(Layer(node.name, node.op_type, node.input[0], node.output[0]))
    return layers


def calibrated_tensors(layers: list[Layer]) -> list[str]:
    return list(dict.fromkeys(name for layer in layers for name in (layer.activation, layer.output)))


def activation_ranges(source: Path, tensors: list[str], samples: list[dict]) -> dict[str, tuple[float, float]]:
    """{tensor: (min, max)} over `samples` (feeds of the graph at `source`), widened to include 0."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    if not samples:
        raise ConfigError(f"calibrating {source.parent.name} needs recorded inputs; none were captured")
    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    del graph.output[:]
    names = []
    for i, tensor in enumerate(tensors):
        for reduce in ("ReduceMin", "ReduceMax"):
            out = f"calibration_{reduce}_{i}"
            graph.node.append(helper.make_node(reduce, [tensor], [out], keepdims=0, name=out))
            graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, []))
            names.append(out)
    options = ort.SessionOptions()
    # the weights stay where they are: read from the source package's data file, never copied beside this graph
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(source.parent))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    low = np.zeros(len(tensors), np.float32)
    high = np.zeros(len(tensors), np.float32)
    for feeds in samples:
        values = np.asarray(session.run(names, feeds), np.float32).reshape(len(tensors), 2)
        low, high = np.minimum(low, values[:, 0]), np.maximum(high, values[:, 1])
    bad = [t for t, lo, hi in zip(tensors, low, high, strict=True) if not (np.isfinite(lo) and np.isfinite(hi))]
    if bad:
        raise ConfigError(f"calibration of {source.parent.name} saw non-finite values in {', '.join(bad[:5])}")
    return {t: (float(lo), float(hi)) for t, lo, hi in zip(tensors, low, high, strict=True)}


def u8_parameters(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """(scale, zero point) mapping [low, high] (which includes 0) onto 0..255."""
    scale = np.float32((high - low) / U8) if high > low else np.float32(1.0)
    zero = np.uint8(np.clip(np.round(-low / scale), 0, U8))
    return scale, zero


def _qdq(tensor: str, scale: str, zero: str) -> list:
    from onnx import helper

    quantize = helper.make_node("QuantizeLinear", [tensor, scale, zero], [tensor + "_q"], name=tensor + "_quantize")
    dequantize = helper.make_node("DequantizeLinear", [tensor + "_q", scale, zero], [tensor + "_dq"],
                                  name=tensor + "_dequantize")  # fmt: skip
    return [quantize, dequantize]


def rewrite_qdq(source: Path, target: Path, layers: list[Layer], ranges: dict[str, tuple[float, float]]) -> None:
    """Write `source` as `target` (+ target.data) with `layers` in QDQ form (module docstring)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    by_node = {layer.node: layer for layer in layers}
    quantized_tensors = set(calibrated_tensors(layers))
    layer_outputs = {layer.output for layer in layers}  # all their readers take the dequantized value
    new_nodes, new_initializers, replaced = [], [], set()
    with _TensorStore(source, target.with_name(target.name + ".data")) as store:
        parameters = {}
        for tensor in quantized_tensors:
            scale, zero = u8_parameters(*ranges[tensor])
            parameters[tensor] = scale
            new_initializers += [store.write(tensor + "_scale", np.array(scale)),
                                 store.write(tensor + "_zero", np.array(zero))]  # fmt: skip
        graph_inputs = [i.name for i in graph.input if i.name in quantized_tensors]
        for tensor in graph_inputs:
            new_nodes += _qdq(tensor, tensor + "_scale", tensor + "_zero")
        for node in graph.node:
            layer = by_node.get(node.name)
            for i, name in enumerate(node.input):
                if name in layer_outputs or (layer is not None and name == layer.activation):
                    node.input[i] = name + "_dq"
            if layer is not None:
                weight_name = node.input[1]
                axis = WEIGHT_AXIS[layer.op]
                weight = store.read(initializers[weight_name])
                w_q, w_scale = symmetric_int8(weight, axis=axis, limit=SAFE_INT8_WEIGHT)
                tensors = [(weight_name + "_int8", w_q), (weight_name + "_scale", w_scale),
                           (weight_name + "_zero", np.zeros_like(w_scale, np.int8))]  # fmt: skip
                new_nodes.append(helper.make_node(
                    "DequantizeLinear", [name for name, _ in tensors], [weight_name + "_dequantized"], axis=axis,
                    name=weight_name + "_dequantize"))  # fmt: skip
                node.input[1] = weight_name + "_dequantized"
                replaced.add(weight_name)
                if len(node.input) > 2 and node.input[2]:
                    bias_name = node.input[2]
                    bias_scale = (parameters[layer.activation] * w_scale).astype(np.float32)
                    bias = store.read(initializers[bias_name]).astype(np.float64) / bias_scale
                    limit = np.iinfo(np.int32).max
                    b_q = np.clip(np.round(bias), -limit, limit).astype(np.int32)
                    tensors += [(bias_name + "_int32", b_q), (bias_name + "_scale", bias_scale),
                                (bias_name + "_zero", np.zeros_like(b_q))]  # fmt: skip
                    new_nodes.append(helper.make_node(
                        "DequantizeLinear", [bias_name + "_int32", bias_name + "_scale", bias_name + "_zero"],
                        [bias_name + "_dequantized"], axis=0, name=bias_name + "_dequantize"))  # fmt: skip
                    node.input[2] = bias_name + "_dequantized"
                    replaced.add(bias_name)
                new_initializers += [store.write(name, array) for name, array in tensors]
            new_nodes.append(node)
            for name in node.output:
                if name in quantized_tensors:
                    new_nodes += _qdq(name, name + "_scale", name + "_zero")
        for tensor in graph.initializer:
            if tensor.name not in replaced:
                new_initializers.append(store.write(tensor.name, store.read(tensor)))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    if not any(opset.domain in ("", "ai.onnx") and opset.version >= 13 for opset in model.opset_import):
        raise ValueError("per-channel DequantizeLinear needs opset 13 or newer")
    onnx.save(model, str(target))


def quantize_static_streamed(
    source: Path, target: Path, samples: list[dict], op_types: tuple[str, ...], keep_float: list[str]
) -> dict[str, int]:
    """Calibrate and rewrite `source` as `target`; returns how many layers of each op were quantized."""
    import onnx

    layers = quantizable_layers(onnx.load(str(source), load_external_data=False), op_types, keep_float)
    ranges = activation_ranges(source, calibrated_tensors(layers), samples)
    rewrite_qdq(source, target, layers, ranges)
    return {op: sum(layer.op == op for layer in layers) for op in op_types}
