"""Which integer kernels a quantized graph will run, and whether any could saturate on a CPU without VNNI.

A kernel multiplies uint8 activations by int8 weights wherever both operands of a MatMul/Conv are quantized:
ONNX `MatMulInteger`/`ConvInteger`/`QLinearMatMul`/`QLinearConv`, a QDQ pair (DequantizeLinear on an activation
and on a weight) that ONNX Runtime fuses into one of those, and an OpenVINO FakeQuantize on the activation of a
Convolution/MatMul whose weight is stored as int8. Such a kernel is exact on every x86 CPU only if its weights
stay within -SAFE_INT8_WEIGHT..SAFE_INT8_WEIGHT (runtime/cpu.py), or if they are uint8 (u8 x u8 kernel).
Weights dequantized to float for float compute (our `weights` method's Conv, NNCF weight compression) run no
integer kernel and are not checked. ONNX Runtime's 4-bit `MatMulNBits` at accuracy level 4 quantizes its
activations to int8 and runs integer kernels: its |code - zero point| (at most 8) is checked like an int8 weight.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.cpu import SAFE_INT8_WEIGHT
from ..runtime.errors import ExportError

_INTEGER_OPS = {"MatMulInteger": (1, 3), "ConvInteger": (1, 3), "QLinearMatMul": (3, 5), "QLinearConv": (3, 5)}
_FLOAT_OPS = ("MatMul", "Conv", "Gemm")


@dataclass(frozen=True)
class IntegerKernel:
    node: str
    weight_dtype: str  # "int8", "uint8" or "int4"
    max_abs_weight: int  # |weight - zero point|, over the whole tensor

    @property
    def saturation_free(self) -> bool:
        return self.weight_dtype == "uint8" or self.max_abs_weight <= SAFE_INT8_WEIGHT


def _onnx_reader(model_path: Path):
    """name -> numpy array for the model's initializers, reading external data lazily through a memory map."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    tensors = {t.name: t for t in model.graph.initializer}

    def read(name: str) -> np.ndarray | None:
        tensor = tensors.get(name)
        if tensor is None:
            return None
        if tensor.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor)
        info = {entry.key: entry.value for entry in tensor.external_data}
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        array = np.memmap(model_path.parent / info["location"], dtype=dtype, mode="r",
                          offset=int(info.get("offset", 0)), shape=(count,))  # fmt: skip
        return array.reshape(tuple(tensor.dims))

    return model, read


def _kernel(node_name: str, weight: np.ndarray, zero_point: np.ndarray | None) -> IntegerKernel:
    zero = 0 if zero_point is None else zero_point.astype(np.int64)
    if weight.ndim and np.ndim(zero) == 1 and len(zero) == weight.shape[0]:
        zero = zero.reshape((-1,) + (1,) * (weight.ndim - 1))  # per output channel (Conv weights: axis 0)
    centred = np.abs(weight.astype(np.int64) - zero) if weight.size else np.zeros(1, np.int64)
    return IntegerKernel(node_name, str(weight.dtype), int(centred.max()))


def _nbits_kernel(node, read) -> IntegerKernel | None:
    """MatMulNBits with 4-bit codes and integer compute (accuracy_level 4); None when it computes in float."""
    attributes = {a.name: a.i for a in node.attribute if a.name in ("bits", "accuracy_level")}
    if attributes.get("accuracy_level", 0) != 4:
        return None
    if attributes.get("bits") != 4 or (len(node.input) > 3 and node.input[3]):
        raise ExportError(f"{node.name}: only symmetric 4-bit MatMulNBits (no zero points) is checked here")
    packed = np.asarray(read(node.input[1]))
    codes = np.concatenate([packed & 0x0F, packed >> 4]).astype(np.int64)
    return IntegerKernel(node.name, "int4", int(np.abs(codes - 8).max()) if codes.size else 0)


