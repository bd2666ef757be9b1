"""Output files carry watermark and label; `mark` and `verify` behave as documented, bad input included.

C2PA signing is tested in test_c2pa.py (it needs the sign extra); here outputs are unsigned, and `verify` is also
checked with c2pa-python made unimportable, as in an installation without the extra.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from instantid_edge.cli import cli
from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.provenance import (
    DIGITAL_SOURCE_TYPE,
    encode_output,
    read_label,
    read_record,
    save_png,
    write_output,
)
from instantid_edge.runtime.provenance.verify import verify_file
from instantid_edge.runtime.provenance.watermark import detect


@pytest.fixture(scope="module")
def photo(assets) -> np.ndarray:
    """A real portrait at 768x768 (a typical output size), unmarked."""
    image = Image.open(assets / "faces" / "grace_hopper.jpg").convert("RGB")
    return np.asarray(image.crop((0, 44, 517, 561)).resize((768, 768), Image.LANCZOS))


@pytest.fixture
def photo_file(tmp_path, photo):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    return path


def assert_marked_and_labelled(path, generator: str):
    """What every output path must leave in its file, read back from the file alone."""
    report = verify_file(path)
    assert report.watermark.detected, report.summary()
    assert report.watermark.payload is not None and report.watermark.payload.generator_name == generator
    assert report.label.digital_source_type == DIGITAL_SOURCE_TYPE and report.label.ai_generated
    return report


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_write_output_marks_and_labels_every_format(tmp_path, photo, suffix):
    out = tmp_path / f"out{suffix}"
    write_output(out, photo, {"generator": "server", "settings": {"prompt": "p"}}, signer=None)
    report = assert_marked_and_labelled(out, "server")
    assert report.credentials.state == "absent"
    assert (report.label.record is not None) == (suffix == ".png")
    assert not list(tmp_path.glob(".out*"))  # no temporary file left beside it


def test_encode_output_returns_marked_labelled_bytes_for_a_server(photo):
    data = encode_output(photo, {"generator": "server"}, "JPEG", signer=None)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and read_label(image).ai_generated
    found = detect(np.asarray(image.convert("RGB")))
    assert found.detected and found.payload.generator_name == "server"


def test_pixels_already_marked_are_not_marked_twice(tmp_path, photo):
    marked = np.asarray(Image.open(io.BytesIO(encode_output(photo, {"generator": "runtime"}, signer=None))))
    write_output(tmp_path / "again.png", marked, {"generator": "runtime"}, watermarked=True, signer=None)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), marked)


def test_save_png_keeps_working_for_existing_callers(tmp_path, photo):
    save_png(tmp_path / "a.png", photo, {"generator": "reference (PyTorch)", "settings": {"seed": 3}})
    assert read_record(tmp_path / "a.png")["settings"]["seed"] == 3
    assert_marked_and_labelled(tmp_path / "a.png", "reference")


def test_unsupported_output_format_is_refused_before_writing(tmp_path, photo):
    with pytest.raises(ConfigError, match=".png"):
        write_output(tmp_path / "out.gif", photo, {}, signer=None)
    assert not list(tmp_path.iterdir())


# --- the command line ------------------------------------------------------------------------------------


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_mark_command_marks_any_image(tmp_path, photo_file):
    out = tmp_path / "marked.jpg"
    result = _cli("mark", photo_file, out)
    assert result.exit_code == 0, result.output
    assert_marked_and_labelled(out, "mark")
    again = tmp_path / "again.png"
    result = _cli("mark", out, again)
    assert result.exit_code == 0 and "already present" in result.output
    first, second = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (out, again))
    assert np.abs(first - second).mean() < 1.0  # labelled again, but the pattern was not added a second time


def test_verify_exit_status_says_whether_every_image_is_marked(tmp_path, photo_file):
    marked = tmp_path / "marked.png"
    assert _cli("mark", photo_file, marked).exit_code == 0
    result = _cli("verify", marked)
    assert result.exit_code == 0, result.output
    assert "watermark DETECTED" in result.output and "trainedAlgorithmicMedia" in result.output
    assert "generator mark" in result.output and "C2PA: absent" in result.output
    result = _cli("verify", marked, photo_file)
    assert result.exit_code == 2 and "NO watermark" in result.output
    result = _cli("verify", "--json", marked, photo_file)
    reports = json.loads(result.output)
    assert result.exit_code == 2 and [r["watermark"]["detected"] for r in reports] == [True, False]
    assert reports[0]["watermark"]["payload"]["generator"] == "mark" and reports[0]["label"]["present"]
    assert reports[1]["label"]["present"] is False and reports[0]["c2pa"]["state"] == "absent"


def test_verify_without_the_sign_extra_still_reports_watermark_and_label(tmp_path, photo_file, monkeypatch):
    marked = tmp_path / "marked.png"
    assert _cli("mark", photo_file, marked).exit_code == 0
    monkeypatch.setitem(sys.modules, "c2pa", None)  # `import c2pa` now fails as it does without the extra
    report = verify_file(marked)
    assert report.watermark.detected and report.label.ai_generated
    assert report.credentials.state == "absent"
    assert _cli("verify", marked).exit_code == 0


@pytest.mark.parametrize("command", ["mark", "verify"])
def test_bad_input_exits_1_with_one_clear_line(tmp_path, command):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really an image")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for bad, fragment in ((tmp_path / "missing.png", "not found"), (junk, "cannot read"), (text, "cannot read")):
        out = tmp_path / "out.png"
        result = _cli(command, bad, *([out] if command == "mark" else []))
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output
        assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_bad_arguments_exit_1(tmp_path, photo_file):
    assert _cli("verify").exit_code == 1  # no image given
    result = _cli("verify", "--trust", tmp_path / "missing-ca.pem", photo_file)
    assert result.exit_code == 1 and "trust anchor" in result.output
    (tmp_path / "not-a-cert.pem").write_text("hello")
    assert _cli("verify", "--trust", tmp_path / "not-a-cert.pem", photo_file).exit_code == 1
    result = _cli("mark", photo_file, tmp_path / "out.gif")
    assert result.exit_code == 1 and ".png" in result.output


def test_verify_reports_errors_and_results_together(tmp_path, photo_file):
    marked = tmp_path / "marked.png"
    assert _cli("mark", photo_file, marked).exit_code == 0
    result = _cli("verify", "--json", marked, tmp_path / "missing.png")
    assert result.exit_code == 1
    reports = json.loads(result.output[result.output.index("[") :])
    assert reports[0]["watermark"]["detected"] and "not found" in reports[1]["error"]
