"""The ControlNet part of one denoising step in PyTorch, as InstantID's full pipeline runs it: the oracle.

pipeline_stable_diffusion_xl_instantid_full.py (instantX-research/InstantID): IdentityNet (the first net) sees
the face tokens, every other ControlNet the text embeddings; with a `control_mask` (face region) IdentityNet's
residuals are multiplied by the mask resized bilinearly to `(h // scale, w // scale)` for the scales
8, 8, 8, 16, 16, 16, 32, 32, 32 (the mid residual takes the last); the nets' residuals are then summed, as
diffusers' MultiControlNet sums them. Every net has the same active window (a scalar start/end applies to all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime.manifest import RESIDUAL_STRIDES


@dataclass(frozen=True)
class ReferenceControl:
    """An extra ControlNet in a reference run."""

    net: torch.nn.Module
    image: torch.Tensor  # [B, 3, H, W] in [0, 1]
    strength: float


def residual_masks(region: np.ndarray, vae_scale_factor: int) -> list[torch.Tensor]:
    """The face mask at each IdentityNet residual's size (9 down residuals, then the mid), upstream's way."""
    mask = torch.from_numpy(region)[None, None]
    height, width = mask.shape[-2:]
    down = [
        F.interpolate(mask, (height // (vae_scale_factor * s), width // (vae_scale_factor * s)), mode="bilinear")
        for s in RESIDUAL_STRIDES[:9]
    ]
    return [*down, down[-1]]


def controlnet_residuals(identitynet, x, t, tokens, text, added, control, scale, keep, masks, extras):
    """(down residuals, mid residual): IdentityNet's (masked when `masks`) plus each extra net's."""
    down, mid = identitynet(x, t, encoder_hidden_states=tokens, controlnet_cond=control,
                            conditioning_scale=scale * keep, added_cond_kwargs=added, return_dict=False)  # fmt: skip
    if masks is not None:
        down = [residual * mask for residual, mask in zip(down, masks[:9], strict=True)]
        mid = mid * masks[-1]
    all_down, all_mid = [down], [mid]
    for extra in extras:
        extra_down, extra_mid = extra.net(x, t, encoder_hidden_states=text, controlnet_cond=extra.image,
                                          conditioning_scale=extra.strength * keep, added_cond_kwargs=added,
                                          return_dict=False)  # fmt: skip
        all_down.append(extra_down)
        all_mid.append(extra_mid)
    if not extras:
        return down, mid
    summed_down = [torch.stack(level).sum(dim=0) for level in zip(*all_down, strict=True)]
    return summed_down, torch.stack(all_mid).sum(dim=0)
