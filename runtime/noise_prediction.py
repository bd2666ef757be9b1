"""The noise predictor a sampler calls: IdentityNet, then the UNet (with face attention), with classifier-free
guidance.

`make_noise_predictor` closes over everything constant during a run (`PredictorInputs`) and returns
`eps(model_input, t, step)`, the predicted noise (epsilon) a sampler needs. IdentityNet gets only the face
tokens (plus pooled text and time ids); the UNet gets the text tokens followed by the face tokens. Outside
IdentityNet's active window (or at scale 0) IdentityNet is skipped and its residuals are zeros, which is what
running it at scale 0 gives. The memory policy may close each graph after its call, and may run CFG as two batch-1
calls of each graph (uncond, then cond) instead of one batch-2 call: half the activations, the same numbers to
float rounding (tests/test_memory_modes.py).

InstantID's full pipeline adds (pipeline_stable_diffusion_xl_instantid_full.py): face-region control
(IdentityNet's residuals times the face mask at their size, the face attention confined by the UNet's
`face_mask`; face_region.py) and extra ControlNets, which see the text embeddings and whose residuals are
summed with IdentityNet's (diffusers' MultiControlNet), all within the same active window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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

    def halves(self) -> tuple[PredictorInputs, ...]:
        """One batch-1 PredictorInputs per CFG branch ([uncond], [cond]); itself when batch 1."""
        if self.batch == 1:
            return (self,)
        fields = ("text", "pooled", "image_tokens", "time_ids", "control")
        return tuple(
            PredictorInputs(
                **{f: getattr(self, f)[i : i + 1] for f in fields},
                face_mask=self.face_mask,  # masks are [1, 1, h, w]: the same for both branches
                residual_masks=self.residual_masks,
                controls=tuple(replace(c, condition=c.condition[i : i + 1]) for c in self.controls),
            )
            for i in range(self.batch)
        )


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
    fit 24 GiB together) and may split CFG's batch into two calls of each graph. `num_steps`: the steps the
    sampler runs (img2img runs fewer than `settings.steps`); the ControlNets' active window is a fraction of
    those, as in diffusers."""
    parts = inputs.halves() if memory.cfg_split else (inputs,)
    contexts = [part.context for part in parts]
    num_steps = num_steps or settings.steps
    controlnets = tuple(control.graph for control in inputs.controls)
    zeros: dict[tuple, dict[str, np.ndarray]] = {}  # residuals outside IdentityNet's window, made once per shape

    def controlnet_residuals(part: PredictorInputs, x: np.ndarray, t: float, step: int, keep: float) -> dict | None:
        """IdentityNet's residuals (face region applied) plus each extra ControlNet's; None when none runs."""
        residuals = None
        if settings.identitynet_scale * keep > 0:
            run = package.session("identitynet").run
            residuals = timer.run("identitynet", run, identitynet_feeds(part, x, t, settings.identitynet_scale * keep))
            for value in residuals.values():
                check_finite(f"identitynet (step {step + 1})", value)
            if part.residual_masks is not None:
                residuals = {name: value * part.residual_masks[name] for name, value in residuals.items()}
        for control in part.controls:
            if control.strength * keep > 0:
                run = package.session(control.graph).run
                extra = timer.run("controlnet", run, controlnet_feeds(part, control, x, t, control.strength * keep))
                for value in extra.values():
                    check_finite(f"{control.graph} (step {step + 1})", value)
                residuals = extra if residuals is None else {name: residuals[name] + extra[name] for name in extra}
        return residuals

    def eps(model_input: np.ndarray, t: float, step: int) -> np.ndarray:
        keep = identitynet_active(step, num_steps, settings.control_start, settings.control_end)
        xs = [np.concatenate([model_input] * part.batch).astype(np.float32) for part in parts]
        # every ControlNet call before the UNet's: in minimal mode each graph opens once per step
        residuals = [controlnet_residuals(part, x, t, step, keep) for part, x in zip(parts, xs, strict=True)]
        if any(r is not None for r in residuals):
            memory.close("identitynet", package, controlnets)
        noises = []
        for part, context, x, residual in zip(parts, contexts, xs, residuals, strict=True):
            if residual is None:
                if x.shape not in zeros:
                    zeros[x.shape] = zero_residuals(package, x.shape[0], x.shape[2], x.shape[3])
                residual = zeros[x.shape]
            feeds = unet_feeds(part, context, x, t, residual, settings.ip_scale, part.face_mask)
            run = package.session("unet").run
            noises.append(check_finite(f"unet (step {step + 1})", timer.run("unet", run, feeds)["noise_pred"]))
        memory.close("unet", package)
        noise = np.concatenate(noises)
        if inputs.batch == 2:
            uncond, conditional = noise[:1], noise[1:]
            return uncond + np.float32(settings.guidance) * (conditional - uncond)
        return noise

    return eps
