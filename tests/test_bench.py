"""A smoke benchmark on the tiny stand-in: every configuration runs and the report is complete (no timing asserts)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.torch


def test_bench_runs_every_configuration_and_writes_the_report(tmp_path, tiny_standin, tiny_package, face_pack):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    args = ["bench", "--checkpoint", tiny_standin, "--package", tiny_package, "--precisions", "fp32", "--height", 64,
            "--width", 64, "--steps", 1, "--repeat", 1, "--threads", 2, "--face-models", face_pack,
            "--out", tmp_path]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    names = [run["config"]["name"] for run in results["runs"]]
    assert names == ["torch fp32", "onnxruntime fp32", "openvino fp32"]
    for run in results["runs"]:
        assert set(run["stages"]) >= {"face", "text", "image_proj", "identitynet", "unet", "denoise_step", "decode",
                                      "end_to_end"}  # fmt: skip
        assert run["memory"]["peak_rss_gib"] > 0 and run["flops"]["unet"] > 0
        if run["config"]["backend"] != "torch":  # the runtime's prediction for the mode it ran (memory_estimate)
            prediction = run["memory_plan"]["prediction"]
            assert prediction["chosen"] == run["memory_mode"] and prediction["predicted_peak_gib"]["normal"] > 0
    gemm = results["machine"]["gemm"]
    assert (
        gemm["fp32"] == max(gemm["numpy"], gemm["onnxruntime"], gemm["openvino"]) > 1 and gemm["onnxruntime_int8"] > 1
    )
    assert results["machine"]["gemm_gflops"] == gemm["fp32"] and results["machine"]["cores"]
    table = (tmp_path / "results.md").read_text()
    assert "| unet |" in table and "GFLOP/s" in table and "GEMM peak" in table and "| predicted peak GiB" in table
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_profile_fast_times_the_package_beside_pytorch_at_upstream_defaults(
    tmp_path, tiny_standin, fast_package, fast_path, face_pack
):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    args = ["bench", "--checkpoint", tiny_standin, "--package", fast_package, "--precisions", "fp32", "--height", 64,
            "--width", 64, "--repeat", 1, "--threads", 2, "--face-models", face_pack, "--backends",
            "torch,onnxruntime", "--profile", "fast", "--lora", fast_path / "sdxl_lightning_4step_lora.safetensors",
            "--tiny-decoder", fast_path / "taesdxl_decoder.pth", "--out", tmp_path]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    runs = {run["config"]["name"]: run for run in json.loads((tmp_path / "results.json").read_text())["runs"]}
    assert list(runs) == ["torch fp32 upstream defaults", "torch fp32 fast", "onnxruntime fp32 fast"]
    upstream, torch_fast, fast = runs.values()
    assert upstream["batch"] == 2 and upstream["config"]["steps"] == 30 and upstream["decoder"] == "full"
    assert upstream["stages"]["end_to_end"]["kind"].startswith("computed: 30 x denoise_step")
    computed = sum(upstream["stages"][s]["median"] for s in ("face", "image_proj", "text", "decode"))
    computed += 30 * upstream["stages"]["denoise_step"]["median"]
    assert upstream["stages"]["end_to_end"]["median"] == pytest.approx(computed)
    for run in (torch_fast, fast):
        assert run["batch"] == 1 and run["config"]["steps"] == 4 and run["config"]["timestep_spacing"] == "trailing"
    assert torch_fast["config"]["loras"] and torch_fast["decoder"] == "tiny"
    assert fast["decoder"] == "vae_decoder_tiny" and fast["stages"]["decode_full"]["median"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "euler trailing, 4 steps, no CFG, TAESD-XL" in table and "euler, 30 steps, CFG 5, full VAE" in table
    assert "end_to_end is computed" in table


def test_bench_steps_override_the_profiles_steps_only(fast_package):
    """`bench --profile fast --steps 2` times a 4-step Lightning package as Lightning's 2-step sampling (the
    same graphs: a 4-step and a 2-step package differ only in their fused weights), as generate's --steps does."""
    from instantid_edge.bench.run import profile_fields

    profile = profile_fields(fast_package, "fast")
    overridden = profile_fields(fast_package, "fast", steps=2)
    assert profile["steps"] == 4 and overridden["steps"] == 2
    assert {k: v for k, v in overridden.items() if k != "steps"} == {k: v for k, v in profile.items() if k != "steps"}


def test_flop_count_matches_the_analytic_count_for_a_matmul_and_a_conv(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from instantid_edge.bench.flops import graph_flops

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Conv", ["img", "k"], ["z"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 8, "h", "w"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y", "z")],
        [helper.make_tensor("w", TensorProto.FLOAT, [64, 32], [0.0] * 2048),
         helper.make_tensor("k", TensorProto.FLOAT, [16, 8, 3, 3], [0.0] * 1152)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    flops = graph_flops(tmp_path / "g.onnx", {"x": (4, 64), "img": (1, 8, 10, 12)})
    assert flops == 2 * 4 * 32 * 64 + 2 * (16 * 10 * 12) * (8 * 3 * 3)


def test_flop_count_on_the_tiny_unet_grows_with_the_image(runtime_package):
    """Every MatMul/Conv of the UNet gets shapes (onnx's own inference stops at its reshapes, which left the
    full UNet at 0.12 instead of 3.66 TFLOP at 768x768). On the tiny UNet, terms that do not grow with the
    image (cross-attention keys and values over 93 tokens, time embeddings) weigh more; batch scales exactly."""
    from instantid_edge.bench.run import _flops

    small, large = (_flops(runtime_package, "unet", size, size, 1) for size in (64, 128))
    assert 2.5 < large / small < 4.6
    assert _flops(runtime_package, "unet", 64, 64, 2) == 2 * small


def test_bench_conv_times_each_unet_level_in_fp32_and_int8_on_both_backends(tmp_path):
    from click.testing import CliRunner

    from instantid_edge.bench.conv import FORMS
    from instantid_edge.cli import cli
    from instantid_edge.export.architecture import architecture

    args = ["bench-conv", "--preset", "tiny", "--height", "128", "--width", "128", "--repeat", "1", "--threads", "2",
            "--out", str(tmp_path / "conv")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "conv" / "conv.json").read_text())
    assert report["isa"] and "int8 / fp32" in (tmp_path / "conv" / "conv.md").read_text()
    channels = architecture("tiny").unet["block_out_channels"]
    levels = [(row["channels"], row["height"]) for row in report["rows"]]
    assert levels == [(c, 16 >> i) for i, c in enumerate(channels)]  # 128 pixels: 16 latents, halved per level
    for row in report["rows"]:
        assert all(row[form] > 0 for form in FORMS)
        # the int8 forms compute the same convolution, within int8 rounding; fp32 OpenVINO within float rounding
        assert row["onnxruntime_int8_error"] < 0.05 and row["openvino_int8_error"] < 0.05
        assert row["openvino_fp32_error"] < 1e-4 and row["onnxruntime_fp32_error"] == 0


@pytest.mark.parametrize("args", [["--height", "100"], ["--repeat", "0"]])
def test_bench_conv_refuses_bad_sizes_and_writes_nothing(tmp_path, args):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    result = CliRunner().invoke(cli, ["bench-conv", "--preset", "tiny", "--out", str(tmp_path / "conv"), *args])
    assert result.exit_code != 0 and "multiples of 32" in result.output
    assert not (tmp_path / "conv").exists()
