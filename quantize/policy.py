"""What each method does to each graph: data, not code branches.

Actions: "fp32" (left as is), "weights" (int8 weights, float compute: MatMul/Gather weights in OpenVINO,
dynamic int8 MatMul in ONNX Runtime), "hybrid" (int8 weights for MatMul/Gather, full int8 with calibrated
activations for convolutions), "full" (int8 weights and calibrated activations everywhere allowed).
The VAE stays fp32 (int8 gives artefacts and NaN-prone decodes); the image adapter is small and stays fp32;
the text encoders get int8 weights only (activation quantization hurts them for little gain).
"""

from __future__ import annotations

from ..runtime.errors import ConfigError

METHODS = ("weights", "hybrid", "full")
ACTIONS = ("fp32", "weights", "hybrid", "full")

_TEXT = {"text_encoder": "weights", "text_encoder_2": "weights"}
_FLOAT = {"image_proj": "fp32", "vae_decoder": "fp32", "vae_encoder": "fp32"}
POLICIES = {
    "weights": {"unet": "weights", "identitynet": "weights", **_TEXT, **_FLOAT},
    "hybrid": {"unet": "hybrid", "identitynet": "hybrid", **_TEXT, **_FLOAT},
    "full": {"unet": "full", "identitynet": "full", **_TEXT, **_FLOAT},
}

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
