"""Stand-ins: exact full-size counts, the released key layout, loadability and determinism."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.torch

FULL_COUNTS = {
    "unet": 2_567_463_684,
    "identitynet": 1_251_014_160,
    "resampler": 81_978_624,
    "ip_kv": 340_787_200,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "vae_decoder": 49_490_199,
}

# ip-adapter.bin["image_proj"] of the released file, in order (../shared/docs/instantid-architecture.md section 3.3)
IMAGE_PROJ_HEAD = [
    "latents",
    "proj_in.weight",
    "proj_in.bias",
    "proj_out.weight",
    "proj_out.bias",
    "norm_out.weight",
    "norm_out.bias",
]
IMAGE_PROJ_LAYER = [
    "0.norm1.weight",
    "0.norm1.bias",
    "0.norm2.weight",
    "0.norm2.bias",
    "0.to_q.weight",
    "0.to_kv.weight",
    "0.to_out.weight",
    "1.0.weight",
    "1.0.bias",
    "1.1.weight",
    "1.3.weight",
]


def test_full_describe_gives_the_released_parameter_counts():
    from instantid_edge.export.standin import describe

    components = describe("full")["components"]
    assert {name: components[name]["params"] for name in FULL_COUNTS} == FULL_COUNTS
    assert components["ip_kv"]["tensors"] == 140


def test_describe_cli_prints_json():
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    result = CliRunner().invoke(cli, ["standin", "--preset", "full", "--describe"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["components"]["unet"]["params"] == FULL_COUNTS["unet"]


def test_full_ip_adapter_keys_follow_the_released_order_and_shapes():
    from instantid_edge.export.architecture import architecture
    from instantid_edge.export.ip_attention import ip_key_shapes
    from instantid_edge.export.standin import meta_models

    models = meta_models(architecture("full"))
    shapes = ip_key_shapes(models.unet)
    indices = [2 * k + 1 for k in range(70)]
    assert list(shapes) == [f"{i}.to_{kv}_ip.weight" for i in indices for kv in "kv"]
    # down_blocks.1 (640) x4, down_blocks.2 (1280) x20, up_blocks.0 (1280) x30, up_blocks.1 (640) x6, mid (1280) x10
    widths = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    assert [shapes[f"{i}.to_k_ip.weight"] for i in indices] == [(w, 2048) for w in widths]
    expected = IMAGE_PROJ_HEAD + [f"layers.{i}.{k}" for i in range(4) for k in IMAGE_PROJ_LAYER]
    assert list(models.resampler.state_dict()) == expected
    assert tuple(models.resampler.state_dict()["layers.0.0.to_kv.weight"].shape) == (2560, 1280)


def test_full_configs_equal_the_real_sdxl_and_instantid_configs(assets, tmp_path):
    from instantid_edge.export.architecture import SDXL_MODEL_INDEX, SDXL_SCHEDULER, architecture
    from instantid_edge.export.standin import meta_models

    models = meta_models(architecture("full"))
    real = assets / "configs"
    ignored = {"_diffusers_version", "_name_or_path", "transformers_version", "torch_dtype", "architectures"}
    for folder, model in [
        ("sdxl-base/unet", models.unet),
        ("sdxl-base/vae", models.vae),
        ("instantid-controlnet", models.identitynet),
    ]:
        model.save_config(tmp_path / folder)
        ours = json.loads((tmp_path / folder / "config.json").read_text())
        theirs = json.loads((real / folder / "config.json").read_text())
        assert {k: ours.get(k) for k in theirs if k not in ignored} == {
            k: v for k, v in theirs.items() if k not in ignored
        }, folder
    for folder, model in [
        ("sdxl-base/text_encoder", models.text_encoder),
        ("sdxl-base/text_encoder_2", models.text_encoder_2),
    ]:
        ours = model.config.to_dict()
        theirs = json.loads((real / folder / "config.json").read_text())
        keys = [
            "hidden_act",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
            "projection_dim",
            "max_position_embeddings",
            "vocab_size",
            "layer_norm_eps",
            "eos_token_id",
        ]
        assert {k: ours[k] for k in keys} == {k: theirs[k] for k in keys}, folder
    scheduler = json.loads((real / "sdxl-base/scheduler/scheduler_config.json").read_text())
    assert {k: v for k, v in SDXL_SCHEDULER.items()} == {
        k: v for k, v in scheduler.items() if k != "_diffusers_version"
    }
    index = json.loads((real / "sdxl-base/model_index.json").read_text())
    assert {k: v for k, v in index.items() if k != "_diffusers_version"} == SDXL_MODEL_INDEX


def test_tiny_standin_loads_with_diffusers_and_keeps_the_structure(tiny_standin):
    import torch
    from diffusers import ControlNetModel, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_standin / "sdxl")
    identitynet = ControlNetModel.from_pretrained(tiny_standin / "ControlNetModel")
    unet = pipe.unet
    assert unet.config.down_block_types[0] == "DownBlock2D" and len(unet.config.down_block_types) == 3
    assert unet.config.addition_embed_type == "text_time"
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert widths == unet.config.cross_attention_dim
    pooled = pipe.text_encoder_2.config.projection_dim
    assert unet.config.projection_class_embeddings_input_dim == 6 * unet.config.addition_time_embed_dim + pooled
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert len(identitynet.controlnet_down_blocks) == 9
    state = torch.load(tiny_standin / "ip-adapter.bin", weights_only=True)
    assert list(state) == ["image_proj", "ip_adapter"]
    assert state["image_proj"]["latents"].shape[1] == 16
    assert state["image_proj"]["proj_in.weight"].shape[1] == 128
    assert json.loads((tiny_standin / "STANDIN.json").read_text())["kind"] == "random-weight stand-in"


def test_text_encoder_files_use_the_released_key_names(tiny_standin):
    from safetensors import safe_open

    for part, extra in (("text_encoder", set()), ("text_encoder_2", {"text_projection.weight"})):
        with safe_open(tiny_standin / "sdxl" / part / "model.safetensors", "pt") as f:
            keys = set(f.keys())
        assert "text_model.embeddings.token_embedding.weight" in keys
        assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
        assert {k for k in keys if not k.startswith("text_model.")} == extra, part


def test_standin_weights_depend_on_the_seed_only(tmp_path, assets):
    from safetensors.torch import load_file

    from instantid_edge.export.standin import build_standin

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_standin(tmp_path / name, "tiny", seed=seed)
    file = "ControlNetModel/diffusion_pytorch_model.safetensors"
    a, b, c = (load_file(tmp_path / name / file) for name in "abc")
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["conv_in.weight"] == c["conv_in.weight"]).all()
    # IdentityNet's zero convolutions carry signal in stand-ins (a zero-initialised one would not be tested)
    assert a["controlnet_down_blocks.0.weight"].abs().sum() > 0


def test_standin_refuses_a_non_empty_output_folder(tmp_path, assets):
    from instantid_edge.export.standin import build_standin
    from instantid_edge.runtime.errors import ConfigError

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty folder"):
        build_standin(tmp_path / "taken", "tiny")
    assert (tmp_path / "taken" / "file.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no partial folder left behind
