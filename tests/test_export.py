"""Export: each graph agrees with PyTorch on both backends; semantics, LoRA fusion, inspect, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.torch

# fp32 graphs agree with PyTorch to float rounding; on the tiny stand-in the largest outputs are ~10, and
# reordered sums differ by ~1e-6. The bound leaves room for OpenVINO's fused kernels.
FP32_ATOL = 1e-4
OTHER_SIZE = {"batch": 1, "height": 96, "width": 160}  # not the size validated at export, and not square


@pytest.fixture(scope="module")
def manifest(tiny_package):
    from instantid_edge.runtime.manifest import read_manifest

    return read_manifest(tiny_package)


@pytest.fixture(scope="module")
def loader(tiny_standin):
    from instantid_edge.export.checkpoint import locate_checkpoint
    from instantid_edge.export.reference_models import CheckpointLoader

    return CheckpointLoader(locate_checkpoint(tiny_standin))


def _session(manifest, name, backend):
    from instantid_edge.runtime.session import SessionOptions, open_session

    return open_session(manifest.graph(name), manifest.root, SessionOptions(backend=backend))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(
    "name", ["text_encoder", "text_encoder_2", "image_proj", "identitynet", "unet", "vae_decoder", "vae_encoder"]
)
def test_every_graph_matches_pytorch_at_a_new_size(manifest, loader, name, backend):
    import torch

    from instantid_edge.export.graphs import as_torch, example_inputs
    from instantid_edge.export.package import ExportRequest, _dims, _graph_module

    graph = manifest.graph(name)
    feeds = example_inputs(
        list(graph.inputs), manifest.architecture.dim_sizes(OTHER_SIZE["height"], OTHER_SIZE["width"], 1), seed=7
    )
    module, _ = _graph_module(name, loader, _dims(loader, ExportRequest(loader.paths.ip_adapter.parent, manifest.root)))
    with torch.inference_mode():
        expected = module(*as_torch(feeds))
    expected = expected if isinstance(expected, tuple) else (expected,)
    produced = _session(manifest, name, backend).run(feeds)
    for spec, tensor in zip(graph.outputs, expected, strict=True):
        np.testing.assert_allclose(produced[spec.name], tensor.numpy(), rtol=0, atol=FP32_ATOL, err_msg=spec.name)
    assert manifest.graph(name).validation[backend]["max_abs_error"] < FP32_ATOL


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_identitynet_at_scale_zero_returns_zeros(manifest, backend):
    from instantid_edge.export.graphs import example_inputs

    graph = manifest.graph("identitynet")
    feeds = example_inputs(list(graph.inputs), manifest.architecture.dim_sizes(128, 128, 2))
    feeds["conditioning_scale"] = np.array(0.0, np.float32)
    outputs = _session(manifest, "identitynet", backend).run(feeds)
    assert len(outputs) == 10 and all(not value.any() for value in outputs.values())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_unet_at_ip_scale_zero_is_the_unet_without_ip_attention(manifest, tiny_standin, backend):
    import torch
    from diffusers import UNet2DConditionModel

    from instantid_edge.export.graphs import example_inputs

    graph = manifest.graph("unet")
    feeds = example_inputs(list(graph.inputs), manifest.architecture.dim_sizes(128, 128, 2), seed=3)
    feeds["ip_scale"] = np.array(0.0, np.float32)
    plain = UNet2DConditionModel.from_pretrained(tiny_standin / "sdxl" / "unet").eval()
    t = {k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}
    with torch.inference_mode():
        expected = plain(
            t["sample"], t["timestep"], encoder_hidden_states=t["encoder_hidden_states"][:, :77],
            added_cond_kwargs={"text_embeds": t["text_embeds"], "time_ids": t["time_ids"]},
            down_block_additional_residuals=tuple(t[f"down_{i}"] for i in range(9)),
            mid_block_additional_residual=t["mid"],
        ).sample.numpy()  # fmt: skip
    produced = _session(manifest, "unet", backend).run(feeds)["noise_pred"]
    np.testing.assert_allclose(produced, expected, rtol=0, atol=FP32_ATOL)
    feeds["ip_scale"] = np.array(1.0, np.float32)
    assert np.abs(_session(manifest, "unet", backend).run(feeds)["noise_pred"] - expected).max() > 1e-3
    # face-region control: a face mask of zeros confines the face attention to nothing, which is IP scale 0
    feeds["face_mask"] = np.zeros_like(feeds["face_mask"])
    produced = _session(manifest, "unet", backend).run(feeds)["noise_pred"]
    np.testing.assert_allclose(produced, expected, rtol=0, atol=FP32_ATOL)


def test_stored_uncond_tokens_are_image_proj_of_zeros(manifest, loader):
    import torch

    constant = manifest.data["constants"]["uncond_image_tokens"]
    stored = np.load(manifest.root / constant["file"])
    with torch.inference_mode():
        expected = loader.resampler()(torch.zeros(1, 1, 128)).numpy()
    np.testing.assert_array_equal(stored, expected)
    assert np.abs(stored).mean() > 0.1  # not zeros: the uncond tokens carry the Resampler's bias


def test_manifest_records_io_hashes_versions_and_baked_facts(manifest):
    data = manifest.data
    assert data["schema_version"] == 2 and data["source"]["standin"]["preset"] == "tiny"
    assert data["producer"]["torch"].startswith("2.13") and "onnxruntime" in data["producer"]
    assert len(data["source"]["files"]["ip-adapter.bin"]) == 64
    unet = manifest.graph("unet")
    assert [s.name for s in unet.inputs][-2:] == ["ip_scale", "face_mask"] and unet.baked["ip_scale"] == "input"
    assert unet.inputs[-1].shape == (1, 1, "latent_height", "latent_width")
    assert unet.inputs[2].shape == ("batch", "context_tokens", 96)  # any prompt length (weighted prompts)
    assert [s.name for s in manifest.graph("vae_encoder").outputs] == ["latents", "latents_std"]
    assert manifest.graph("identitynet").baked["conditioning_scale"] == "input"
    assert set(unet.files) == {"onnx", "openvino"} and unet.files["onnx"][1]["path"] == "unet/model.onnx.data"


# --- static shapes and LoRA ------------------------------------------------------------------------------


def _diffusers_unet(unet, feeds) -> np.ndarray:
    import torch

    t = {k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}
    return unet(
        t["sample"], t["timestep"], encoder_hidden_states=t["encoder_hidden_states"],
        added_cond_kwargs={"text_embeds": t["text_embeds"], "time_ids": t["time_ids"]},
        down_block_additional_residuals=tuple(t[f"down_{i}"] for i in range(9)), mid_block_additional_residual=t["mid"],
    ).sample.numpy()  # fmt: skip


def _random_lora(unet, path, fmt: str, rank: int = 4, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0", "proj_in"):
            down = torch.randn(rank, module.in_features, generator=generator) * 0.1
            up = torch.randn(module.out_features, rank, generator=generator) * 0.1
            if fmt == "peft":
                state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"] = down, up
            else:  # kohya: lora_unet_<module path with underscores>.{lora_down,lora_up,alpha}
                key = "lora_unet_" + name.replace(".", "_")
                state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
                state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(state, path)


@pytest.mark.parametrize("fmt, scale", [("peft", 1.0), ("kohya", 0.7)])
def test_a_lora_fused_at_export_equals_diffusers_with_the_lora_loaded(tmp_path, tiny_standin, fmt, scale):
    import torch
    from diffusers import StableDiffusionXLPipeline

    from instantid_edge.export.graphs import example_inputs
    from instantid_edge.export.ip_attention import IPScale, install_ip_attention, load_ip_weights
    from instantid_edge.export.lora import LoraSpec
    from instantid_edge.export.package import ExportRequest, export_package
    from instantid_edge.export.reference_models import load_ip_adapter
    from instantid_edge.runtime.manifest import read_manifest

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_standin / "sdxl")
    _random_lora(pipe.unet, tmp_path / "lora.safetensors", fmt)
    package = tmp_path / "pkg"
    spec = LoraSpec.parse(f"{tmp_path / 'lora.safetensors'}:{scale}")
    export_package(ExportRequest(tiny_standin, package, formats=("onnx",), loras=(spec,)), log=lambda line: None)
    manifest = read_manifest(package)
    assert manifest.data["source"]["loras"][0]["scale"] == scale

    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"), adapter_name="test")
    pipe.set_adapters(["test"], adapter_weights=[scale])
    holder = IPScale(0.8)
    load_ip_weights(
        install_ip_attention(pipe.unet, 16, holder), load_ip_adapter(tiny_standin / "ip-adapter.bin")["ip_adapter"]
    )
    feeds = example_inputs(list(manifest.graph("unet").inputs), manifest.architecture.dim_sizes(128, 128, 2), seed=4)
    holder.region_latent = torch.from_numpy(feeds["face_mask"])  # the same face region on both sides
    with torch.inference_mode():
        expected = _diffusers_unet(pipe.unet, feeds)
        pipe.unet.disable_lora()
        without = _diffusers_unet(pipe.unet, feeds)
    produced = _session(manifest, "unet", "onnxruntime").run(feeds)["noise_pred"]
    np.testing.assert_allclose(produced, expected, rtol=0, atol=FP32_ATOL)
    assert np.abs(produced - without).max() > 1e-2  # the LoRA really changed the UNet


def test_static_export_fixes_the_spatial_dims(tmp_path, tiny_standin):
    import onnx

    from instantid_edge.export.package import ExportRequest, export_package
    from instantid_edge.runtime.manifest import read_manifest

    export_package(
        ExportRequest(tiny_standin, tmp_path / "pkg", formats=("onnx",), height=64, width=96), log=lambda line: None
    )
    manifest = read_manifest(tmp_path / "pkg")
    assert manifest.data["shapes"] == {"height": 64, "width": 96}
    assert manifest.graph("unet").inputs[0].shape == ("batch", 4, 8, 12)
    assert manifest.graph("identitynet").inputs[3].shape == ("batch", 3, 64, 96)
    model = onnx.load(str(tmp_path / "pkg" / "unet" / "model.onnx"), load_external_data=False)
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [4, 8, 12] and isinstance(dims[0], str)


# --- inspect and bad input -------------------------------------------------------------------------------


def _cli(*args):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_inspect_accepts_an_intact_package(tiny_package):
    result = _cli("inspect", tiny_package)
    assert result.exit_code == 0, result.output
    assert "RANDOM stand-in (tiny)" in result.output and "intact" in result.output
    assert json.loads(_cli("inspect", tiny_package, "--json").output)["schema_version"] == 2


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_inspect_names_a_missing_or_altered_file(tmp_path, tiny_package, damage):
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    target = copy / "vae_decoder" / "model.onnx.data"
    if damage == "missing":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))
    result = _cli("inspect", copy)
    assert result.exit_code == 1
    assert "vae_decoder/model.onnx.data" in result.output and damage in result.output


def test_inspect_refuses_a_folder_that_is_not_a_package(tmp_path):
    result = _cli("inspect", tmp_path)
    assert result.exit_code == 1 and "not a model package" in result.output


def test_export_refuses_a_non_empty_output_and_a_non_checkpoint(tmp_path, tiny_standin):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    result = _cli("export", tiny_standin, "--out", tmp_path / "taken")
    assert result.exit_code == 1 and "not an empty folder" in result.output
    (tmp_path / "random").mkdir()
    result = _cli("export", tmp_path / "random", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "incomplete" in result.output and "ControlNetModel" in result.output
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random", "taken"]  # nothing half-written
