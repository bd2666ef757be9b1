"""The torch-free runtime end to end on a tiny package: both backends, the options, and every bad input.

These run in CI's environment without torch, against a package the tools environment exported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from instantid_edge.runtime.errors import ConfigError, InputImageError, NoFaceError, NumericalError, PackageError
from instantid_edge.runtime.images import load_rgb
from instantid_edge.runtime.settings import GenerationSettings

SMALL = {"height": 128, "width": 128, "steps": 3}


@pytest.fixture(scope="module")
def pipelines(runtime_package, face_pack):
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    return {
        backend: InstantIDPipeline.load(runtime_package, backend=backend, face_models=face_pack)
        for backend in ("onnxruntime", "openvino")
    }


@pytest.fixture(scope="module")
def face_rgb(astronaut):
    return load_rgb(astronaut)


def _settings(**overrides):
    return GenerationSettings(**{"prompt": "a portrait of an astronaut", **SMALL, **overrides})


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_same_seed_same_image_different_seed_different_image(pipelines, face_rgb, backend):
    pipe = pipelines[backend]
    a, b, c = (pipe(face_rgb, _settings(seed=s)) for s in (1, 1, 2))
    assert a.images[0].shape == (128, 128, 3) and a.latents.shape == (1, 4, 16, 16)
    assert (a.images[0] == b.images[0]).all()
    assert np.abs(a.latents - c.latents).max() > 1e-2


def test_backends_agree(pipelines, face_rgb):
    ort, ov = (pipelines[b](face_rgb, _settings(seed=3)) for b in ("onnxruntime", "openvino"))
    np.testing.assert_allclose(ort.latents, ov.latents, rtol=0, atol=1e-3)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "lcm"])
def test_every_sampler_runs_each_graph_once_per_step_with_and_without_cfg(pipelines, face_rgb, sampler):
    """Their values are pinned by tests/test_runtime_golden.py (and each step by tests/test_sampling.py)."""
    results = {}
    for guidance in (5.0, 1.0):
        results[guidance] = pipelines["onnxruntime"](face_rgb, _settings(sampler=sampler, guidance=guidance, seed=4))
        calls = results[guidance].timings["calls"]
        assert calls["unet"] == 3 and calls["identitynet"] == 3 and calls["decode"] == 1, (guidance, calls)
        assert np.isfinite(results[guidance].latents).all() and results[guidance].images[0].std() > 1
    assert np.abs(results[5.0].latents - results[1.0].latents).max() > 1e-2  # guidance is applied


@pytest.mark.parametrize("memory", ["low", "minimal"])
def test_memory_modes_give_the_same_image_and_keep_no_sessions(runtime_package, face_pack, face_rgb, memory):
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    lean = InstantIDPipeline.load(runtime_package, face_models=face_pack, memory=memory)
    full = InstantIDPipeline.load(runtime_package, face_models=face_pack, memory="auto")
    a, b = lean(face_rgb, _settings(seed=8)), full(face_rgb, _settings(seed=8))
    np.testing.assert_array_equal(a.latents, b.latents)
    assert not lean.package._sessions and len(full.package._sessions) == 6
    assert full.memory.mode == "normal"  # auto: a tiny package fits anywhere


def test_identitynet_window_skips_the_graph_outside_it(pipelines, face_rgb):
    result = pipelines["onnxruntime"](face_rgb, _settings(steps=4, control_start=0.0, control_end=0.5))
    assert result.timings["calls"]["identitynet"] == 2 and result.timings["calls"]["unet"] == 4


def test_num_images_use_consecutive_seeds(pipelines, face_rgb):
    pipe = pipelines["onnxruntime"]
    both = pipe(face_rgb, _settings(seed=10, num_images=2))
    second = pipe(face_rgb, _settings(seed=11))
    assert len(both.images) == 2
    np.testing.assert_array_equal(both.latents[1:], second.latents)


def test_given_noise_equals_the_seed_rule(pipelines, face_rgb):
    from instantid_edge.runtime.noise import initial_noise

    pipe = pipelines["onnxruntime"]
    seeded = pipe(face_rgb, _settings(seed=6, sampler="euler_ancestral"))
    given = pipe(face_rgb, _settings(seed=6, sampler="euler_ancestral"), noise=initial_noise(6, (4, 16, 16)))
    np.testing.assert_array_equal(seeded.latents, given.latents)
    with pytest.raises(ConfigError, match="given latents have shape"):
        pipe(face_rgb, _settings(), noise=np.zeros((1, 4, 8, 8), np.float32))


def test_pose_photo_sets_keypoints_and_default_size(pipelines, face_rgb, assets):
    pose = load_rgb(assets / "faces" / "grace_hopper.jpg")
    result = pipelines["onnxruntime"](face_rgb, _settings(height=None, width=None, steps=1), pose_rgb=pose)
    assert (result.settings.width, result.settings.height) == (1088, 1280)  # Grace Hopper's photo, resized
    assert not np.array_equal(result.conditioning.face.kps, result.conditioning.pose.kps)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK", "exif"])
def test_odd_image_modes_still_find_the_face(tmp_path, pipelines, astronaut, mode):
    rgb = np.asarray(Image.open(astronaut).convert("RGB"))
    path = tmp_path / ("face.jpg" if mode in ("CMYK", "exif") else "face.png")
    if mode == "I;16":
        Image.fromarray((rgb.mean(axis=2) * 257).astype(np.uint16)).save(path)
    elif mode == "exif":
        exif = Image.Exif()
        exif[0x0112] = 8  # display rotated 90 degrees counter-clockwise: stored rotated the other way
        Image.fromarray(np.rot90(rgb, k=-1).copy()).save(path, exif=exif.tobytes(), quality=95)
    else:
        Image.fromarray(rgb).convert(mode).save(path)
    result = pipelines["onnxruntime"](load_rgb(path), _settings(steps=1))
    assert result.conditioning.face.num_faces == 1 and result.conditioning.face.det_score > 0.5


def test_several_faces_use_the_largest(pipelines, assets):
    result = pipelines["onnxruntime"](load_rgb(assets / "faces" / "solvay_conference_1927.jpg"), _settings(steps=1))
    assert result.conditioning.face.num_faces == 29


def test_nan_in_every_stage_is_named(tmp_path, runtime_package, face_pack, face_rgb):
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    for graph in ("text_encoder", "text_encoder_2", "image_proj", "identitynet", "unet", "vae_decoder"):
        broken = tmp_path / graph
        shutil.copytree(runtime_package, broken)
        data = broken / graph / "model.onnx.data"
        data.write_bytes(np.full(data.stat().st_size // 4, np.nan, np.float32).tobytes())
        pipe = InstantIDPipeline.load(broken, face_models=face_pack)
        with pytest.raises(NumericalError, match=graph):
            pipe(face_rgb, _settings(steps=1))


# --- the command line ------------------------------------------------------------------------------------


def _generate(runtime_package, face_pack, face, out, *extra):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    args = ["generate", "--package", runtime_package, "--face", face, "--prompt", "a portrait", "--out", out,
            "--face-models", face_pack, "--height", 128, "--width", 128, "--steps", 2, *extra]  # fmt: skip
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_writes_labelled_pngs_latents_and_timings(tmp_path, runtime_package, face_pack, astronaut):
    from instantid_edge.runtime.provenance import read_record

    out = tmp_path / "portrait.png"
    extra = ["--num-images", 2, "--json", "--save-latents", tmp_path / "final.npy", "--backend", "openvino"]
    result = _generate(runtime_package, face_pack, astronaut, out, *extra, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["outputs"] == [str(tmp_path / "portrait-1.png"), str(tmp_path / "portrait-2.png")]
    assert set(summary["timings"]) >= {"face", "text", "image_proj", "identitynet", "unet", "decode", "open"}
    assert summary["timings"]["run"]["seconds_to_first_step"] > summary["timings"]["open"] > 0
    record = read_record(tmp_path / "portrait-2.png")
    assert record["seed"] == 1 and record["standin"] is True and record["generator"] == "runtime (openvino)"
    assert np.load(tmp_path / "final.npy").shape == (2, 4, 16, 16)
    assert any((tmp_path / "c").iterdir())  # the OpenVINO compiled-model cache was filled


def test_cli_output_carries_watermark_and_label(tmp_path, runtime_package, face_pack, astronaut):
    """(With a signer, C2PA too: tests/test_c2pa.py.)"""
    from instantid_edge.runtime.provenance.verify import verify_file

    out = tmp_path / "portrait.png"  # 512: smaller outputs carry too few tiles of the pattern to be found reliably
    result = _generate(runtime_package, face_pack, astronaut, out, "--height", 512, "--width", 512, "--steps", 1)
    assert result.exit_code == 0, result.output
    report = verify_file(out)
    assert report.watermark.detected and report.watermark.payload.generator_name == "runtime", report.summary()
    assert report.label.ai_generated and report.label.record["generator"] == "runtime (onnxruntime)"
    assert report.credentials.state == "absent"


def test_api_images_carry_the_watermark_unless_opted_out(pipelines, face_rgb):
    from instantid_edge.runtime.provenance.watermark import detect

    pipe = pipelines["onnxruntime"]
    settings = _settings(height=512, width=512, steps=1, seed=5)
    marked = pipe(face_rgb, settings)
    pipe.watermark = False
    try:
        plain = pipe(face_rgb, settings)
    finally:
        del pipe.watermark  # back to the class default
    assert marked.watermarked and not plain.watermarked and "watermark" in marked.timings
    found = detect(marked.images[0])
    assert found.detected and found.payload.generator_name == "runtime"
    assert not detect(plain.images[0]).detected
    mse = np.mean((marked.images[0].astype(np.float64) - plain.images[0]) ** 2)
    assert 10 * np.log10(255**2 / mse) >= 40


def _refused(result, out, *fragments):
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_cli_refuses_bad_photos(tmp_path, runtime_package, face_pack, assets):
    out = tmp_path / "out.png"
    Image.new("RGB", (320, 320), (120, 130, 140)).save(tmp_path / "wall.png")
    _refused(_generate(runtime_package, face_pack, tmp_path / "wall.png", out), out, "no face found")
    (tmp_path / "cut.jpg").write_bytes((assets / "faces" / "grace_hopper.jpg").read_bytes()[:3000])
    _refused(_generate(runtime_package, face_pack, tmp_path / "cut.jpg", out), out, "truncated")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    _refused(_generate(runtime_package, face_pack, tmp_path / "junk.png", out), out, "cannot read")
    Image.new("L", (8000, 7000)).save(tmp_path / "huge.png")
    _refused(_generate(runtime_package, face_pack, tmp_path / "huge.png", out), out, "above the limit")


def test_cli_refuses_broken_packages(tmp_path, runtime_package, face_pack, astronaut):
    out = tmp_path / "out.png"
    missing = tmp_path / "missing"
    shutil.copytree(runtime_package, missing)
    manifest = json.loads((missing / "manifest.json").read_text())
    del manifest["graphs"]["unet"]
    (missing / "manifest.json").write_text(json.dumps(manifest))
    _refused(_generate(missing, face_pack, astronaut, out), out, "lacks the graph(s) unet")

    future = tmp_path / "future"
    shutil.copytree(runtime_package, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    _refused(_generate(future, face_pack, astronaut, out), out, "schema version 99")

    for name, change, message in (
        ("no-facts", lambda m: m["architecture"].pop("latent_channels"), "architecture lacks latent_channels"),
        ("long-text", lambda m: m["architecture"].update(text_length=64), "pads to 77 tokens but the text encoders"),
    ):
        altered = tmp_path / name
        shutil.copytree(runtime_package, altered)
        manifest = json.loads((altered / "manifest.json").read_text())
        change(manifest)
        (altered / "manifest.json").write_text(json.dumps(manifest))
        _refused(_generate(altered, face_pack, astronaut, out), out, message)

    mixed = tmp_path / "mixed"  # a graph file whose shapes disagree with the manifest
    shutil.copytree(runtime_package, mixed)
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(runtime_package / "vae_encoder" / name, mixed / "vae_decoder" / name)
    _refused(_generate(mixed, face_pack, astronaut, out), out, "vae_decoder", "the manifest says")
    _refused(_generate(tmp_path, face_pack, astronaut, out), out, "not a model package")


def test_library_errors_are_specific(pipelines, face_rgb):
    pipe = pipelines["onnxruntime"]
    with pytest.raises(NoFaceError):
        pipe(np.full((256, 256, 3), 128, np.uint8), _settings())
    with pytest.raises(ConfigError, match="multiple of 8"):
        pipe(face_rgb, _settings(height=100, width=128))
    with pytest.raises(InputImageError):
        load_rgb("/nonexistent/face.png")
    with pytest.raises(PackageError, match="not a model package"):
        type(pipe).load(pipe.package.root.parent)


def test_process_age_counts_from_the_process_start():
    """What `seconds_to_first_step` is measured from: a fresh process that slept 0.5 s is at least that old."""
    code = "import time; time.sleep(0.5); from instantid_edge.runtime.timing import process_age; print(process_age())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert 0.5 <= float(done.stdout) < 60, done.stdout
