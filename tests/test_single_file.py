"""Single-file SDXL (the original SGM layout): written from a stand-in, loaded back exactly, refused when wrong."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def single(tmp_path_factory, assets):
    from instantid_edge.export.standin import build_standin

    out = tmp_path_factory.mktemp("single") / "tiny"
    build_standin(out, "tiny", seed=0, embedding_dim=128, single_file=True)
    return out


def test_every_component_loads_back_exactly(single, tiny_standin):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from instantid_edge.export.single_file import SingleFileSDXL

    sdxl = SingleFileSDXL(single / "sdxl.safetensors")
    folder = tiny_standin / "sdxl"  # the same seed: the same weights, in the diffusers layout
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "text_encoder_2": CLIPTextModelWithProjection}  # fmt: skip
    for part, cls in classes.items():
        loaded, reference = sdxl.component(part, torch.float32), cls.from_pretrained(folder / part)
        ours, theirs = dict(loaded.named_buffers()), dict(reference.named_buffers())
        ours.update(loaded.state_dict())
        theirs.update(reference.state_dict())  # buffers too: non-persistent ones are in no checkpoint
        assert set(ours) == set(theirs), part
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=f"{part} {key}")
    assert [t.pad_token for t in sdxl.tokenizers()] == ["<|endoftext|>", "!"]


def test_the_file_has_the_original_key_layout(single):
    from safetensors import safe_open

    with safe_open(single / "sdxl.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight").get_shape() == [
            192,
            64,
        ]
        assert f.get_slice("conditioner.embedders.1.model.text_projection").get_shape() == [64, 48]  # x @ P
        assert f.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape() == [64, 64, 1, 1]
    unet = "model.diffusion_model."
    for key in (unet + "input_blocks.0.0.weight", unet + "label_emb.0.0.weight", unet + "output_blocks.2.2.conv.weight",
                unet + "middle_block.1.proj_in.weight", "first_stage_model.decoder.up.3.block.0.conv1.weight",
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"):  # fmt: skip
        assert key in keys, key


def test_open_clip_conversion_agrees_with_diffusers_where_widths_match():
    """Where the projection width equals the model width (as in real SDXL), diffusers' converter applies."""
    import torch
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from instantid_edge.export.single_file import BIG_G, _big_g_state, big_g_keys

    config = CLIPTextConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                            projection_dim=64, hidden_act="gelu")  # fmt: skip
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(config)
    state = {k: v for k, v in model.state_dict().items() if k != "text_model.embeddings.position_ids"}
    sgm = {}
    for name, parts in big_g_keys(list(state)).items():
        tensors = [state[p] for p in parts]
        sgm[name] = tensors[0].T if name.endswith("text_projection") else torch.cat(tensors)
    theirs = convert_open_clip_checkpoint(model, sgm, prefix=BIG_G)
    ours = _big_g_state(sgm, 64)
    assert set(ours) == set(theirs) == set(state)
    for key in state:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
        torch.testing.assert_close(ours[key], state[key], rtol=0, atol=0)


def test_the_reference_and_export_accept_a_single_file_checkpoint(single, tiny_models, analyzer, astronaut, tmp_path):
    import numpy as np

    from instantid_edge.export.checkpoint import locate_checkpoint
    from instantid_edge.export.package import ExportRequest, export_package
    from instantid_edge.export.reference import generate
    from instantid_edge.export.reference_models import load_reference_models
    from instantid_edge.runtime.images import load_rgb
    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.settings import GenerationSettings

    paths = locate_checkpoint(single)
    assert paths.base_is_single_file
    settings = GenerationSettings(prompt="a portrait", steps=2, height=128, width=128)
    from_file = generate(load_reference_models(paths), analyzer, load_rgb(astronaut), settings)
    from_folder = generate(tiny_models, analyzer, load_rgb(astronaut), settings)
    # the same weights; kernels may be chosen differently for a loaded and a constructed text encoder
    np.testing.assert_allclose(from_file.latents, from_folder.latents, rtol=0, atol=1e-4)
    export_package(ExportRequest(single, tmp_path / "pkg", formats=("onnx",)), log=lambda line: None)
    manifest = read_manifest(tmp_path / "pkg")
    assert "sdxl.safetensors" in manifest.data["source"]["files"]
    assert sorted(manifest.data["tokenizers"]) == ["tokenizer", "tokenizer_2"]


