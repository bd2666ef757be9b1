"""Extra ControlNets' conditions: a canny edge map computed here, or a prepared image (depth, pose).

InstantID's multi-ControlNet app (gradio_demo/app-multicontrolnet.py, controlnet_util.py) runs IdentityNet
with pose, canny or depth ControlNets, each with a strength (0.4 by default there). Its canny condition is
`cv2.Canny` with thresholds 100 and 200 on the face photo (or the pose photo when one is given); we do the same
with OpenCV. Its depth (DPT-hybrid MiDaS) and pose (OpenPose) detectors are neural networks we cannot ship, so
those ControlNets take a condition image prepared elsewhere, used as given.

Sizes: a canny source is resized like the face photo (InstantID's `resize_img`) before edge detection; every
condition is then resized to the output size as diffusers' control-image processor does (Lanczos).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError
from .images import resize_control_image, resize_like_instantid
from .manifest import ControlNetInfo

CANNY_THRESHOLDS = (100, 200)  # controlnet_util.get_canny_image's defaults
DEFAULT_STRENGTH = 0.4  # the app's pose, canny and depth sliders


def canny_edges(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8: white edges on black, the same in all three channels (the app's 'L' image made RGB)."""
    edges = cv2.Canny(np.ascontiguousarray(rgb[:, :, ::-1]), *CANNY_THRESHOLDS)
    return np.repeat(edges[:, :, None], 3, axis=2)


@dataclass(frozen=True)
class ControlImage:
    """One extra ControlNet's condition for a run, at the output size."""

    name: str
    graph: str
    image: np.ndarray  # HxWx3 uint8
    strength: float


def control_images(
    controlnets: dict[str, ControlNetInfo],
    controls: tuple[tuple[str, float], ...],
    given: dict[str, np.ndarray | None],
    canvas_rgb: np.ndarray,
    width: int,
    height: int,
) -> list[ControlImage]:
    """The conditions of `controls` ((name, strength) pairs, in order): `given[name]` is the photo to take
    edges from (canny; default `canvas_rgb`, the pose or face photo already resized) or the prepared image."""
    result = []
    for name, strength in controls:
        info, source = controlnets[name], given.get(name)
        if info.condition == "canny":
            image = canny_edges(canvas_rgb if source is None else resize_like_instantid(source))
        elif source is None:
            raise ConfigError(
                f"the {name} ControlNet takes a prepared condition image (its detector cannot ship with the "
                f"runtime); give one: --control {name}=IMAGE[:STRENGTH]"
            )
        else:
            image = source
        result.append(ControlImage(name, info.graph, resize_control_image(image, width, height), strength))
    return result


def condition_of(name: str) -> str:
    """How export files a ControlNet called `name` (manifest.CONDITIONS): names starting with "canny" get the
    edge map computed here, every other one takes a prepared image."""
    return "canny" if name.startswith("canny") else "image"


def parse_control(text: str) -> tuple[str, Path | None, float]:
    """`--control NAME[=IMAGE][:STRENGTH]` -> (name, image path or None, strength; default DEFAULT_STRENGTH)."""
    given, strength = text, DEFAULT_STRENGTH
    head, colon, tail = text.rpartition(":")
    if colon and re.fullmatch(r"[0-9]*\.?[0-9]+", tail):  # else the colon belongs to the image path
        given, strength = head, float(tail)
    name, _, image = given.partition("=")
    if not name:
        raise ConfigError(
            f"--control takes NAME[=IMAGE][:STRENGTH], e.g. canny:0.4 or depth=depth.png:0.5; got {text!r}"
        )
    return name, Path(image) if image else None, strength
