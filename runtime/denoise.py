"""One denoiser evaluation: IdentityNet then the UNet (with face attention), with classifier-free guidance.

`make_denoiser` closes over everything constant during a run and returns `eps(model_input, t, step)`, the
noise prediction a sampler needs. IdentityNet gets only the face tokens (plus pooled text and time ids); the
UNet gets the text tokens followed by the face tokens. Outside IdentityNet's active window (or at scale 0)
IdentityNet is skipped and its residuals are zeros, which is what running it at scale 0 gives.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .manifest import RESIDUAL_STRIDES, RESIDUALS, latent_size
from .package import ModelPackage
from .settings import GenerationSettings, identitynet_active
from .text import check_finite


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def run(self, name: str, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        return result


@dataclass(frozen=True)
class Conditioning:
    """Everything constant across steps, batched [uncond, cond] when CFG is on."""

    text: np.ndarray  # [B, 77, cross]
    pooled: np.ndarray  # [B, pooled]
    image_tokens: np.ndarray  # [B, 16, cross]
    time_ids: np.ndarray  # [B, 6]
    control: np.ndarray  # [B, 3, H, W] float32 in [0, 1]

    @property
    def context(self) -> np.ndarray:
        return np.concatenate([self.text, self.image_tokens], axis=1)


def zero_residuals(package: ModelPackage, batch: int, latent_h: int, latent_w: int) -> dict[str, np.ndarray]:
    specs = {spec.name: spec for spec in package.manifest.graph("identitynet").outputs}
    zeros = {}
    for name, stride in zip(RESIDUALS, RESIDUAL_STRIDES, strict=True):
        h, w = latent_size(latent_h * 8, latent_w * 8, stride)
        zeros[name] = np.zeros((batch, specs[name].shape[1], h, w), np.float32)
    return zeros


def identitynet_feeds(cond: Conditioning, x: np.ndarray, t: float, scale: float) -> dict[str, np.ndarray]:
    return {"sample": x, "timestep": np.array(t, np.float32), "image_tokens": cond.image_tokens,
            "controlnet_cond": cond.control, "conditioning_scale": np.array(scale, np.float32),
            "text_embeds": cond.pooled, "time_ids": cond.time_ids}  # fmt: skip


def unet_feeds(cond: Conditioning, context: np.ndarray, x: np.ndarray, t: float, residuals: dict, ip_scale: float):
    return {"sample": x, "timestep": np.array(t, np.float32), "encoder_hidden_states": context,
            "text_embeds": cond.pooled, "time_ids": cond.time_ids, **residuals,
            "ip_scale": np.array(ip_scale, np.float32)}  # fmt: skip


def make_denoiser(
    package: ModelPackage, cond: Conditioning, settings: GenerationSettings, timer: StageTimer, one_graph: bool = False
) -> Callable[[np.ndarray, float, int], np.ndarray]:
    """`one_graph` keeps only one of IdentityNet and the UNet open at a time (reopened every step): slow, but
    the full-size fp32 pair does not fit 24 GiB together."""
    context = cond.context
    batch = cond.text.shape[0]
    zeros: dict[tuple, dict[str, np.ndarray]] = {}  # residuals outside IdentityNet's window, made once per shape

    def eps(model_input: np.ndarray, t: float, step: int) -> np.ndarray:
        x = np.concatenate([model_input] * batch).astype(np.float32)
        scale = settings.identitynet_scale * identitynet_active(
            step, settings.steps, settings.control_start, settings.control_end
        )
        if scale > 0:
            run = package.session("identitynet").run
            residuals = timer.run("identitynet", run, identitynet_feeds(cond, x, t, scale))
            for value in residuals.values():
                check_finite(f"identitynet (step {step + 1})", value)
            if one_graph:
                package.release("identitynet")
        else:
            if x.shape not in zeros:
                zeros[x.shape] = zero_residuals(package, batch, x.shape[2], x.shape[3])
            residuals = zeros[x.shape]
        feeds = unet_feeds(cond, context, x, t, residuals, settings.ip_scale)
        noise = check_finite(
            f"unet (step {step + 1})", timer.run("unet", package.session("unet").run, feeds)["noise_pred"]
        )
        if one_graph:
            package.release("unet")
        if batch == 2:
            uncond, conditional = noise[:1], noise[1:]
            return uncond + np.float32(settings.guidance) * (conditional - uncond)
        return noise

    return eps
