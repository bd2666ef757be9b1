"""`standin --fast-path`: the few-step LoRAs and TAESD-XL under their released names, with the released key
sets, ranks, alphas, dtypes and metadata; at `full`, the byte sizes of the released files exactly.

Released sizes: SDXL-Lightning 393,854,592 (ByteDance/SDXL-Lightning, LFS pointers of the 2/4/8-step LoRAs);
Hyper-SDXL 787,359,648 (ByteDance/Hyper-SD commit 2900d27); LCM-LoRA SDXL 393,854,624 (a public copy of
latent-consistency/lcm-lora-sdxl before its web-UI metadata). See export/distillations.py.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.torch

FILES = {
    "sdxl_lightning_2step_lora.safetensors": ("lightning-2step", "F16", {}),
    "sdxl_lightning_4step_lora.safetensors": ("lightning-4step", "F16", {}),
    "Hyper-SDXL-1step-lora.safetensors": ("hyper-1step", "F32", {"format": "pt"}),
    "Hyper-SDXL-4steps-lora.safetensors": ("hyper-4step", "F32", {"format": "pt"}),
    "lcm-lora-sdxl/pytorch_lora_weights.safetensors": ("lcm-4step", "F16", {"format": "pt"}),
    "dmd2_sdxl_4step_lora_fp16.safetensors": ("dmd2-4step", "F16", {}),
}


def _meta_unet(preset: str):
    import torch
    from diffusers import UNet2DConditionModel

    from instantid_edge.export.architecture import architecture

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(architecture(preset).unet)


@pytest.mark.parametrize("profile", ["lightning-4step", "hyper-1step", "lcm-4step"])
def test_at_full_size_each_file_has_the_released_byte_size(profile):
    from instantid_edge.export.distillations import PROFILES
    from instantid_edge.export.fast_path_standin import lora_file_bytes
    from instantid_edge.export.lora import distillation_layers

    unet = _meta_unet("full")
    assert len(distillation_layers(unet)) == 788  # the SDXL-Lightning model card's count
    assert lora_file_bytes(unet, PROFILES[profile]) == PROFILES[profile].released_bytes


@pytest.mark.parametrize("name", list(FILES))
def test_the_tiny_stand_ins_have_the_released_layouts(fast_path, name):
    from safetensors import safe_open

    from instantid_edge.export.lora import distillation_layers
    from instantid_edge.export.lora_format import read_lora

    profile, dtype, metadata = FILES[name]
    lora = read_lora(fast_path / name)
    layers = distillation_layers(_meta_unet("tiny"))
    assert lora.layout == "kohya" and lora.components() == {"unet"} and lora.dtypes() == {dtype}
    assert sorted(layer.path for layer in lora.layers) == sorted(n.replace(".", "_") for n in layers)
    assert {layer.rank for layer in lora.layers} == {4}  # 64 at full size, scaled with the preset
    with safe_open(str(fast_path / name), framework="pt") as f:
        assert (f.metadata() or {}) == metadata
        alphas = {float(f.get_tensor(layer.keys["alpha"])) for layer in lora.layers}
    assert alphas == {0.5}  # alpha 8 at rank 64: alpha / rank kept
    report = json.loads((fast_path / "FAST-PATH.json").read_text())
    assert {e["file"]: e["profile"] for e in report["files"] if "profile" in e}[name] == profile


def test_the_taesdxl_stand_in_is_the_published_decoder(fast_path):
    from instantid_edge.export.taesd import load_tiny_decoder

    decoder = load_tiny_decoder(fast_path / "taesdxl_decoder.pth")
    params = sum(p.numel() for p in decoder.parameters())
    assert decoder[1].in_channels == 4 and round(params / 1e6, 2) == 1.22  # "1.22 M parameters"
