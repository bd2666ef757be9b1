"""Face analysis with an insightface model pack (detection + recognition only) and `draw_kps`.

InstantID uses the largest face by bounding-box area, its five keypoints, and its RAW (not L2-normalised)
recognition embedding. `draw_kps` renders the IdentityNet control image exactly as upstream does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import FaceModelError, NoFaceError

DEFAULT_PACK = Path("~/.insightface/models/antelopev2").expanduser()
DET_SIZE = (640, 640)

# RGB colour per keypoint (left eye, right eye, nose, left mouth corner, right mouth corner) and the limbs,
# each joining a keypoint to the nose and drawn in the colour of its first end.
KPS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
LIMB_HALF_WIDTH = 4
LIMB_DIMMING = 0.6
KP_RADIUS = 10


@dataclass(frozen=True)
class FaceInfo:
    bbox: np.ndarray  # (4,) x0, y0, x1, y1 in pixels of the analysed image
    kps: np.ndarray  # (5, 2)
    embedding: np.ndarray  # (D,) float32, raw
    det_score: float
    num_faces: int  # how many faces the photo held; the largest was chosen

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


def _bbox_area(face) -> float:
    return float((face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1]))


def largest_face(faces: list):
    """Upstream's rule: sort by bbox area and take the last (the largest; the later one on a tie)."""
    return sorted(faces, key=_bbox_area)[-1]


class FaceAnalyzer:
    """insightface detection + recognition from a pack folder (a folder holding the pack's .onnx files)."""

    def __init__(self, pack_dir: str | Path | None = None, providers=("CPUExecutionProvider",)):
        pack = Path(pack_dir).expanduser() if pack_dir is not None else DEFAULT_PACK
        if not pack.is_dir() or not any(pack.glob("*.onnx")):
            raise FaceModelError(
                f"no insightface face pack at {pack}. Download antelopev2 and unzip it so that {pack} "
                "holds its .onnx files, or pass --face-models DIR pointing at a folder of pack .onnx files"
            )
        from insightface.app import FaceAnalysis

        try:
            app = FaceAnalysis(
                name=str(pack.resolve()),
                allowed_modules=["detection", "recognition"],
                providers=list(providers),
            )
        except AssertionError:
            raise FaceModelError(f"{pack} holds no face detection model (e.g. scrfd_10g_bnkps.onnx)") from None
        if "recognition" not in app.models:
            raise FaceModelError(f"{pack} holds no face recognition model (e.g. glintr100.onnx)")
        app.prepare(ctx_id=-1, det_thresh=0.5, det_size=DET_SIZE)
        self.pack = pack
        self._app = app

    @property
    def embedding_dim(self) -> int:
        return int(self._app.models["recognition"].output_shape[-1])

    def analyze(self, rgb: np.ndarray, source: str = "the photo") -> FaceInfo:
        faces = self._app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
        if not faces:
            raise NoFaceError(
                f"no face found in {source}; use a photo in which one face is clearly visible "
                "(frontal, well lit, not too small)"
            )
        face = largest_face(faces)
        return FaceInfo(
            bbox=np.asarray(face.bbox, dtype=np.float32),
            kps=np.asarray(face.kps, dtype=np.float32),
            embedding=np.asarray(face.embedding, dtype=np.float32),
            det_score=float(face.det_score),
            num_faces=len(faces),
        )


def draw_kps(width: int, height: int, kps: np.ndarray) -> np.ndarray:
    """The IdentityNet control image: HxWx3 uint8 RGB on black, as upstream's `draw_kps` draws it.

    Arithmetic stays in the keypoints' own dtype (float32 from insightface), as upstream's does, so that
    the integer truncations land on the same pixels.
    """
    kps = np.asarray(kps)
    canvas = np.zeros((height, width, 3))
    for first, second in LIMBS:
        xs, ys = kps[[first, second], 0], kps[[first, second], 1]
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly(
            (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1
        )
        canvas = cv2.fillConvexPoly(canvas, polygon, KPS_COLORS[first])
    out = (canvas * LIMB_DIMMING).astype(np.uint8)
    for (x, y), color in zip(kps, KPS_COLORS, strict=True):
        out = cv2.circle(out, (int(x), int(y)), KP_RADIUS, color, -1)
    return out


@dataclass(frozen=True)
class FaceConditioning:
    """What the pipeline needs from the photos: the identity embedding and the control image."""

    face: FaceInfo  # from the face photo: its embedding is the identity
    pose: FaceInfo  # the face whose keypoints are drawn (the same face unless a pose photo is given)
    control: np.ndarray  # HxWx3 uint8, at the output size
    width: int
    height: int
    canvas_size: tuple[int, int] = (0, 0)  # (width, height) of the resized photo the keypoints were found on


def face_conditioning(
    analyzer: FaceAnalyzer,
    face_rgb: np.ndarray,
    width: int | None = None,
    height: int | None = None,
    pose_rgb: np.ndarray | None = None,
    max_side: int = 1280,
) -> FaceConditioning:
    """Upstream's preparation: resize each photo (long side 1280), analyse it, draw the keypoints.

    The output size is the resized photo's (the pose photo's, if given) unless width/height are given; then
    the control image is resized to it as diffusers does.
    """
    from .images import resize_control_image, resize_like_instantid

    face_image = resize_like_instantid(face_rgb, max_side)
    face = analyzer.analyze(face_image, "the face photo")
    pose, canvas = face, face_image
    if pose_rgb is not None:
        canvas = resize_like_instantid(pose_rgb, max_side)
        pose = analyzer.analyze(canvas, "the pose photo")
    control = draw_kps(canvas.shape[1], canvas.shape[0], pose.kps)
    out_width, out_height = (width, height) if width is not None else (canvas.shape[1], canvas.shape[0])
    control = resize_control_image(control, out_width, out_height)
    canvas_size = (canvas.shape[1], canvas.shape[0])
    return FaceConditioning(face, pose, control, out_width, out_height, canvas_size)
