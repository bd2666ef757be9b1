"""Reading photos: every odd mode and broken file is handled or refused with a clear message."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from instantid_edge.runtime.errors import InputImageError
from instantid_edge.runtime.images import MAX_INPUT_PIXELS, load_rgb, load_rgb_bytes, official_size


def _gradient(width=64, height=48) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    return (
        np.concatenate(
            [
                np.broadcast_to(x, (height, width, 1)),
                np.broadcast_to(y, (height, width, 1)),
                np.full((height, width, 1), 90.0),
            ],
            axis=2,
        )
        .round()
        .astype(np.uint8)
    )


def test_greyscale_becomes_three_equal_channels(tmp_path):
    grey = _gradient()[:, :, 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    rgb = load_rgb(tmp_path / "g.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert (rgb == grey[:, :, None]).all()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = load_rgb(tmp_path / "a.png")
    assert (rgb[:5] == [200, 0, 0]).all()
    assert (rgb[5:] == [255, 255, 255]).all()


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    rgb = load_rgb(tmp_path / "16.png")
    assert rgb[0, :, 0].tolist() == [0, 100, 255]


def test_cmyk_and_palette_images_convert(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert np.abs(load_rgb(tmp_path / "c.jpg").astype(int) - rgb).mean() < 6
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").shape == rgb.shape


def test_exif_rotation_is_applied(tmp_path):
    rgb = _gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = load_rgb(tmp_path / "r.jpg")
    assert out.shape == (64, 48, 3)
    assert np.abs(out.astype(int) - np.rot90(rgb, k=-1)).mean() < 4


def test_missing_corrupt_and_truncated_files_are_refused(tmp_path):
    with pytest.raises(InputImageError, match="not found"):
        load_rgb(tmp_path / "nope.jpg")
    (tmp_path / "text.jpg").write_text("this is not an image")
    with pytest.raises(InputImageError, match="cannot read"):
        load_rgb(tmp_path / "text.jpg")
    buffer = io.BytesIO()
    Image.fromarray(_gradient(256, 256)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:2000])
    with pytest.raises(InputImageError, match="truncated"):
        load_rgb(tmp_path / "cut.jpg")


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path):
    side = int(MAX_INPUT_PIXELS**0.5) + 16
    Image.new("L", (side, side)).save(tmp_path / "huge.png")
    with pytest.raises(InputImageError, match="megapixels, above the limit"):
        load_rgb(tmp_path / "huge.png")


def test_photos_in_memory_get_the_same_checks_as_files(tmp_path):
    """Uploads (the server) go through the same decoding and refusals as files (the CLI)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(_gradient(64, 48)).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    (tmp_path / "r.jpg").write_bytes(buffer.getvalue())
    assert (load_rgb_bytes(buffer.getvalue()) == load_rgb(tmp_path / "r.jpg")).all()
    with pytest.raises(InputImageError, match="cannot read the upload as an image"):
        load_rgb_bytes(b"this is not an image", "the upload")
    whole = io.BytesIO()
    Image.fromarray(_gradient(256, 256)).save(whole, format="JPEG")
    with pytest.raises(InputImageError, match="truncated"):
        load_rgb_bytes(whole.getvalue()[:2000])
    side = int(MAX_INPUT_PIXELS**0.5) + 16
    bomb = io.BytesIO()
    Image.new("L", (side, side)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 100_000  # a small file that would decode to 50 MB
    with pytest.raises(InputImageError, match="megapixels, above the limit"):
        load_rgb_bytes(bomb.getvalue())


@pytest.mark.parametrize(
    "size, expected",
    [
        ((512, 512), (1280, 1280)),
        ((768, 1024), (960, 1280)),
        ((1920, 1080), (1280, 704)),
        ((517, 606), (1088, 1280)),
    ],
)
def test_official_resize_rule(size, expected):
    # ../shared/docs/instantid-architecture.md section 7.2: square -> 1280x1280, 3:4 -> 960x1280, 16:9 -> 1280x704
    assert official_size(*size)[1] == expected
