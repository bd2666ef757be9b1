"""int4 packages: 4-bit MatMul weights on both backends, fidelity recorded, and no saturation without VNNI."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nncf", reason="quantizing needs NNCF: pip install '.[quantize]'")
onnx = pytest.importorskip("onnx", reason="building test graphs needs onnx: pip install '.[quantize]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from test_int8_exactness import CPUS, _require, _run_all  # noqa: E402
from test_quantize import openvino_convolution_weights  # noqa: E402

from instantid_edge.quantize.fidelity import psnr  # noqa: E402
from instantid_edge.runtime.settings import GenerationSettings  # noqa: E402

# On the tiny random-weight stand-in (random weights fill every group evenly: real weights quantize better):
# this test's image PSNR against fp32 measured 41.9 dB on both backends.
IMAGE_PSNR_DB = 38.0
COSINE = 0.995


def _op_count(path, op_type: str) -> int:
    return sum(node.op_type == op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def _weight_bytes(package, graph, fmt):
    """Weight bytes on disk but OpenVINO's float convolutions (policy.WEIGHT_ONLY_CONVOLUTIONS)."""
    from instantid_edge.runtime.manifest import read_manifest

    files = read_manifest(package).graph(graph).files[fmt]
    float_convolutions = openvino_convolution_weights(package, graph).get("f32", 0) if fmt == "openvino" else 0
    return sum(f["bytes"] for f in files if not f["path"].endswith((".onnx", ".xml"))) - float_convolutions


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int4_package_round_trip(runtime_package, weights_package, int4_package, face_pack, astronaut, backend):
    from instantid_edge.runtime.images import load_rgb
    from instantid_edge.runtime.manifest import read_manifest, verify_files
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    settings = GenerationSettings(prompt="a pencil sketch of a person", seed=3, steps=4, height=128, width=128)
    face = load_rgb(astronaut)
    fp32 = InstantIDPipeline.load(runtime_package, backend=backend, face_models=face_pack)(face, settings)
    int4 = InstantIDPipeline.load(int4_package, backend=backend, face_models=face_pack)(face, settings)
    image_psnr = psnr(fp32.images[0], int4.images[0], 255.0)
    print(f"{backend}: image PSNR {image_psnr:.1f} dB against fp32")  # shown with pytest -rA
    assert IMAGE_PSNR_DB < image_psnr < 99  # close, but really quantized
    manifest = read_manifest(int4_package)
    record = manifest.data["quantization"]
    assert record["method"] == "int4" and record["policy"]["unet"] == "int4"
    assert record["policy"]["vae_decoder"] == "fp32" and record["policy"]["text_encoder_2"] == "weights"
    assert record["fidelity"]["end_to_end"][backend]["image_psnr_db"] > IMAGE_PSNR_DB
    for graph in ("identitynet", "unet"):
        assert manifest.graph(graph).precision == "int4"
        assert manifest.graph(graph).quantization["int4"]["group_size"] == 64
        assert record["fidelity"]["graphs"][graph][backend]["cosine"] > COSINE
        fmt = "onnx" if backend == "onnxruntime" else "openvino"
        # 4-bit MatMuls, int8 convolutions (OpenVINO's float ones left out of the count): smaller than the
        # int8-weights package, over 4x below fp32 (the tiny graphs are convolution-heavy: 0.79x the int8 UNet
        # in ONNX, where the MatMul weights alone halve)
        assert _weight_bytes(int4_package, graph, fmt) < 0.85 * _weight_bytes(weights_package, graph, fmt)
        assert _weight_bytes(runtime_package, graph, fmt) / _weight_bytes(int4_package, graph, fmt) > 4.0
        if fmt == "onnx":  # every MatMul the int8 rewrite made integer is 4-bit here
            counts = {p: _op_count(read_manifest(p).graph(graph).path(p, fmt), op)
                      for p, op in ((int4_package, "MatMulNBits"), (weights_package, "MatMulInteger"))}  # fmt: skip
            assert counts[int4_package] == counts[weights_package] > 0, counts
    kernels = manifest.graph("unet").quantization["integer_kernels"]["onnx"]
    assert kernels["count"] > 0 and kernels["saturation_free"] and kernels["max_abs_weight"] <= 8
    assert not verify_files(manifest)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int4_hybrid_package_round_trip(
    runtime_package, hybrid_package, int4_package, int4_hybrid_package, face_pack, astronaut, backend
):
    """int4's 4-bit MatMuls with hybrid's calibrated int8 convolutions: on OpenVINO smaller than int4 (whose
    convolutions stay f32) and than hybrid (int8 MatMuls); within hybrid's fidelity bound of fp32."""
    from test_quantize import BOUNDS

    from instantid_edge.runtime.images import load_rgb
    from instantid_edge.runtime.manifest import read_manifest, verify_files
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    settings = GenerationSettings(prompt="a pencil sketch of a person", seed=3, steps=4, height=128, width=128)
    face = load_rgb(astronaut)
    fp32 = InstantIDPipeline.load(runtime_package, backend=backend, face_models=face_pack)(face, settings)
    quantized = InstantIDPipeline.load(int4_hybrid_package, backend=backend, face_models=face_pack)(face, settings)
    image_psnr = psnr(fp32.images[0], quantized.images[0], 255.0)
    print(f"{backend}: image PSNR {image_psnr:.1f} dB against fp32")
    assert BOUNDS["hybrid"]["image_psnr_db"] < image_psnr < 99
    manifest = read_manifest(int4_hybrid_package)
    record = manifest.data["quantization"]
    assert record["method"] == "int4-hybrid" and record["policy"]["unet"] == "int4-hybrid"
    assert record["calibration"]["samples"] == {"identitynet": 4, "unet": 4}
    assert record["fidelity"]["end_to_end"][backend]["image_psnr_db"] > BOUNDS["hybrid"]["image_psnr_db"]
    fmt = "onnx" if backend == "onnxruntime" else "openvino"
    for graph in ("identitynet", "unet"):
        info = manifest.graph(graph)
        assert info.precision == "int4" and info.quantization["int4"]["group_size"] == 64
        assert info.quantization["convolution_weights"] == {"onnx": "calibrated", "openvino": "calibrated"}
        assert info.quantization["calibration_samples"] == 4
        assert record["fidelity"]["graphs"][graph][backend]["cosine"] > BOUNDS["hybrid"]["cosine"]
        kernels = info.quantization["integer_kernels"][fmt]
        assert kernels["count"] > 0 and kernels["saturation_free"]
        size = {p: sum(f["bytes"] for f in read_manifest(p).graph(graph).files[fmt] if not f["path"].endswith(
            (".onnx", ".xml"))) for p in (hybrid_package, int4_package, int4_hybrid_package)}  # fmt: skip
        assert size[int4_hybrid_package] < size[hybrid_package], size
        if fmt == "openvino":
            convolutions = openvino_convolution_weights(int4_hybrid_package, graph)  # keep_float ones aside, int8
            assert convolutions == openvino_convolution_weights(hybrid_package, graph) and "i8" in convolutions
            assert size[int4_hybrid_package] < size[int4_package], size
        else:  # the same MatMuls 4-bit as in int4, the convolutions static QDQ as in hybrid
            path = info.path(int4_hybrid_package, fmt)
            int4_path = read_manifest(int4_package).graph(graph).path(int4_package, fmt)
            assert _op_count(path, "MatMulNBits") == _op_count(int4_path, "MatMulNBits") > 0
            hybrid_path = read_manifest(hybrid_package).graph(graph).path(hybrid_package, fmt)
            assert _op_count(path, "QuantizeLinear") == _op_count(hybrid_path, "QuantizeLinear") > 0
    assert not verify_files(manifest)