def onnx_integer_kernels(model_path: Path) -> list[IntegerKernel]:
    model, read = _onnx_reader(Path(model_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    kernels = []
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kernel = _nbits_kernel(node, read)
            if kernel is not None:
                kernels.append(kernel)
        elif node.op_type in _INTEGER_OPS:
            w_index, zp_index = _INTEGER_OPS[node.op_type]
            weight = read(node.input[w_index])
            if weight is not None:
                zp = read(node.input[zp_index]) if len(node.input) > zp_index and node.input[zp_index] else None
                kernels.append(_kernel(node.name, weight, zp))
        elif node.op_type in _FLOAT_OPS:
            dequantized = [producers.get(name) for name in node.input[:2]]
            if not all(p is not None and p.op_type == "DequantizeLinear" for p in dequantized):
                continue  # a float operand: float compute, whatever the weight's storage
            for dq in dequantized:
                weight = read(dq.input[0])
                if weight is not None and weight.dtype in (np.int8, np.uint8):
                    zp = read(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
                    kernels.append(_kernel(node.name, weight, zp))
    return kernels


def openvino_integer_kernels(xml_path: Path) -> list[IntegerKernel]:
    """Convolutions/MatMuls of an IR whose activation passes a FakeQuantize and whose weight is an int8 constant.

    NNCF writes quantized weights as Constant(i8) -> Convert -> [Subtract zero point] -> Multiply(scale); the
    CPU plugin folds that back into an int8 weight for its integer kernel.
    """
    xml_path = Path(xml_path)
    root = ET.parse(xml_path).getroot()
    layers = {layer.get("id"): layer for layer in root.iter("layer")}
    sources = {}
    for edge in root.iter("edge"):
        sources[(edge.get("to-layer"), edge.get("to-port"))] = edge.get("from-layer")

    def inputs(layer_id: str) -> list[str]:
        ports = layers[layer_id].find("input")
        ids = [port.get("id") for port in ports.findall("port")] if ports is not None else []
        return [sources[(layer_id, port)] for port in ids if (layer_id, port) in sources]

    def walk_to_constant(layer_id: str, depth: int = 4):
        for _ in range(depth):
            layer = layers[layer_id]
            if layer.get("type") == "Const":
                return layer
            if layer.get("type") not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
                return None
            layer_id = inputs(layer_id)[0]
        return None

    weights_blob = None
    kernels = []
    for layer_id, layer in layers.items():
        if layer.get("type") not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        operands = inputs(layer_id)
        if len(operands) < 2 or layers[operands[0]].get("type") != "FakeQuantize":
            continue
        const = walk_to_constant(operands[1])
        data = const.find("data") if const is not None else None
        if data is None or data.get("element_type") not in ("i8", "u8"):
            continue
        if weights_blob is None:
            weights_blob = np.memmap(xml_path.with_suffix(".bin"), dtype=np.uint8, mode="r")
        dtype = np.int8 if data.get("element_type") == "i8" else np.uint8
        offset, size = int(data.get("offset")), int(data.get("size"))
        weight = np.frombuffer(weights_blob[offset : offset + size], dtype=dtype)
        kernels.append(_kernel(layer.get("name"), weight, None))
    return kernels


def saturation_risks(kernels: list[IntegerKernel]) -> list[str]:
    """One line per kernel that could saturate on an x86 CPU without VNNI; empty when the graph is safe."""
    return [
        f"{k.node}: {k.weight_dtype} weights reach {k.max_abs_weight} (safe without VNNI: <= {SAFE_INT8_WEIGHT})"
        for k in kernels
        if not k.saturation_free
    ]


def integer_kernel_record(fmt: str, graph_file: Path) -> dict:
    """The manifest's `integer_kernels` entry for one quantized graph file; refuses a graph that could saturate.

    The runtime reads `saturation_free` to decide whether to warn on a CPU without VNNI (runtime/cpu.py).
    """
    kernels = onnx_integer_kernels(graph_file) if fmt == "onnx" else openvino_integer_kernels(graph_file)
    risks = saturation_risks(kernels)
    if risks:
        raise ExportError(
            f"{graph_file}: {len(risks)} integer kernel(s) could saturate on CPUs without VNNI, e.g. {risks[0]}; "
            "this is a bug in the quantizer, please report it"
        )
    return {
        "count": len(kernels),
        "max_abs_weight": max((k.max_abs_weight for k in kernels), default=0),
        "saturation_free": True,
    }
