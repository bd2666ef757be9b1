"""The noise predictor a sampler calls: IdentityNet, then the UNet (with face attention), with classifier-free
guidance.

`make_noise_predictor` closes over everything constant during a run (`PredictorInputs`) and returns
`eps(model_input, t, step)`, the predicted noise (epsilon) a sampler needs. IdentityNet gets only the face
tokens (plus pooled text and time ids); the UNet gets the text tokens followed by the face tokens. Outside
IdentityNet's active window (or at scale 0) IdentityNet is skipped and its residuals are zeros, which is what
running it at scale 0 gives. The memory policy may close each graph after its call.

InstantID's full pipeline adds (pipeline_stable_diffusion_xl_instantid_full.py): face-region control
(IdentityNet's residuals times the face mask at their size, the face attention confined by the UNet's
`face_mask`; face_region.py) and extra ControlNets, which see the text embeddings and whose residuals are
summed with IdentityNet's (diffusers' MultiControlNet), all within the same active window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import check_finite
from .manifest import RESIDUAL_STRIDES, RESIDUALS, level_size
from .memory import MemoryPolicy
from .package import ModelPackage
from .sampling import NoisePredictor
from .settings import GenerationSettings, identitynet_active
from .timing import StageTimer


@dataclass(frozen=True)
class ExtraControl:
    """An extra ControlNet's part in a run: its residuals are added to IdentityNet's, as diffusers'
    MultiControlNet adds its nets' residuals; it sees the text embeddings, where IdentityNet sees the face
    tokens (InstantID's full pipeline)."""

    graph: str
    condition: np.ndarray  # [B, 3, H, W] float32 in [0, 1]
    strength: float


@dataclass(frozen=True)
class PredictorInputs:
    """Everything the noise predictor takes that is constant across steps, batched [uncond, cond] with CFG."""

    text: np.ndarray  # [B, text tokens, cross]: the prompts' hidden states
    pooled: np.ndarray  # [B, pooled]
    image_tokens: np.ndarray  # [B, num_image_tokens, cross]: the face tokens
    time_ids: np.ndarray  # [B, 6]
    control: np.ndarray  # [B, 3, H, W] float32 in [0, 1]: the keypoint image
    face_mask: np.ndarray | None = None  # [1, 1, h, w] the UNet's face region (ones: everywhere; None: no input)
    residual_masks: dict[str, np.ndarray] | None = None  # face region at each IdentityNet residual's size
    controls: tuple[ExtraControl, ...] = ()

    @property
    def batch(self) -> int:
        return self.text.shape[0]

    @property
    def context(self) -> np.ndarray:
        """The UNet's cross-attention context: text tokens followed by face tokens."""
        return np.concatenate([self.text, self.image_tokens], axis=1)


def zero_residuals(package: ModelPackage, batch: int, latent_h: int, latent_w: int) -> dict[str, np.ndarray]:
    specs = {spec.name: spec for spec in package.manifest.graph("identitynet").outputs}
    zeros = {}
    for name, stride in zip(RESIDUALS, RESIDUAL_STRIDES, strict=True):
        h, w = level_size(latent_h, latent_w, stride)
        zeros[name] = np.zeros((batch, specs[name].shape[1], h, w), np.float32)
    return zeros


def identitynet_feeds(inputs: PredictorInputs, x: np.ndarray, t: float, scale: float) -> dict[str, np.ndarray]:
    return {"sample": x, "timestep": np.array(t, np.float32), "image_tokens": inputs.image_tokens,
            "controlnet_cond": inputs.control, "conditioning_scale": np.array(scale, np.float32),
            "text_embeds": inputs.pooled, "time_ids": inputs.time_ids}  # fmt: skip


def unet_feeds(inputs: PredictorInputs, context: np.ndarray, x: np.ndarray, t: float, residuals: dict,
               ip_scale: float, face_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """`face_mask` only for a UNet that takes one (packages exported before face-region control do not)."""
    feeds = {"sample": x, "timestep": np.array(t, np.float32), "encoder_hidden_states": context,
             "text_embeds": inputs.pooled, "time_ids": inputs.time_ids, **residuals,
             "ip_scale": np.array(ip_scale, np.float32)}  # fmt: skip
    if face_mask is not None:
        feeds["face_mask"] = face_mask
    return feeds


def controlnet_feeds(inputs: PredictorInputs, control: ExtraControl, x: np.ndarray, t: float,
                     scale: float) -> dict[str, np.ndarray]:  # fmt: skip
    return {"sample": x, "timestep": np.array(t, np.float32), "encoder_hidden_states": inputs.text,
            "controlnet_cond": control.condition, "conditioning_scale": np.array(scale, np.float32),
            "text_embeds": inputs.pooled, "time_ids": inputs.time_ids}  # fmt: skip


def make_noise_predictor(
    package: ModelPackage,
    inputs: PredictorInputs,
    settings: GenerationSettings,
    timer: StageTimer,
    memory: MemoryPolicy = MemoryPolicy("normal"),
    num_steps: int | None = None,
) -> NoisePredictor:
    """`memory` may close IdentityNet and the UNet after each call (minimal: the full-size fp32 pair does not
    fit 24 GiB together). `num_steps`: the steps the sampler runs (img2img runs fewer than `settings.steps`);
    the ControlNets' active window is a fraction of those, as in diffusers."""
    context = inputs.context
    batch = inputs.batch
    num_steps = num_steps or settings.steps
    zeros: dict[tuple, dict[str, np.ndarray]] = {}  # residuals outside IdentityNet's window, made once per shape

    def controlnet_residuals(x: np.ndarray, t: float, step: int) -> dict[str, np.ndarray] | None:
        """IdentityNet's residuals (face region applied) plus each extra ControlNet's; None when none runs."""
        keep = identitynet_active(step, num_steps, settings.control_start, settings.control_end)
        residuals = None
        if settings.identitynet_scale * keep > 0:
            run = package.session("identitynet").run
            feeds = identitynet_feeds(inputs, x, t, settings.identitynet_scale * keep)
            residuals = timer.run("identitynet", run, feeds)
            for value in residuals.values():
                check_finite(f"identitynet (step {step + 1})", value)
            memory.close("identitynet", package)
            if inputs.residual_masks is not None:
                residuals = {name: value * inputs.residual_masks[name] for name, value in residuals.items()}
        for control in inputs.controls:
            if control.strength * keep > 0:
                run = package.session(control.graph).run
                extra = timer.run("controlnet", run, controlnet_feeds(inputs, control, x, t, control.strength * keep))
                for value in extra.values():
                    check_finite(f"{control.graph} (step {step + 1})", value)
                memory.close("identitynet", package, controlnets=(control.graph,))
                residuals = extra if residuals is None else {name: residuals[name] + extra[name] for name in extra}
        return residuals

    def eps(model_input: np.ndarray, t: float, step: int) -> np.ndarray:
        x = np.concatenate([model_input] * batch).astype(np.float32)
        residuals = controlnet_residuals(x, t, step)
        if residuals is None:
            if x.shape not in zeros:
                zeros[x.shape] = zero_residuals(package, batch, x.shape[2], x.shape[3])
            residuals = zeros[x.shape]
        feeds = unet_feeds(inputs, context, x, t, residuals, settings.ip_scale, inputs.face_mask)
        noise = check_finite(
            f"unet (step {step + 1})", timer.run("unet", package.session("unet").run, feeds)["noise_pred"]
        )
        memory.close("unet", package)
        if batch == 2:
            uncond, conditional = noise[:1], noise[1:]
            return uncond + np.float32(settings.guidance) * (conditional - uncond)
        return noise

    return eps
