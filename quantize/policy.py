"""What each method does to each graph: data, not code branches.

Actions: "fp32" (left as is), "weights" (int8 weights, float compute: MatMul/Gather weights in OpenVINO,
dynamic int8 MatMul in ONNX Runtime), "hybrid" (int8 weights for MatMul/Gather, full int8 with calibrated
activations for convolutions), "full" (int8 weights and calibrated activations everywhere allowed), "int4"
(4-bit MatMul weights in groups, as INT4 says; embeddings int8 weights), "int4-hybrid" (int4's MatMuls and
embeddings, hybrid's calibrated convolutions). Where the two weight-only actions leave convolutions' weights
depends on the backend: WEIGHT_ONLY_CONVOLUTIONS.
The VAE stays fp32 (int8 gives artefacts and NaN-prone decodes); the image adapter is small and stays fp32;
the text encoders get int8 weights only (activation quantization hurts them for little gain).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import ConfigError

METHODS = ("weights", "hybrid", "full", "int4", "int4-hybrid")
ACTIONS = ("fp32", "weights", "hybrid", "full", "int4", "int4-hybrid")
WEIGHT_ONLY = ("weights", "int4")  # float compute everywhere: no calibration
CALIBRATED_CONVOLUTIONS = ("hybrid", "full", "int4-hybrid")  # int8 convolutions with calibrated activations

_TEXT = {"text_encoder": "weights", "text_encoder_2": "weights"}
_FLOAT = {"image_proj": "fp32", "vae_decoder": "fp32", "vae_encoder": "fp32"}
POLICIES = {
    "weights": {"unet": "weights", "identitynet": "weights", **_TEXT, **_FLOAT},
    "hybrid": {"unet": "hybrid", "identitynet": "hybrid", **_TEXT, **_FLOAT},
    "full": {"unet": "full", "identitynet": "full", **_TEXT, **_FLOAT},
    # the text encoders keep int8: their weights are a sixth of the denoisers' and their outputs steer every step
    "int4": {"unet": "int4", "identitynet": "int4", **_TEXT, **_FLOAT},
    # OpenVINO's compiled model holds calibrated convolutions as int8, weight-only ones as f32: int4's smallest form
    "int4-hybrid": {"unet": "int4-hybrid", "identitynet": "int4-hybrid", **_TEXT, **_FLOAT},
}
PRECISION = {  # of each action's MatMul weights
    "fp32": "fp32", "weights": "int8", "hybrid": "int8", "full": "int8", "int4": "int4", "int4-hybrid": "int4",
}  # fmt: skip


@dataclass(frozen=True)
class Int4Rule:
    """What the int4 action does, the same on both backends (NNCF INT4_SYM for OpenVINO, MatMulNBits for ONNX).

    MatMul weights: 4-bit symmetric, one scale per `group_size` weights along K. Where K is not a multiple, the
    largest power of two below it that divides K, down to `min_group_size` (NNCF's ADJUST fallback); below that
    the MatMul stays int8. Embedding tables: int8 weights. Convolutions: WEIGHT_ONLY_CONVOLUTIONS.
    """

    group_size: int = 64  # divides every SDXL width (320, 640, 1280, 2048, 5120); 128 would not divide 320
    min_group_size: int = 16
    embeddings: str = "int8"
    accuracy_level: int = 4  # ONNX Runtime: int8 activations per group, integer dot products (onnx_int4.py)

    def group_for(self, k: int) -> int | None:
        group = self.group_size
        while group >= self.min_group_size:
            if k % group == 0:
                return group
            group //= 2
        return None


INT4 = Int4Rule()

# What the weight-only actions (WEIGHT_ONLY) store for convolution weights, per package format; their
# compute is float either way. ONNX Runtime dequantizes int8 convolution weights at every call and keeps only
# the int8 ones. OpenVINO's CPU plugin folds them to f32 once, at compile time, and then holds about a second
# f32 copy of them (measured, not traced inside OpenVINO); stored as f32, the IR's mapped pages are all there is
# besides, and those are dropped once compiled (runtime/memory.py). The full-size UNet's int8 convolutions folded to
# f32 in its IR (output bit-identical): 1.25 GiB less memory compiled, IdentityNet 0.54 (bench/RESULTS.md
# "OpenVINO: convolutions' weights stay float"). Left float, they are also the fp32 weights themselves.
WEIGHT_ONLY_CONVOLUTIONS = {"onnx": "int8", "openvino": "float"}
CALIBRATED = "calibrated"  # what CALIBRATED_CONVOLUTIONS store: int8 weights run by integer kernels on both backends


def convolution_weights(action: str, fmt: str) -> str:
    """How a quantized graph's convolutions are stored, recorded per graph (the memory estimate reads it)."""
    return WEIGHT_ONLY_CONVOLUTIONS[fmt] if action in WEIGHT_ONLY else CALIBRATED


# Layers that stay float whatever the method (regular expressions over node names). IdentityNet's first
# convolutions: quantizing the one on the latents "impacts the generation results" (OpenVINO's InstantID
# notebook); the control-image embedding's input layer sees raw [0,1] keypoint images with hard edges.
KEEP_FLOAT = {
    "identitynet": [r".*/net/conv_in/.*", r".*controlnet_cond_embedding/conv_in/.*"],
}


def policy_for(method: str, graphs: list[str] | None, available: list[str]) -> dict[str, str]:
    """The action per graph: the method's defaults, restricted to `graphs` (others stay fp32) when given."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if graphs:
        unknown = sorted(set(graphs) - set(available))
        if unknown:
            raise ConfigError(f"unknown graph name(s) {', '.join(unknown)}; the package has {', '.join(available)}")
    policy = {}
    for name in available:
        action = POLICIES[method].get(name, "fp32")
        if graphs and name not in graphs:
            action = "fp32"
        elif graphs and action == "fp32":
            action = "weights"  # asked for explicitly: at least its weights
        policy[name] = action
    return policy