def test_non_sdxl_and_corrupt_files_are_refused(tmp_path, single):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from instantid_edge.export.single_file import SingleFileSDXL
    from instantid_edge.runtime.errors import CheckpointError

    sd15 = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(4),
            "model.diffusion_model.input_blocks.0.0.weight": torch.ones(4)}  # fmt: skip
    save_file(sd15, tmp_path / "sd15.safetensors")
    with pytest.raises(CheckpointError, match="SD 1.x/2.x checkpoint"):
        SingleFileSDXL(tmp_path / "sd15.safetensors")
    data = (single / "sdxl.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        SingleFileSDXL(tmp_path / "cut.safetensors").component("unet", torch.float32)
    with safe_open(single / "sdxl.safetensors", "pt") as f:
        state = {key: f.get_tensor(key) for key in list(f.keys()) if key != "model.diffusion_model.out.2.weight"}
        metadata = f.metadata()
    save_file(state, tmp_path / "gap.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match=r"gap.safetensors: the UNet .* 1 missing \(conv_out.weight\)$"):
        SingleFileSDXL(tmp_path / "gap.safetensors").component("unet", torch.float32)
    assert json.loads((single / "STANDIN.json").read_text())["sdxl_layout"] == "single file"


def test_full_size_key_mapping_round_trips_through_diffusers_converters():
    """On the full SDXL architecture (meta tensors, no memory): our SGM names convert back to every diffusers key."""
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from instantid_edge.export.architecture import architecture
    from instantid_edge.export.single_file import BIG_G, UNET, VAE, _big_g_state, big_g_keys, unet_key, vae_key
    from instantid_edge.export.standin import meta_models

    arch = architecture("full")
    models = meta_models(arch)
    for model, name_of, convert, config in ((models.unet, unet_key, convert_ldm_unet_checkpoint, arch.unet),
                                            (models.vae, vae_key, convert_ldm_vae_checkpoint, arch.vae)):  # fmt: skip
        state = model.state_dict()
        sgm = {}
        for key, tensor in state.items():
            is_vae_attention = name_of is vae_key and ".attentions." in key and tensor.ndim == 2
            sgm[name_of(key, config)] = tensor[:, :, None, None] if is_vae_attention else tensor
        assert len(sgm) == len(state)  # no two tensors share an SGM name
        back = convert(sgm, config)
        assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state.items()}
        assert all(k.startswith((UNET, VAE)) for k in sgm)
    text_encoder_2 = models.text_encoder_2.state_dict()
    big_g = big_g_keys(list(text_encoder_2))
    assert sorted(key for parts in big_g.values() for key in parts) == sorted(text_encoder_2)  # each used once
    assert len(big_g) == 5 + 32 * 12  # embeddings (2), ln_final (2), projection, and 12 tensors per resblock
    fused = {name: torch.cat([text_encoder_2[key] for key in parts]) for name, parts in big_g.items()}
    fused[BIG_G + "text_projection"] = text_encoder_2["text_projection.weight"].T
    back = _big_g_state(fused, arch.text_encoder_2["hidden_size"])
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in text_encoder_2.items()}
    # CLIP-L keeps its names under a prefix. The real sd_xl_base_1.0 adds two tensors no model uses
    # (CLIP-L position_ids, OpenCLIP logit_scale); the loader drops them.
    sgm_count = len(models.unet.state_dict()) + len(models.vae.state_dict()) + len(models.text_encoder.state_dict())
    assert sgm_count + len(big_g) == 2513
