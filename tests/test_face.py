"""Face analysis (largest face, raw embedding) and the IdentityNet control image."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from instantid_edge.runtime.errors import FaceModelError, NoFaceError
from instantid_edge.runtime.face import FaceAnalyzer, draw_kps, largest_face
from instantid_edge.runtime.images import load_rgb

KPS = np.array([[40.7, 50.2], [90.3, 48.9], [66.5, 80.1], [45.2, 110.8], [88.9, 111.6]], dtype=np.float32)
# sha256 of upstream InstantID's draw_kps(Image.new("RGB", (160, 140)), KPS), computed once by running the
# function from instantX-research/InstantID @ 2145b67 (pipeline_stable_diffusion_xl_instantid.py).
UPSTREAM_DRAW_KPS_SHA256 = "895d5ab3d0348fcccbe64c1e98382af3e2795cc06b8df928fc9ef6d94723fdef"


def test_draw_kps_is_pixel_exact():
    image = draw_kps(160, 140, KPS)
    assert image.shape == (140, 160, 3) and image.dtype == np.uint8
    assert hashlib.sha256(image.tobytes()).hexdigest() == UPSTREAM_DRAW_KPS_SHA256
    # keypoints at full colour (RGB), limbs at 0.6 x the colour of their first end, black elsewhere
    assert image[50, 40].tolist() == [255, 0, 0] and image[80, 66].tolist() == [0, 0, 255]
    assert image[50, 50].tolist() == [255, 0, 0] and image[50, 52].tolist() == [0, 0, 0]  # radius 10
    assert image[65, 53].tolist() == [153, 0, 0] and image[64, 78].tolist() == [0, 153, 0]
    assert image[95, 55].tolist() == [153, 153, 0] and image[96, 77].tolist() == [153, 0, 153]
    assert image[5, 5].tolist() == [0, 0, 0]


def test_largest_face_is_by_area_not_by_the_ports_precedence_bug():
    def face(x0, y0, x1, y1):
        return SimpleNamespace(bbox=np.array([x0, y0, x1, y1], np.float32))

    # Several ports sort by (b[2]-b[0])*b[3]-b[1], which is not the area; these boxes tell the two apart.
    wide = face(0, 0, 100, 20)  # area 2000, buggy key 2000
    tall = face(500, 0, 530, 90)  # area 2700, buggy key 2700
    offset = face(10, 300, 60, 350)  # area 2500, buggy key 17200
    assert largest_face([wide, tall, offset]) is tall


def test_the_solvay_photo_gives_29_faces_and_the_largest_is_used(analyzer, assets):
    rgb = load_rgb(assets / "faces" / "solvay_conference_1927.jpg")
    faces = analyzer._app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
    assert len(faces) == 29
    chosen = analyzer.analyze(rgb)
    areas = [(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in faces]
    assert chosen.num_faces == 29
    assert chosen.area == pytest.approx(max(areas))
    assert chosen.area > sorted(areas)[-2]  # a strict maximum: the choice is unambiguous


def test_astronaut_embedding_is_raw_and_keypoints_lie_in_the_box(analyzer, astronaut):
    face = analyzer.analyze(load_rgb(astronaut))
    assert face.num_faces == 1 and face.embedding.shape == (128,)
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) > 0.5  # not L2-normalised
    x0, y0, x1, y1 = face.bbox
    assert ((face.kps[:, 0] > x0) & (face.kps[:, 0] < x1) & (face.kps[:, 1] > y0) & (face.kps[:, 1] < y1)).all()
    assert face.kps[0, 0] < face.kps[1, 0]  # left eye left of the right eye, in image coordinates


def test_a_photo_without_a_face_raises(analyzer):
    rng = np.random.default_rng(0)
    flat = np.full((300, 300, 3), 128, np.uint8) + rng.integers(0, 8, (300, 300, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face found"):
        analyzer.analyze(flat)


def test_missing_or_incomplete_face_pack_is_explained(tmp_path, face_pack):
    with pytest.raises(FaceModelError, match="no insightface face pack"):
        FaceAnalyzer(tmp_path / "absent")
    only_recognition = tmp_path / "pack"
    only_recognition.mkdir()
    (only_recognition / "rec.onnx").write_bytes((face_pack / "w_mobilefacenet_128.onnx").read_bytes())
    with pytest.raises(FaceModelError, match="no face detection model"):
        FaceAnalyzer(only_recognition)
