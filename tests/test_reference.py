"""The PyTorch reference pipeline: each piece against diffusers or an independent formula, then end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.torch

SMALL = {"height": 128, "width": 128, "steps": 3}


@pytest.fixture(scope="module")
def face_rgb(astronaut):
    from instantid_edge.runtime.images import load_rgb

    return load_rgb(astronaut)


def _generate(models, analyzer, face_rgb, noise=None, **overrides):
    from instantid_edge.export.reference import generate
    from instantid_edge.runtime.settings import GenerationSettings

    settings = GenerationSettings(**{"prompt": "a portrait of an astronaut", **SMALL, **overrides})
    return generate(models, analyzer, face_rgb, settings, noise)


def test_same_seed_same_image_different_seed_different_image(tiny_models, analyzer, face_rgb):
    a = _generate(tiny_models, analyzer, face_rgb, seed=1)
    b = _generate(tiny_models, analyzer, face_rgb, seed=1)
    c = _generate(tiny_models, analyzer, face_rgb, seed=2)
    assert a.image.shape == (128, 128, 3)
    assert (a.image == b.image).all() and (a.latents == b.latents).all()
    assert np.abs(a.image.astype(int) - c.image).mean() > 1


def test_given_noise_replaces_the_seed_rule(tiny_models, analyzer, face_rgb):
    from instantid_edge.runtime.noise import initial_noise

    seeded = _generate(tiny_models, analyzer, face_rgb, seed=5)
    given = _generate(tiny_models, analyzer, face_rgb, seed=0, noise=initial_noise(5, (4, 16, 16)))
    assert (seeded.latents == given.latents).all()


def test_every_control_changes_the_result(tiny_models, analyzer, face_rgb):
    base = _generate(tiny_models, analyzer, face_rgb).latents
    for overrides in (
        {"guidance": 1.0},
        {"ip_scale": 0.0},
        {"identitynet_scale": 0.0},
        {"negative_prompt": "blurry"},
        {"control_start": 0.5},
    ):
        assert np.abs(_generate(tiny_models, analyzer, face_rgb, **overrides).latents - base).max() > 1e-3, overrides


def test_prompt_encoding_equals_diffusers_sdxl(tiny_standin, tiny_models):
    import torch
    from diffusers import StableDiffusionXLPipeline

    from instantid_edge.export.reference import encode_text

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_standin / "sdxl")
    prompt = "a photo of a woman, Hello!! world, " * 6  # over 77 tokens, with the '!!' that tokenizer_2 splits
    with torch.inference_mode():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompt, do_classifier_free_guidance=True)
        ours, ours_pooled = encode_text(tiny_models.text, prompt)
    torch.testing.assert_close(ours, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_pooled, pooled, rtol=0, atol=1e-6)
    assert not negative.any() and not negative_pooled.any()  # force_zeros_for_empty_prompt


def test_ip_attention_at_scale_zero_is_plain_text_attention(tiny_standin, tiny_models):
    import torch
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(tiny_standin / "sdxl" / "unet").eval()
    torch.manual_seed(0)
    x, text, tokens = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 96), torch.randn(2, 16, 96)
    added = {"text_embeds": torch.randn(2, 48), "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]] * 2)}
    with torch.inference_mode():
        tiny_models.ip_scale.value = 0.0
        ours = tiny_models.unet(
            x, 500, encoder_hidden_states=torch.cat([text, tokens], 1), added_cond_kwargs=added
        ).sample
        reference = plain(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
        tiny_models.ip_scale.value = 1.0
        with_ip = tiny_models.unet(
            x, 500, encoder_hidden_states=torch.cat([text, tokens], 1), added_cond_kwargs=added
        ).sample
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (with_ip - reference).abs().max() > 1e-3


def test_ip_attention_layer_matches_the_formula(tiny_models):
    import torch

    from instantid_edge.export.ip_attention import ip_layer_names

    modules = dict(tiny_models.unet.named_modules())
    attn = modules[next(iter(ip_layer_names(tiny_models.unet).values()))]
    torch.manual_seed(1)
    hidden, context = torch.randn(2, 64, attn.to_q.in_features), torch.randn(2, 77 + 16, 96)
    tiny_models.ip_scale.value = 0.7
    with torch.inference_mode():
        ours = attn(hidden, encoder_hidden_states=context)

        def attend(q, k, v):  # per head, softmax(q k^T / sqrt(d)) v
            heads = attn.heads
            q, k, v = (t.reshape(2, t.shape[1], heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
            weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            return (weights @ v).permute(0, 2, 1, 3).reshape(2, hidden.shape[1], -1)

        q = attn.to_q(hidden)
        text_part = attend(q, attn.to_k(context[:, :77]), attn.to_v(context[:, :77]))
        ip = attn.processor
        face_part = attend(q, ip.to_k_ip(context[:, 77:]), ip.to_v_ip(context[:, 77:]))
        expected = attn.to_out[0](text_part + 0.7 * face_part)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_resampler_matches_the_formula_and_uncond_tokens_are_not_zero(tiny_models):
    import torch
    import torch.nn.functional as F

    r = tiny_models.resampler
    torch.manual_seed(2)
    emb = torch.randn(1, 1, 128) * 20
    with torch.inference_mode():
        latents, x = r.latents.clone(), F.linear(emb, r.proj_in.weight, r.proj_in.bias)
        for attention, ff in r.layers:
            xn, ln = attention.norm1(x), attention.norm2(latents)
            q = attention.to_q(ln)
            k, v = attention.to_kv(torch.cat([xn, ln], 1)).chunk(2, -1)
            heads = attention.heads
            q, k, v = (t.reshape(1, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
            out = torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v  # dim_head 64 -> 1/sqrt(64)
            latents = attention.to_out(out.transpose(1, 2).reshape(1, 16, -1)) + latents
            latents = ff(latents) + latents
        expected = F.layer_norm(r.proj_out(latents), (r.proj_out.out_features,), r.norm_out.weight, r.norm_out.bias)
        torch.testing.assert_close(r(emb), expected, rtol=1e-5, atol=1e-5)
        assert r(torch.zeros(1, 1, 128)).abs().mean() > 0.1


def test_face_pack_with_the_wrong_embedding_width_is_refused(tmp_path, analyzer, face_rgb):
    from instantid_edge.export.checkpoint import locate_checkpoint
    from instantid_edge.export.reference_models import load_reference_models
    from instantid_edge.export.standin import build_standin
    from instantid_edge.runtime.errors import FaceModelError

    build_standin(tmp_path / "s512", "tiny", embedding_dim=512)
    models = load_reference_models(locate_checkpoint(tmp_path / "s512"))
    with pytest.raises(FaceModelError, match="128-d embeddings but this checkpoint's ip-adapter expects 512-d"):
        _generate(models, analyzer, face_rgb)


# --- the command line ------------------------------------------------------------------------------------


def _run(args):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    return CliRunner().invoke(cli, ["reference", *map(str, args)])


def _common(tiny_standin, face, face_pack, out):
    return [
        tiny_standin,
        "--face",
        face,
        "--prompt",
        "a portrait",
        "--out",
        out,
        "--face-models",
        face_pack,
        "--height",
        128,
        "--width",
        128,
        "--steps",
        2,
    ]


def test_cli_writes_a_labelled_png_and_the_final_latents(tmp_path, tiny_standin, astronaut, face_pack):
    from instantid_edge.runtime.provenance import DIGITAL_SOURCE_TYPE, read_record

    out, latents = tmp_path / "out.png", tmp_path / "final.npy"
    result = _run(_common(tiny_standin, astronaut, face_pack, out) + ["--seed", 7, "--save-latents", latents])
    assert result.exit_code == 0, result.output
    record = read_record(out)
    assert record["settings"]["seed"] == 7 and record["standin"] is True
    assert "AI" in record["disclosure"]
    from PIL import Image

    assert DIGITAL_SOURCE_TYPE in Image.open(out).text["XML:com.adobe.xmp"]
    assert np.load(latents).shape == (1, 4, 16, 16)
    again = tmp_path / "again.png"
    assert _run(_common(tiny_standin, astronaut, face_pack, again) + ["--latents", tmp_path / "noise.npy"]).exit_code
    from instantid_edge.runtime.noise import initial_noise

    np.save(tmp_path / "noise.npy", initial_noise(7, (4, 16, 16)))
    assert (
        _run(_common(tiny_standin, astronaut, face_pack, again) + ["--latents", tmp_path / "noise.npy"]).exit_code == 0
    )
    assert (np.asarray(Image.open(again)) == np.asarray(Image.open(out))).all()


def test_cli_output_carries_watermark_and_label(tmp_path, tiny_standin, astronaut, face_pack):
    from instantid_edge.runtime.provenance.verify import verify_file

    out = tmp_path / "out.png"
    size = ["--height", 512, "--width", 512, "--steps", 1]  # big enough for the watermark to be found reliably
    assert _run(_common(tiny_standin, astronaut, face_pack, out) + size).exit_code == 0
    report = verify_file(out)
    assert report.watermark.detected and report.watermark.payload.generator_name == "reference", report.summary()
    assert report.label.ai_generated


def test_demo_output_carries_watermark_and_label(tmp_path, tiny_standin, tiny_package, face_pack):
    from click.testing import CliRunner

    from instantid_edge.cli import cli
    from instantid_edge.runtime.provenance.verify import verify_file

    work = tmp_path / "work"  # the demo's cache, filled with the session's stand-in and package
    work.mkdir()
    (work / "standin-tiny-128").symlink_to(tiny_standin)
    (work / "package-tiny-128").symlink_to(tiny_package)
    out = tmp_path / "demo.png"
    args = ["demo", "--out", out, "--work", work, "--face-models", face_pack, "--steps", 1, "--size", 512]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = verify_file(out)
    # the pipeline marked the pixels, so the payload names the runtime; the label names the demo
    assert report.watermark.detected and report.watermark.payload.generator_name == "runtime", report.summary()
    assert report.label.record["generator"].startswith("demo")
    assert report.label.ai_generated


def _assert_refused(result, out, *fragments):
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no partial file either


def test_cli_refuses_a_photo_without_a_face(tmp_path, tiny_standin, face_pack):
    from PIL import Image

    Image.new("RGB", (320, 320), (120, 130, 140)).save(tmp_path / "wall.png")
    out = tmp_path / "out.png"
    _assert_refused(_run(_common(tiny_standin, tmp_path / "wall.png", face_pack, out)), out, "no face found")


def test_cli_refuses_an_unreadable_or_truncated_photo(tmp_path, tiny_standin, face_pack, assets):
    out = tmp_path / "out.png"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((assets / "faces" / "grace_hopper.jpg").read_bytes()[:3000])
    _assert_refused(_run(_common(tiny_standin, cut, face_pack, out)), out, "truncated", "cut.jpg")
    _assert_refused(_run(_common(tiny_standin, tmp_path / "none.jpg", face_pack, out)), out, "not found")


@pytest.mark.parametrize(
    "remove, message",
    [
        ("ip-adapter.bin", "ip-adapter.bin is missing"),
        ("ControlNetModel/diffusion_pytorch_model.safetensors", "ControlNetModel/ has no"),
        ("sdxl/unet", "unet/ is missing"),
        ("sdxl/tokenizer_2/merges.txt", "tokenizer_2/ has no merges.txt"),
    ],
)
def test_cli_names_the_missing_part_of_a_checkpoint(tmp_path, tiny_standin, astronaut, face_pack, remove, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_standin, broken)
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    out = tmp_path / "out.png"
    _assert_refused(_run(_common(broken, astronaut, face_pack, out)), out, message)


def test_cli_names_a_corrupt_weight_file(tmp_path, tiny_standin, astronaut, face_pack):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_standin, broken)
    (broken / "ip-adapter.bin").write_bytes(b"not a pickle")
    out = tmp_path / "out.png"
    _assert_refused(_run(_common(broken, astronaut, face_pack, out)), out, "ip-adapter.bin")
