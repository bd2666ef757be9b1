"""Face-region control, InstantID's "enhance non-face region" (gradio_demo/app.py, on by default there).

The mask is the chosen face's box (the face whose keypoints are drawn) at the output size: ones inside,
zeros outside, the box's coordinates truncated to integers as the app does (`control_mask[y1:y2, x1:x2]`).
Upstream's full pipeline (pipeline_stable_diffusion_xl_instantid_full.py) applies it twice:

- IdentityNet's residuals are multiplied by the mask resized bilinearly (PyTorch's `interpolate`,
  align_corners False, no antialiasing) to each residual's size; the extra ControlNets are not masked;
- inside every cross-attention of the UNet the face attention is multiplied by the mask resized (nearest) to
  that layer's resolution (ip_adapter/attention_processor.py, `region_control`); the exported UNet takes it as
  `face_mask` at the latents' size, `mask[::f, ::f]` for the VAE factor f.

Deliberate differences: a box reaching past the photo's top or left edge is clipped at 0 (the app's slicing
would wrap a negative coordinate around and lose the region); with an output size other than the photo's,
the box is scaled to the output size (the app always generates at the photo's size); residuals take their own
size where upstream's `h // 8s` would not match them (sizes that are not multiples of 64 fail upstream).
"""

from __future__ import annotations

import numpy as np

from .face import FaceConditioning
from .manifest import RESIDUAL_STRIDES, RESIDUALS, level_size


def face_region_mask(faces: FaceConditioning) -> np.ndarray:
    """[H, W] float32 at the output size: 1 in the pose face's box, 0 elsewhere."""
    canvas_width, canvas_height = faces.canvas_size
    scale = np.array([faces.width / canvas_width, faces.height / canvas_height] * 2)
    box = faces.pose.bbox if scale.min() == scale.max() == 1 else faces.pose.bbox * scale
    x1, y1, x2, y2 = (max(int(value), 0) for value in box)
    mask = np.zeros((faces.height, faces.width), np.float32)
    mask[y1:y2, x1:x2] = 1
    return mask


def _bilinear_taps(size_in: int, size_out: int):
    """PyTorch's source indices and weights along one axis (upsample_bilinear2d, align_corners False)."""
    scale = np.float32(size_in / size_out)
    source = np.maximum(scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    low = source.astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    upper = (source - low).astype(np.float32)
    return low, high, (1 - upper).astype(np.float32), upper


def resize_bilinear(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] -> [height, width] as `torch.nn.functional.interpolate(..., mode="bilinear")`."""
    rows_low, rows_high, rows_w0, rows_w1 = _bilinear_taps(mask.shape[0], height)
    cols_low, cols_high, cols_w0, cols_w1 = _bilinear_taps(mask.shape[1], width)
    top = mask[rows_low][:, cols_low] * cols_w0 + mask[rows_low][:, cols_high] * cols_w1
    bottom = mask[rows_high][:, cols_low] * cols_w0 + mask[rows_high][:, cols_high] * cols_w1
    return (rows_w0[:, None] * top + rows_w1[:, None] * bottom).astype(np.float32)


def residual_masks(mask: np.ndarray, latent_h: int, latent_w: int) -> dict[str, np.ndarray]:
    """The mask at each IdentityNet residual's size, [1, 1, h, w] by residual name."""
    by_stride = {}
    for stride in set(RESIDUAL_STRIDES):
        by_stride[stride] = resize_bilinear(mask, *level_size(latent_h, latent_w, stride))[None, None]
    return {name: by_stride[stride] for name, stride in zip(RESIDUALS, RESIDUAL_STRIDES, strict=True)}


def latent_mask(mask: np.ndarray, vae_scale_factor: int) -> np.ndarray:
    """The UNet's `face_mask` input: [1, 1, H / f, W / f], every f-th pixel of the mask."""
    return np.ascontiguousarray(mask[::vae_scale_factor, ::vae_scale_factor])[None, None]
