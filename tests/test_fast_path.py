"""The fast path end to end on the tiny stand-in: the SDXL-Lightning 4-step stand-in fused at export with
the TAESD-XL stand-in, `generate --profile fast` against `reference` given the same LoRA, sampler and
decoder, on both backends; and how export identifies, records and refuses distillations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.torch

SIZE = ["--height", "128", "--width", "192"]
PROMPT = "a watercolor portrait of an astronaut"
LATENT_ATOL = 1e-3  # as tests/test_parity.py: fp32 on both sides, differently fused kernels


def _cli(*args):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_standin, fast_path, astronaut, face_pack):
    """`reference` with the Lightning profile's settings given as flags: the oracle."""
    out = tmp_path_factory.mktemp("reference")
    result = _cli(
        "reference", tiny_standin, "--face", astronaut, "--prompt", PROMPT, "--out", out / "ref.png", *SIZE,
        "--seed", 5, "--face-models", face_pack, "--lora", fast_path / "sdxl_lightning_4step_lora.safetensors",
        "--sampler", "euler", "--timestep-spacing", "trailing", "--steps", 4, "--guidance", 0,
        "--tiny-decoder", fast_path / "taesdxl_decoder.pth", "--save-latents", out / "ref.npy",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return np.load(out / "ref.npy"), np.asarray(Image.open(out / "ref.png"))


def _generate(package, tmp_path, astronaut, face_pack, *flags):
    result = _cli(
        "generate", "--package", package, "--face", astronaut, "--prompt", PROMPT, "--out", tmp_path / "out.png",
        *SIZE, "--seed", 5, "--face-models", face_pack, "--save-latents", tmp_path / "out.npy", "--json", *flags,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    return summary, np.load(tmp_path / "out.npy"), np.asarray(Image.open(tmp_path / "out.png"))


def _unmarked(package, backend, latents, fast_path):
    """Each side's decode of its latents before the output watermark (its payload names the generator, so the
    PNGs of generate and reference differ by the mark): the runtime's graph and the reference's torch module."""
    import torch

    from instantid_edge.export.taesd import TinyDecoderGraph, load_tiny_decoder
    from instantid_edge.runtime.decode import decode
    from instantid_edge.runtime.package import ModelPackage
    from instantid_edge.runtime.session import SessionOptions

    runtime = decode(ModelPackage(package, SessionOptions(backend=backend)), latents, "vae_decoder_tiny")
    with torch.inference_mode():
        decoded = TinyDecoderGraph(load_tiny_decoder(fast_path / "taesdxl_decoder.pth"))(torch.from_numpy(latents))
    reference = ((decoded / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return runtime, reference


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_generate_profile_fast_equals_reference_with_the_same_lora_sampler_and_decoder(
    tmp_path, fast_package, fast_path, reference_run, astronaut, face_pack, backend
):
    summary, latents, image = _generate(fast_package, tmp_path, astronaut, face_pack, "--profile", "fast",
                                        "--backend", backend)  # fmt: skip
    expected_latents, expected_image = reference_run
    np.testing.assert_allclose(latents, expected_latents, rtol=0, atol=LATENT_ATOL)
    assert np.abs(expected_latents).max() > 0.5  # not a trivially small comparison
    runtime, _ = _unmarked(fast_package, backend, latents, fast_path)
    _, reference = _unmarked(fast_package, backend, expected_latents, fast_path)
    difference = np.abs(runtime.astype(int) - reference.astype(int))
    assert difference.mean() < 1.0 and difference.max() <= 3 and runtime.std() > 1
    for written, unmarked in ((image, runtime), (expected_image, reference)):  # the PNGs differ by the mark only
        assert np.abs(written.astype(int) - unmarked.astype(int)).mean() < 3

    timings = summary["timings"]
    # no CFG, the profile's steps
    assert timings["run"].items() >= {"batch": 1, "steps": 4, "decoder": "vae_decoder_tiny"}.items()
    assert timings["calls"]["unet"] == 4 and timings["calls"]["decode"] == 1
    settings = summary["settings"]
    assert (settings["sampler"], settings["timestep_spacing"], settings["guidance"]) == ("euler", "trailing", 0.0)
    assert summary["profile"] == "fast"


def test_flags_given_explicitly_override_the_profile(tmp_path, fast_package, astronaut, face_pack):
    summary, _, _ = _generate(fast_package, tmp_path, astronaut, face_pack, "--profile", "fast", "--steps", 2,
                              "--decoder", "full")  # fmt: skip
    assert summary["timings"]["run"].items() >= {"batch": 1, "steps": 2, "decoder": "vae_decoder"}.items()
    assert summary["settings"]["timestep_spacing"] == "trailing"  # the rest still from the profile
    quality, _, _ = _generate(fast_package, tmp_path, astronaut, face_pack, "--profile", "quality")
    assert quality["timings"]["run"].items() >= {"batch": 1, "steps": 4, "decoder": "vae_decoder"}.items()


def test_the_manifest_records_the_distillation_profiles_and_tiny_decoder(fast_package, fast_path):
    from instantid_edge.runtime.manifest import read_manifest, sha256_of

    manifest = read_manifest(fast_package)
    lora = manifest.loras[0]
    file = fast_path / "sdxl_lightning_4step_lora.safetensors"
    assert lora["sha256"] == sha256_of(file) and lora["scale"] == 1.0 and lora["profile"] == "lightning-4step"
    assert "inferred from the file name" in lora["identified"]
    fast = manifest.profiles["fast"]
    assert fast.settings() == {"sampler": "euler", "timestep_spacing": "trailing", "steps": 4, "guidance": 0.0,
                               "eta": None, "timesteps": None, "decoder": "tiny"}  # fmt: skip
    assert "SDXL-Lightning (lightning-4step)" in fast.source
    assert manifest.profiles["quality"].decoder == "full"
    tiny = manifest.graph("vae_decoder_tiny")
    assert tiny.baked["sha256"] == sha256_of(fast_path / "taesdxl_decoder.pth")
    assert [s.name for s in tiny.inputs] == ["latents"] and [s.name for s in tiny.outputs] == ["image"]
    summary = _cli("inspect", fast_package).output
    assert "profile fast: euler, trailing, 4 steps, guidance 0, tiny decoder" in summary


# --- export: what it accepts and refuses, before any graph is exported ---------------------------------


def _export(tiny_standin, out, *flags):
    return _cli("export", tiny_standin, "--out", out, "--format", "onnx", *flags)


def test_a_partial_copy_of_a_release_is_refused(tmp_path, tiny_standin, fast_path):
    from safetensors.torch import load_file, save_file

    state = load_file(fast_path / "sdxl_lightning_4step_lora.safetensors")
    dropped = sorted(k for k in state if "up_blocks_0" in k)
    save_file({k: v for k, v in state.items() if k not in dropped}, tmp_path / "sdxl_lightning_4step_lora.safetensors")
    result = _export(tiny_standin, tmp_path / "pkg", "--lora", tmp_path / "sdxl_lightning_4step_lora.safetensors")
    assert result.exit_code == 1 and "does not hold the release's layers" in result.output
    assert "lora_unet_up_blocks_0" in result.output and not (tmp_path / "pkg").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--profile", "lightning-4step"], "give the --lora too"),
        (["--lora", "{fp}/sdxl_lightning_4step_lora.safetensors", "--lora", "{fp}/Hyper-SDXL-1step-lora.safetensors"],
         "several few-step distillations"),
        (["--lora", "{fp}/sdxl_lightning_4step_lora.safetensors", "--profile", "turbo"], "unknown --profile"),
        (["--tiny-decoder", "{assets}/taesd/taef2_decoder.pth"], "32-channel latents"),
        (["--tiny-decoder", "{assets}/taesd/taef2_encoder.pth"], "is a TAESD encoder"),
    ],
)  # fmt: skip
def test_export_refuses_inconsistent_fast_path_inputs(tmp_path, tiny_standin, fast_path, assets, flags, message):
    flags = [f.format(fp=fast_path, assets=assets) for f in flags]
    result = _export(tiny_standin, tmp_path / "pkg", *flags)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "pkg").exists()


def test_identification_by_sha256_and_by_name_and_as_asked(tmp_path):
    from instantid_edge.export.distillations import identify

    lightning_4 = "bf56cf2657efb15e465d81402ed481d1e11c4677e4bcce1bc11fe71ad8506b79"  # ByteDance/SDXL-Lightning
    by_sha = identify(tmp_path / "renamed.safetensors", lightning_4)
    assert by_sha.release.profile == "lightning-4step" and "by sha256" in by_sha.how
    by_name = identify(tmp_path / "lcm-lora-sdxl" / "pytorch_lora_weights.safetensors", "0" * 64)
    assert by_name.release.profile == "lcm-4step" and "file name" in by_name.how
    assert identify(tmp_path / "pytorch_lora_weights.safetensors", "0" * 64) is None  # a generic name says nothing
    asked = identify(tmp_path / "sdxl_lightning_4step_lora.safetensors", "0" * 64, "hyper-1step")
    assert asked.release.run.sampler == "tcd" and asked.release.run.eta == 1.0
