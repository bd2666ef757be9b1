"""int8 packages: smaller, still running on both backends, within stated fidelity bounds of fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("nncf", reason="quantizing needs NNCF: pip install '.[quantize]'")

from instantid_edge.quantize.fidelity import psnr  # noqa: E402
from instantid_edge.runtime.settings import GenerationSettings  # noqa: E402

# Bounds on the tiny random-weight stand-in (int8 error on real weights is smaller: random weights use the
# whole int8 range evenly). Image PSNR against the fp32 package, same seed and settings.
BOUNDS = {"weights": {"cosine": 0.9995, "image_psnr_db": 45.0}, "hybrid": {"cosine": 0.98, "image_psnr_db": 25.0}}
QUANTIZED = ("text_encoder", "text_encoder_2", "identitynet", "unet")


def _bytes(package, graph, fmt):
    from instantid_edge.runtime.manifest import read_manifest

    return sum(
        f["bytes"] for f in read_manifest(package).graph(graph).files[fmt] if not f["path"].endswith((".onnx", ".xml"))
    )


def openvino_convolution_weights(package, graph) -> dict[str, int]:
    """{element type each convolution's weights are stored in: bytes}; for weights a decompression subgraph
    (Convert, Subtract, Multiply) makes, the type of the constant it starts from."""
    import openvino as ov

    from instantid_edge.runtime.manifest import read_manifest

    model = ov.Core().read_model(str(read_manifest(package).graph(graph).path(package, "openvino")))
    found: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            weight = op.input_value(1).get_node()
            while weight.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape"):
                weight = weight.input_value(0).get_node()
            kind = weight.get_output_element_type(0).get_type_name()
            found[kind] = found.get(kind, 0) + weight.get_byte_size()
    return found


def test_weights_method_shrinks_weight_bytes_about_4x(runtime_package, weights_package):
    """Every quantized weight 4x smaller; OpenVINO's convolutions stay float (policy.WEIGHT_ONLY_CONVOLUTIONS)."""
    for graph in QUANTIZED:
        for fmt in ("onnx", "openvino"):
            float_convolutions = openvino_convolution_weights(weights_package, graph).get("f32", 0) if (
                fmt == "openvino") else 0  # fmt: skip
            ratio = (_bytes(runtime_package, graph, fmt) - float_convolutions) / (
                _bytes(weights_package, graph, fmt) - float_convolutions)  # fmt: skip
            assert 3.3 < ratio < 4.1, (graph, fmt, ratio)
    assert _bytes(weights_package, "vae_decoder", "onnx") == _bytes(runtime_package, "vae_decoder", "onnx")
    calibration = json.loads((weights_package / "manifest.json").read_text())["quantization"]["calibration"]
    assert calibration["images"] == 0 and calibration["samples"] == {}  # weights alone: only the held-out run
    assert (calibration["profile"], calibration["steps"], calibration["guidance"]) == ("quality", 4, 5.0)


@pytest.mark.parametrize("method", ["weights", "hybrid"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_package_runs_within_fidelity_bounds(request, runtime_package, face_pack, astronaut, method, backend):
    from instantid_edge.runtime.images import load_rgb
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    int8_package = request.getfixturevalue(f"{method}_package")
    settings = GenerationSettings(prompt="a pencil sketch of a person", seed=3, steps=4, height=128, width=128)
    face = load_rgb(astronaut)
    fp32 = InstantIDPipeline.load(runtime_package, backend=backend, face_models=face_pack)(face, settings)
    int8 = InstantIDPipeline.load(int8_package, backend=backend, face_models=face_pack)(face, settings)
    value = psnr(fp32.images[0], int8.images[0], 255.0)
    assert BOUNDS[method]["image_psnr_db"] < value < 99, value  # close, but really quantized
    recorded = json.loads((int8_package / "manifest.json").read_text())["quantization"]["fidelity"]
    for graph in QUANTIZED:
        assert recorded["graphs"][graph][backend]["cosine"] > BOUNDS[method]["cosine"], graph
    assert recorded["end_to_end"][backend]["image_psnr_db"] > BOUNDS[method]["image_psnr_db"]


@pytest.mark.parametrize("method", ["weights", "int4"])
def test_weight_only_methods_leave_openvino_convolutions_float(request, runtime_package, method):
    """OpenVINO would decompress int8 convolution weights to f32 at compile time and keep both copies; ONNX
    Runtime dequantizes them at every call, so its graphs keep them int8. The manifest says which."""
    import onnx

    from instantid_edge.runtime.manifest import read_manifest

    package = request.getfixturevalue(f"{method}_package")
    manifest = read_manifest(package)
    for graph in ("identitynet", "unet"):
        assert manifest.graph(graph).quantization["convolution_weights"] == {"onnx": "int8", "openvino": "float"}
        assert openvino_convolution_weights(package, graph) == openvino_convolution_weights(runtime_package, graph)
        assert set(openvino_convolution_weights(package, graph)) == {"f32"}
        nodes = onnx.load(str(manifest.graph(graph).path(package, "onnx")), load_external_data=False).graph.node
        made_by = {out: node.op_type for node in nodes for out in node.output}
        conv_weights = {made_by.get(node.input[1]) for node in nodes if node.op_type == "Conv"}
        assert "DequantizeLinear" in conv_weights, conv_weights  # keep_float convolutions aside, int8


def test_manifest_records_method_policy_calibration_and_fidelity(hybrid_package):
    from instantid_edge.runtime.manifest import read_manifest, verify_files

    manifest = read_manifest(hybrid_package)
    record = manifest.data["quantization"]
    assert record["method"] == "hybrid"
    expected = {"text_encoder": "weights", "text_encoder_2": "weights", "image_proj": "fp32", "identitynet": "hybrid",
                "unet": "hybrid", "vae_decoder": "fp32", "vae_encoder": "fp32"}  # fmt: skip
    assert record["policy"] == expected
    assert record["calibration"]["samples"] == {"identitynet": 4, "unet": 4}
    assert record["calibration"]["size"] == [128, 128]
    assert manifest.graph("unet").precision == "int8" and manifest.graph("vae_decoder").precision == "fp32"
    assert manifest.graph("identitynet").quantization["keep_float"]  # its first convolutions stay float
    calibrated = {"onnx": "calibrated", "openvino": "calibrated"}
    assert manifest.graph("unet").quantization["convolution_weights"] == calibrated
    assert set(openvino_convolution_weights(hybrid_package, "unet")) == {"i8"}  # integer kernels read int8 weights
    assert len(record["source_package"]["manifest_sha256"]) == 64
    assert record["measured_on"]["cpu"] and "saturation_free_int8" in record["measured_on"]
    kernels = manifest.graph("unet").quantization["integer_kernels"]
    assert set(kernels) == {"onnx", "openvino"} and all(
        k["count"] > 0 and k["saturation_free"] for k in kernels.values()
    )
    assert not verify_files(manifest)


def test_onnx_calibrated_convolutions_run_as_integer_kernels(hybrid_package, tmp_path):
    """ONNX Runtime fuses every convolution the streamed QDQ rewrite quantized into QLinearConv; the float ones
    are the UNet's output convolution (its output is the graph's) and IdentityNet's keep_float pair."""
    import onnx
    import onnxruntime as ort

    from instantid_edge.runtime.manifest import read_manifest

    manifest = read_manifest(hybrid_package)
    for graph, float_convolutions in (("unet", 1), ("identitynet", 2)):
        path = manifest.graph(graph).path(hybrid_package, "onnx")
        stored = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node].count("Conv")
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{graph}.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
        assert (ops.count("QLinearConv"), ops.count("Conv")) == (stored - float_convolutions, float_convolutions)
    assert manifest.graph("unet").quantization["tools"]["onnx"] == "instantid-edge onnx_static + onnx_weights"


def _cli(*args):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    return CliRunner().invoke(cli, ["quantize", *map(str, args)])


def test_bad_input_is_refused_clearly(tmp_path, runtime_package, face_pack):
    out = tmp_path / "out"
    result = _cli(runtime_package, "--out", out, "--graphs", "unet,bogus", "--face-models", face_pack)
    assert result.exit_code == 1 and "unknown graph name(s) bogus" in result.output
    result = _cli(tmp_path, "--out", out)
    assert result.exit_code == 1 and "not a model package" in result.output
    (tmp_path / "faces").mkdir()
    result = _cli(runtime_package, "--out", out, "--calibration-faces", tmp_path / "faces", "--face-models", face_pack)
    assert result.exit_code == 1 and "holds no images" in result.output
    result = _cli(runtime_package, "--out", out, "--profile", "fast", "--face-models", face_pack)
    assert result.exit_code == 1 and "--profile fast is unavailable" in result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_calibration_runs_the_way_the_package_is_meant_to_run(runtime_package, fast_package, tmp_path):
    from instantid_edge.quantize.package import QuantizeRequest, _calibration_jobs
    from instantid_edge.runtime.manifest import read_manifest

    def first_job(package, **fields):
        request = QuantizeRequest(package=package, out=tmp_path / "out", samples=8, **fields)
        jobs, held_out = _calibration_jobs([("face", None)], ["a", "b"], request, read_manifest(package), (128, 128))
        assert held_out[1].steps == jobs[0][1].steps
        return len(jobs), jobs[0][1]

    # a fused few-step UNet: the distillation's own sampling (4-step Lightning: trailing Euler, no CFG)
    images, fast = first_job(fast_package)
    assert (images, fast.steps, fast.guidance, fast.timestep_spacing) == (2, 4, 0.0, "trailing")
    assert fast.decoder == "tiny"
    # no distillation: upstream's sampling, 4 steps spanning the schedule, with CFG (batch 2)
    images, quality = first_job(runtime_package)
    assert (images, quality.steps, quality.guidance, quality.decoder) == (2, 4, 5.0, "full")
    # asked for: the fused package's quality profile is its distillation's sampling with the full decoder
    images, quality = first_job(fast_package, profile="quality")
    assert (quality.guidance, quality.decoder) == (0.0, "full")


def test_quantizing_does_not_touch_the_source_package(runtime_package, weights_package):
    from instantid_edge.runtime.manifest import read_manifest, verify_files

    assert not verify_files(read_manifest(runtime_package))  # hard links were never written through
    assert "quantization" not in read_manifest(runtime_package).data
    assert np.isfinite(np.load(weights_package / "constants" / "uncond_image_tokens.npy")).all()


def test_json_output_is_the_record_alone(tmp_path, runtime_package, face_pack):
    """`quantize --json` prints only the record on stdout (NNCF's progress bars go to stderr), so it pipes to jq."""
    import subprocess
    import sys

    out = tmp_path / "pkg-json"
    command = [sys.executable, "-m", "instantid_edge.cli", "quantize", str(runtime_package), "--out", str(out),
               "--method", "weights", "--graphs", "unet", "--calibration-size", "128", "--face-models",
               str(face_pack), "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=900)  # any locale
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout)
    assert record["method"] == "weights" and record["policy"]["unet"] == "weights"
