"""LoRA fusion: every released layout, as a stand-in, fused by us equals diffusers' load_lora_weights, and
files that do not fit the SDXL base are refused with the keys that did not match.

The stand-ins' layouts (kohya keys over 788 UNet layers, rank 64, alpha 8, fp16 or fp32) are the released
ones: export/distillations.py cites the sources and test_fast_path_standin.py checks the byte sizes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from instantid_edge.runtime.errors import CheckpointError

pytestmark = pytest.mark.torch

RELEASED = [
    "sdxl_lightning_2step_lora.safetensors",
    "sdxl_lightning_4step_lora.safetensors",
    "Hyper-SDXL-1step-lora.safetensors",
    "Hyper-SDXL-4steps-lora.safetensors",
    "lcm-lora-sdxl/pytorch_lora_weights.safetensors",
    "dmd2_sdxl_4step_lora_fp16.safetensors",
]
FP32_ATOL = 2e-5  # outputs are O(1); fused weights against PEFT's unfused x + B(A(x)) differ by rounding only


def _pipeline(tiny_standin):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_standin / "sdxl")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet_output(unet) -> np.ndarray:
    import torch

    generator = torch.Generator().manual_seed(3)
    config = unet.config
    cross, pooled = (
        config.cross_attention_dim,
        config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim,
    )
    with torch.inference_mode():
        return unet(
            torch.randn(1, 4, 16, 16, generator=generator), torch.tensor(600.0),
            encoder_hidden_states=torch.randn(1, 77, cross, generator=generator),
            added_cond_kwargs={"text_embeds": torch.randn(1, pooled, generator=generator),
                               "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]])},
        ).sample.numpy()  # fmt: skip


@pytest.fixture(scope="module")
def base_unet(tiny_standin):
    return _pipeline(tiny_standin).unet


@pytest.mark.parametrize("name", RELEASED)
def test_a_fused_release_equals_diffusers_with_the_file_loaded(tiny_standin, fast_path, base_unet, name):
    from instantid_edge.export.lora import LoraSpec, fuse_loras

    pipe = _pipeline(tiny_standin)
    pipe.load_lora_weights(str(fast_path / name))
    expected = _unet_output(pipe.unet)

    fused = copy.deepcopy(base_unet)
    assert fuse_loras(fused, "unet", [LoraSpec(fast_path / name)]) == 1
    produced = _unet_output(fused)
    np.testing.assert_allclose(produced, expected, rtol=0, atol=FP32_ATOL)
    assert np.abs(produced - _unet_output(base_unet)).max() > 0.05  # the LoRA really changed the UNet


def _text_loras(tiny_standin, folder: Path, rank: int = 4) -> tuple[Path, Path]:
    """The same LoRA on both text encoders' attention and MLP layers, as kohya (lora_te1_/lora_te2_, alpha
    rank/2) and as PEFT keys (no alpha, so its up matrices carry the alpha/rank factor)."""
    import torch
    from safetensors.torch import save_file

    from instantid_edge.export.lora import adaptable_modules

    pipe = _pipeline(tiny_standin)
    generator, kohya, peft = torch.Generator().manual_seed(5), {}, {}
    for component, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        for name, module in adaptable_modules(getattr(pipe, component), component).items():
            if not name.endswith(("q_proj", "v_proj", "fc1")):
                continue
            down = torch.randn(rank, module.in_features, generator=generator) * 0.2
            up = torch.randn(module.out_features, rank, generator=generator) * 0.2
            key = prefix + name.replace(".", "_")
            kohya |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(rank / 2.0)}  # fmt: skip
            peft |= {f"{component}.{name}.lora_A.weight": down, f"{component}.{name}.lora_B.weight": up * 0.5}
    save_file(kohya, folder / "kohya.safetensors")
    save_file(peft, folder / "peft.safetensors")
    return folder / "kohya.safetensors", folder / "peft.safetensors"


def test_text_encoder_layers_fuse_like_diffusers_in_both_layouts(tmp_path, tiny_standin):
    """diffusers 0.42 with transformers 5 drops kohya text-encoder keys (its to_q_lora names no longer match),
    so both of our fusions are compared with diffusers loading the PEFT file."""
    import torch

    from instantid_edge.export.lora import LoraSpec, fuse_loras

    kohya, peft = _text_loras(tiny_standin, tmp_path)
    ids = torch.tensor([[49406, 320, 1125, 539, 550, 49407] + [49407] * 71])
    reference = _pipeline(tiny_standin)
    reference.load_lora_weights(str(peft), adapter_name="text")
    reference.set_adapters(["text"], adapter_weights=[0.6])
    for path in (kohya, peft):
        ours = _pipeline(tiny_standin)
        for component in ("text_encoder", "text_encoder_2"):
            assert fuse_loras(getattr(ours, component), component, [LoraSpec(path, 0.6)]) == 1
            with torch.inference_mode():
                expected = getattr(reference, component)(ids, output_hidden_states=True).hidden_states[-2]
                produced = getattr(ours, component)(ids, output_hidden_states=True).hidden_states[-2]
                plain = getattr(_pipeline(tiny_standin), component)(ids, output_hidden_states=True).hidden_states[-2]
            np.testing.assert_allclose(produced.numpy(), expected.numpy(), rtol=0, atol=FP32_ATOL)
            assert (produced - plain).abs().max() > 0.01


def _save(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.full(s, 0.01) for k, s in shapes.items()}, path)
    return path


def _fuse(path: Path, base_unet):
    from instantid_edge.export.lora import LoraSpec, fuse_loras

    return fuse_loras(copy.deepcopy(base_unet), "unet", [LoraSpec(path)])


def test_an_sd15_lora_is_refused_as_such(tmp_path, base_unet):
    path = _save(tmp_path / "sd15.safetensors", {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (768, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4)})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"Stable Diffusion 1\.x.*lora_te_text_model"):
        _fuse(path, base_unet)


def test_a_lora_for_other_weight_shapes_is_refused_naming_the_layer(tmp_path, base_unet):
    # the full-size SDXL shapes of a layer the tiny UNet also has (its proj_in is 64 wide, SDXL's 640)
    path = _save(tmp_path / "full-size.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": (64, 640),
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": (640, 64),
        "lora_unet_down_blocks_1_attentions_0_proj_in.alpha": ()})  # fmt: skip
    with pytest.raises(
        CheckpointError, match=r"do not fit.*down_blocks_1_attentions_0_proj_in.*\[64, 640\].*another base"
    ):
        _fuse(path, base_unet)


def test_keys_naming_no_layer_are_refused_with_the_first_ones(tmp_path, base_unet):
    path = _save(tmp_path / "odd.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": (4, 64),
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": (64, 4),
        "lora_unet_mid_block_attentions_7_proj_in.lora_down.weight": (4, 128),
        "lora_unet_mid_block_attentions_7_proj_in.lora_up.weight": (128, 4)})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"1 LoRA layers name no layer.*mid_block_attentions_7_proj_in"):
        _fuse(path, base_unet)


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "not LoRA keys of a known layout"),
        ({"lora_unet_conv_in.lora_down.weight": (4, 4, 3, 3), "lora_unet_conv_in.lora_up.weight": (32, 8, 1, 1)},
         "rank layout"),
        ({"lora_unet_conv_in.lora_down.weight": (4, 4, 3, 3)}, "without both a down and an up"),
        ({"lora_unet_conv_in.hada_w1_a": (4, 4)}, "LyCORIS"),
    ],
)  # fmt: skip
def test_malformed_loras_are_refused(tmp_path, base_unet, shapes, message):
    with pytest.raises(CheckpointError, match=message):
        _fuse(_save(tmp_path / "bad.safetensors", shapes), base_unet)


def test_a_file_that_is_not_safetensors_is_refused(tmp_path, base_unet):
    (tmp_path / "lora.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="cannot read LoRA"):
        _fuse(tmp_path / "lora.safetensors", base_unet)
