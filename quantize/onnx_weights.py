"""int8 weights for an ONNX graph, rewritten tensor by tensor (a 10 GB UNet in well under 1 GB of memory).

MatMuls with a constant 2-D weight become dynamic int8 (ONNX Runtime's fastest path on AVX2/AVX-512 CPUs):
    y = MatMul(x, W)  ->  DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp) -> Cast -> Mul(x_s * W_s)
Their weights use only -64..64 (runtime/cpu.py: full-range int8 saturates the u8 x s8 kernel of CPUs without
VNNI). That keeps the fast u8 x s8 kernel on every x86 CPU; uint8 weights (the exact u8 x u8 kernel) ran 2.5x
slower here with VNNI and 15-20% slower on AVX2 (bench/RESULTS.md, "int8 on CPUs without VNNI").
Convolutions keep float compute with int8 weights (policy.WEIGHT_ONLY_CONVOLUTIONS): W = DequantizeLinear(W_q,
W_s, axis=0) feeds the Conv, run at every call (ONNX Runtime keeps no float copy).
Embedding tables (Gather) stay int8 in memory: rows are gathered as int8, then scaled by their row's scale.
Weights are symmetric int8, one scale per output channel. onnxruntime.quantization does the same rewrite
in memory and needs two copies of the model: over 21 GiB for the SDXL UNet here.
With `int4` (the int4 method) those MatMuls become ONNX Runtime's MatMulNBits instead (onnx_int4.py):
4-bit weights in groups along K, convolutions and embeddings staying int8 as above.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..export.onnx_files import ALIGNMENT
from ..runtime.cpu import SAFE_INT8_WEIGHT
from .policy import WEIGHT_ONLY_CONVOLUTIONS

FULL_RANGE = 127  # weights dequantized to float before use (Conv, Gather): no integer kernel sees them


def symmetric_int8(weight: np.ndarray, axis: int, limit: int = FULL_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 in -limit..limit along `axis`: (quantized, scale)."""
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.abs(weight).max(axis=reduce) / float(limit)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    quantized = np.clip(np.round(weight / scale.reshape(shape)), -limit, limit).astype(np.int8)
    return quantized, scale


class _TensorStore:
    """Reads initializers from the source (inline or external) and writes them to one new data file."""

    def __init__(self, source: Path, data_path: Path):
        self.source_dir, self.data_path = source.parent, data_path
        self.offset = 0

    def __enter__(self):
        self.file = open(self.data_path, "wb")  # noqa: SIM115 - closed by __exit__
        return self

    def __exit__(self, *exc):
        self.file.close()

    def read(self, tensor) -> np.ndarray:
        from onnx import TensorProto, helper, numpy_helper

        if tensor.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor)
        info = {entry.key: entry.value for entry in tensor.external_data}
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        array = np.fromfile(
            self.source_dir / info["location"], dtype=dtype, count=count, offset=int(info.get("offset", 0))
        )
        return array.reshape(tuple(tensor.dims))

    def write(self, name: str, array: np.ndarray):
        from onnx import TensorProto, helper

        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        payload = np.ascontiguousarray(array).tobytes()
        if len(payload) <= 1024:
            tensor.raw_data = payload
            return tensor
        padding = -self.offset % ALIGNMENT
        self.file.write(b"\0" * padding)
        self.offset += padding
        self.file.write(payload)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.data_path.name),
            ("offset", str(self.offset)),
            ("length", str(len(payload))),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(payload)
        return tensor


def _dynamic_matmul(node, weight: str, base: str) -> list:
    from onnx import TensorProto, helper

    xq, xs, xzp = f"{base}_xq", f"{base}_xs", f"{base}_xzp"
    return [
        helper.make_node("DynamicQuantizeLinear", [node.input[0]], [xq, xs, xzp], name=f"{base}_dq"),
        helper.make_node("MatMulInteger", [xq, weight + "_int8", xzp], [f"{base}_i32"], name=f"{base}_mmi"),
        helper.make_node("Cast", [f"{base}_i32"], [f"{base}_f32"], to=TensorProto.FLOAT, name=f"{base}_cast"),
        helper.make_node("Mul", [xs, weight + "_scale"], [f"{base}_s"], name=f"{base}_scale"),
        helper.make_node("Mul", [f"{base}_f32", f"{base}_s"], [node.output[0]], name=f"{base}_out"),
    ]


def _axis(node) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 0)


