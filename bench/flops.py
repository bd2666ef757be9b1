"""FLOPs of a graph at given input shapes, counted from the ONNX graph itself (no weights loaded).

Counts 2 x multiply-adds of MatMul / MatMulInteger / Gemm / Conv (attention score and value products
included); norms, activations and softmax are memory-bound extras of a few percent and not counted.
"""

from __future__ import annotations

import math
from pathlib import Path


def _dims(value_info) -> list[int] | None:
    dims = [d.dim_value for d in value_info.type.tensor_type.shape.dim]
    return dims if dims and all(d > 0 for d in dims) else None


def graph_flops(path: Path, input_shapes: dict[str, tuple[int, ...]]) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    # Shapes need no weight values: large (external) weights become graph inputs of their shape.
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        model.graph.initializer.remove(tensor)
    for tensor in model.graph.input:
        if tensor.name in input_shapes:
            dims = tensor.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[tensor.name], strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = size
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # onnxruntime's symbolic inference follows the Shape/Gather/Reshape chains that onnx's own stops at
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes = {
        vi.name: _dims(vi) for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    }
    shapes.update({t.name: list(t.dims) for t in list(model.graph.initializer) + external})
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        if node.op_type in ("MatMul", "MatMulInteger", "Gemm"):
            a = shapes.get(node.input[0])
            if a:
                transposed = node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
                total += 2 * math.prod(out) * (a[-2] if transposed else a[-1])
        elif node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w:
                total += 2 * math.prod(out) * math.prod(w[1:])
    return total