K, N = 512, 48


def _nbits_model(tmp_path, weights):
    """One MatMul quantized by the int4 rewrite (quantize_weights with the INT4 rule)."""
    from instantid_edge.quantize.onnx_weights import quantize_weights
    from instantid_edge.quantize.policy import INT4

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
                              [numpy_helper.from_array(weights, "w")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "float.onnx")
    counts = quantize_weights(tmp_path / "float.onnx", tmp_path / "int4.onnx", keep_float=[], int4=INT4)
    assert counts["MatMul"] == 1
    return tmp_path / "int4.onnx"


@pytest.mark.parametrize("emulate_avx2", CPUS)
def test_4bit_integer_matmul_does_not_saturate_without_vnni(tmp_path, emulate_avx2):
    """Worst case for a 16-bit pairwise sum: every weight at its group's maximum with one sign per column, and
    activations at the ends of their range. Full-range int8 was off by 20% here without VNNI; 4-bit codes keep
    the integer products small, so both CPUs give the dequantized weights' product to int8 rounding."""
    _require(emulate_avx2)
    from instantid_edge.quantize.integer_kernels import onnx_integer_kernels, saturation_risks
    from instantid_edge.quantize.onnx_int4 import dequantize_int4, quantize_int4

    rng = np.random.default_rng(0)
    signs = np.where(rng.random(N) < 0.5, -1.0, 1.0)
    weights = (signs * rng.uniform(0.9, 1.0, (K, N))).astype(np.float32)
    model = _nbits_model(tmp_path, weights)
    kernels = onnx_integer_kernels(model)
    assert [k.weight_dtype for k in kernels] == ["int4"] and not saturation_risks(kernels)
    x = np.where(rng.random((16, K)) < 0.5, -1.0, 1.0).astype(np.float32) * rng.uniform(0.95, 1.0, (16, K))
    x = x.astype(np.float32)
    reference = x.astype(np.float64) @ dequantize_int4(*quantize_int4(weights, 64), K).astype(np.float64)
    y = _run_all(model, {"x": x}, emulate_avx2, tmp_path / "run")["y"]
    error = np.abs(y - reference).max() / np.abs(reference).max()
    assert error < 0.01, error  # int8 activations per group; saturation gave 0.2


def test_the_cpus_agree_on_the_int4_unet(tmp_path, int4_package):
    """The package's own 4-bit graphs on this CPU and on an emulated AVX2-only one (qemu-user, -cpu Haswell)."""
    _require(True)
    from test_int8_exactness import _graph_feeds

    from instantid_edge.runtime.manifest import read_manifest

    for fmt in ("onnx", "openvino"):
        path = read_manifest(int4_package).graph("unet").path(int4_package, fmt)
        feeds = _graph_feeds(int4_package, "unet", np.random.default_rng(3))
        native = _run_all(path, feeds, False, tmp_path / fmt)
        emulated = _run_all(path, feeds, True, tmp_path / fmt)
        for name, value in native.items():
            a, b = value.ravel().astype(np.float64), emulated[name].ravel().astype(np.float64)
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9995, (fmt, name)
