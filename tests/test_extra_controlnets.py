"""Extra SDXL ControlNets beside IdentityNet (InstantID's app-multicontrolnet.py on the full pipeline): each
with its own condition and strength, its residuals summed with IdentityNet's; the runtime against the PyTorch
reference on tiny stand-ins of a canny and a depth ControlNet in diffusers' layout."""

from __future__ import annotations

import numpy as np
import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.settings import GenerationSettings

pytestmark = pytest.mark.torch

LATENT_ATOL = 1e-4
BASE = dict(prompt="a portrait of an astronaut", seed=3, steps=3, guidance=5.0, height=128, width=128)
CONTROLS = (("canny", 0.5), ("depth", 0.7))


@pytest.fixture(scope="module")
def standin(tmp_path_factory, assets):
    from instantid_edge.export.standin import build_standin

    out = tmp_path_factory.mktemp("standin-controlnets") / "tiny"
    build_standin(out, "tiny", seed=0, embedding_dim=128, controlnets=("canny", "depth"))
    return out


@pytest.fixture(scope="module")
def package(tmp_path_factory, standin):
    from instantid_edge.export.controlnet_export import ControlNetSpec
    from instantid_edge.export.package import ExportRequest, export_package

    out = tmp_path_factory.mktemp("package-controlnets") / "tiny"
    specs = tuple(ControlNetSpec(name, standin / "controlnets" / name) for name in ("canny", "depth"))
    export_package(ExportRequest(standin, out, controlnets=specs), log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def reference_models(standin):
    from instantid_edge.export.checkpoint import locate_checkpoint
    from instantid_edge.export.reference_models import load_reference_models

    folders = {name: standin / "controlnets" / name for name in ("canny", "depth")}
    return load_reference_models(locate_checkpoint(standin), controlnets=folders)


@pytest.fixture(scope="module")
def photos(assets):
    from instantid_edge.runtime.images import load_rgb

    return load_rgb(assets / "faces" / "astronaut.png"), load_rgb(assets / "faces" / "newton.png")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_extra_controlnets_match_the_full_pipeline(package, reference_models, analyzer, face_pack, photos, backend):
    from instantid_edge.export.reference import generate
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    face, depth = photos
    settings = GenerationSettings(**BASE, controls=CONTROLS)
    expected = generate(reference_models, analyzer, face, settings, control_rgb={"depth": depth})
    pipe = InstantIDPipeline.load(package, backend=backend, face_models=face_pack)
    pipe.watermark = False
    produced = pipe(face, settings, control_rgb={"depth": depth})
    np.testing.assert_allclose(produced.latents, expected.latents, rtol=0, atol=LATENT_ATOL)
    assert produced.timings["calls"]["controlnet"] == 2 * 3  # both nets, every step
    alone = generate(reference_models, analyzer, face, GenerationSettings(**BASE))
    assert np.abs(alone.latents - expected.latents).max() > 1e-2  # the extra nets matter


def test_canny_edges_are_opencvs_on_the_resized_photo(photos):
    import cv2

    from instantid_edge.runtime.controlnets import canny_edges

    face = photos[0]
    edges = canny_edges(face)
    expected = cv2.Canny(cv2.cvtColor(face, cv2.COLOR_RGB2BGR), 100, 200)  # controlnet_util.get_canny_image
    assert edges.shape == face.shape and (edges == expected[:, :, None]).all() and 0 < (edges > 0).mean() < 0.5


def test_a_control_without_its_image_or_not_in_the_package_is_a_clear_error(package, face_pack, photos):
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    pipe = InstantIDPipeline.load(package, face_models=face_pack)
    with pytest.raises(ConfigError, match="depth ControlNet takes a prepared condition image"):
        pipe(photos[0], GenerationSettings(**BASE, controls=(("depth", 0.5),)))
    with pytest.raises(ConfigError, match=r"no ControlNet called pose \(it has: canny, depth\)"):
        pipe(photos[0], GenerationSettings(**BASE, controls=(("pose", 0.5),)))


def test_control_options_parse_name_image_and_strength():
    from pathlib import Path

    from instantid_edge.runtime.controlnets import parse_control

    assert parse_control("canny") == ("canny", None, 0.4)  # the app's default strength
    assert parse_control("canny:0.3") == ("canny", None, 0.3)
    assert parse_control("depth=maps/d.png:0.5") == ("depth", Path("maps/d.png"), 0.5)
    assert parse_control("depth=C:/d.png") == ("depth", Path("C:/d.png"), 0.4)
    with pytest.raises(ConfigError, match="--control takes NAME"):
        parse_control("=d.png")


def test_cli_generates_with_extra_controlnets(tmp_path, package, face_pack, assets):
    import json

    from click.testing import CliRunner

    from instantid_edge.cli import cli

    faces = assets / "faces"
    args = ["generate", "--package", package, "--face", faces / "astronaut.png", "--prompt", "a portrait",
            "--out", tmp_path / "o.png", "--steps", "2", "--face-models", face_pack, "--json",
            "--control", "canny:0.5", "--control", f"depth={faces / 'newton.png'}:0.7"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["settings"]["controls"] == [["canny", 0.5], ["depth", 0.7]]
    assert summary["timings"]["calls"]["controlnet"] == 4