def _int8_gather(node, table: str, base: str) -> list:
    from onnx import TensorProto, helper

    indices, out = node.input[1], node.output[0]
    axes = helper.make_tensor(f"{base}_axes", TensorProto.INT64, [1], [-1])
    return [
        helper.make_node("Gather", [table + "_int8", indices], [f"{base}_rows"], axis=0, name=f"{base}_rows"),
        helper.make_node("Cast", [f"{base}_rows"], [f"{base}_rows_f32"], to=TensorProto.FLOAT, name=f"{base}_cast"),
        helper.make_node("Gather", [table + "_scale", indices], [f"{base}_row_scale"], axis=0, name=f"{base}_scales"),
        helper.make_node("Constant", [], [f"{base}_axes"], value=axes, name=f"{base}_axes"),
        helper.make_node(
            "Unsqueeze", [f"{base}_row_scale", f"{base}_axes"], [f"{base}_row_scale_1"], name=f"{base}_unsq"
        ),
        helper.make_node("Mul", [f"{base}_rows_f32", f"{base}_row_scale_1"], [out], name=f"{base}_out"),
    ]


def _dequantized_weight(node, weight: str) -> list:
    from onnx import helper

    inputs = [weight + "_int8", weight + "_scale", weight + "_zero"]
    dequantize = helper.make_node("DequantizeLinear", inputs, [weight + "_dequantized"], axis=0, name=f"{weight}_dq")
    node.input[1] = weight + "_dequantized"
    return [dequantize, node]


def quantize_weights(
    source: Path, target: Path, keep_float: list[str], matmul_limit: int = SAFE_INT8_WEIGHT, int4=None
) -> dict[str, int]:
    """Rewrite `source` as `target` (+ target.data) with int8 weights; returns counts of rewritten layers.

    `matmul_limit` bounds the integer MatMuls' weights; anything above SAFE_INT8_WEIGHT is exact only on CPUs
    with VNNI (a parameter so that bench and tests can measure what the bound costs). `int4` (a policy.Int4Rule)
    makes the MatMuls 4-bit MatMulNBits instead.
    """
    import onnx
    from onnx import TensorProto

    from .onnx_int4 import DOMAIN, nbits_matmul

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    new_initializers, new_nodes, quantized, counts = [], [], set(), {"MatMul": 0, "Conv": 0, "Gather": 0}
    with _TensorStore(source, target.with_name(target.name + ".data")) as store:
        for node in graph.node:
            position = 0 if node.op_type == "Gather" else 1  # where the constant weight sits
            name = node.input[position] if len(node.input) > position else None
            weight = initializers.get(name)
            eligible = (
                weight is not None and weight.data_type == TensorProto.FLOAT and uses.get(name) == 1
                and not any(re.fullmatch(p, node.name) for p in keep_float)
            )  # fmt: skip
            group = int4.group_for(weight.dims[0]) if int4 is not None and weight is not None and weight.dims else None
            if eligible and node.op_type == "MatMul" and len(weight.dims) == 2 and group:
                tensors, nodes = nbits_matmul(node, name, store.read(weight), group, int4.accuracy_level)
                new_initializers += [store.write(n, array) for n, array in tensors]
                new_nodes += nodes
            elif eligible and node.op_type == "MatMul" and len(weight.dims) == 2:
                w_q, w_scale = symmetric_int8(store.read(weight), axis=1, limit=matmul_limit)
                new_initializers += [store.write(name + "_int8", w_q), store.write(name + "_scale", w_scale)]
                new_nodes += _dynamic_matmul(node, name, node.name or name)
            elif eligible and node.op_type == "Gather" and len(weight.dims) == 2 and _axis(node) == 0:
                w_q, w_scale = symmetric_int8(store.read(weight), axis=0)
                new_initializers += [store.write(name + "_int8", w_q), store.write(name + "_scale", w_scale)]
                new_nodes += _int8_gather(node, name, node.name or name)
            elif eligible and node.op_type == "Conv" and WEIGHT_ONLY_CONVOLUTIONS["onnx"] == "int8":
                w_q, w_scale = symmetric_int8(store.read(weight), axis=0)
                zero = np.zeros_like(w_scale, dtype=np.int8)
                new_initializers += [store.write(name + suffix, array) for suffix, array in
                                     (("_int8", w_q), ("_scale", w_scale), ("_zero", zero))]  # fmt: skip
                new_nodes += _dequantized_weight(node, name)
            else:
                new_nodes.append(node)
                continue
            quantized.add(name)
            counts[node.op_type] += 1
        for tensor in graph.initializer:
            if tensor.name not in quantized:
                new_initializers.append(store.write(tensor.name, store.read(tensor)))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    if not any(opset.domain in ("", "ai.onnx") and opset.version >= 13 for opset in model.opset_import):
        raise ValueError("per-channel DequantizeLinear needs opset 13 or newer")
    if int4 is not None and not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    onnx.save(model, str(target))
    return counts
