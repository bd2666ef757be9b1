"""4-bit MatMul weights for ONNX Runtime: `MatMulNBits` (com.microsoft), written tensor by tensor.

y = MatMul(x, W) with a constant W [K, N] becomes MatMulNBits(x, B, scales): W's columns are cut along K into
groups (`group_size`, a power of two, smaller for K it does not divide: Int4Rule.group_for), each group scaled
to -7..7 and stored as 4-bit codes 1..15 around the default zero point 8, two codes a byte, low nibble first
(ONNX Runtime's contrib operator spec: B [N, K/group, group/2] uint8, scales [N * K/group]).
`accuracy_level` 4 lets ONNX Runtime quantize x to int8 per group and multiply integers. Without VNNI its
kernels multiply the activation's magnitude (at most 128) by the weight with its sign moved over; 4-bit codes
keep |w - zero point| <= 8, far inside the safe range of runtime/cpu.py (2 x 255 x 8 fits 16 bits easily), so
the saturation of full-range int8 cannot happen here (tests/test_int4.py runs it on an emulated AVX2 CPU).
"""

from __future__ import annotations

import numpy as np

ZERO_POINT = 8  # MatMulNBits' default for 4 bits when no zero points are given
LEVELS = 7  # symmetric codes -7..7 around the zero point


DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators, opset 1


def quantize_int4(weight: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] float -> (B [N, ceil(K/group), group/2] uint8 packed codes, scales [N * groups] float32)."""
    k, n = weight.shape
    groups = -(-k // group)
    padded = np.zeros((groups * group, n), np.float32)
    padded[:k] = weight
    blocks = padded.T.reshape(n, groups, group)
    scale = np.abs(blocks).max(axis=-1) / LEVELS
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = (np.clip(np.round(blocks / scale[..., None]), -LEVELS, LEVELS) + ZERO_POINT).astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale.reshape(-1)


def dequantize_int4(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """The float W [K, N] MatMulNBits computes with (for tests and fidelity checks)."""
    n, groups, half = packed.shape
    codes = np.empty((n, groups, 2 * half), np.int16)
    codes[..., 0::2], codes[..., 1::2] = packed & 0x0F, packed >> 4
    values = (codes - ZERO_POINT) * scales.reshape(n, groups, 1)
    return values.reshape(n, groups * 2 * half)[:, :k].T.astype(np.float32)


def nbits_matmul(node, weight_name: str, weight: np.ndarray, group: int, accuracy_level: int) -> tuple[list, list]:
    """(new tensors [(name, array)], new nodes) replacing MatMul `node` with MatMulNBits."""
    from onnx import helper

    k, n = weight.shape
    packed, scales = quantize_int4(weight.astype(np.float32), group)
    base = node.name or weight_name
    tensors = [(weight_name + "_int4", packed), (weight_name + "_int4_scales", scales)]
    matmul = helper.make_node(
        "MatMulNBits", [node.input[0], weight_name + "_int4", weight_name + "_int4_scales"], [node.output[0]],
        name=f"{base}_nbits", domain=DOMAIN, K=k, N=n, bits=4, block_size=group, accuracy_level=accuracy_level,
    )  # fmt: skip
    return tensors, [matmul]
