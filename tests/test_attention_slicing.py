"""Self-attention in head slices (export/attention_slicing.py): the same attention, less held at once in the ONNX
graph, the OpenVINO IR left whole, the choice in the manifest; a bad --attention-slice is refused."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.torch


def _softmaxes(path) -> int:
    import onnx

    return sum(node.op_type == "Softmax" for node in onnx.load(str(path), load_external_data=False).graph.node)


def test_a_sliced_attention_equals_the_whole_one():
    import torch
    from diffusers.models.attention_processor import Attention

    from instantid_edge.export.attention_slicing import sliced_attention

    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=4, dim_head=16).eval()
    tokens, context = torch.randn(2, 37, 64), torch.randn(2, 5, 64)
    with torch.inference_mode():
        whole = attn(tokens), attn(tokens, encoder_hidden_states=context)
        processor = attn.processor
        for heads in (1, 3):  # 3 leaves a last slice of one head
            with sliced_attention(attn, heads) as sliced:
                assert sliced and attn.processor is not processor
                torch.testing.assert_close(attn(tokens), whole[0], rtol=0, atol=1e-6)
                torch.testing.assert_close(attn(tokens, encoder_hidden_states=context), whole[1], rtol=0, atol=1e-6)
            assert attn.processor is processor  # restored
        with sliced_attention(attn, 4) as sliced:  # no attention has more heads than that
            assert not sliced and attn.processor is processor


def test_the_package_slices_its_onnx_graphs_and_keeps_the_openvino_ir_whole(tiny_package):
    import openvino as ov

    from instantid_edge.runtime.manifest import read_manifest

    manifest = read_manifest(tiny_package)
    unet = manifest.graph("unet")
    assert unet.baked["self_attention_heads_per_slice"] == {"onnx": 1}
    assert "self_attention_heads_per_slice" not in manifest.graph("vae_decoder").baked  # its attention has norms
    onnx_softmaxes = _softmaxes(tiny_package / unet.files["onnx"][0]["path"])
    ir = ov.Core().read_model(str(tiny_package / unet.files["openvino"][0]["path"]))
    ir_attentions = sum(op.get_type_name() in ("Softmax", "ScaledDotProductAttention") for op in ir.get_ops())
    assert onnx_softmaxes > ir_attentions > 0, (onnx_softmaxes, ir_attentions)


def test_slicing_lowers_the_activation_peak_of_the_onnx_graph(tiny_standin, tmp_path):
    """The UNet exported both ways: the sliced graph's static liveness at 512 x 512 is lower."""
    from instantid_edge.export.package import ExportRequest, export_package
    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.memory_estimate import MemoryModel

    peaks = {}
    for heads in (None, 1):
        out = tmp_path / f"slice-{heads}"
        export_package(ExportRequest(tiny_standin, out, formats=("onnx",), attention_slice=heads), log=lambda _: None)
        peaks[heads] = MemoryModel(read_manifest(out), "onnxruntime").activations("unet", 512, 512, 2, planned=False)
    assert peaks[1] < 0.9 * peaks[None], peaks


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_bad_attention_slice_is_refused_before_any_output(tiny_standin, tmp_path, value):
    from click.testing import CliRunner

    from instantid_edge.cli import cli

    out = tmp_path / "pkg"
    result = CliRunner().invoke(cli, ["export", str(tiny_standin), "--out", str(out), "--attention-slice", value])
    assert result.exit_code == 2 and "--attention-slice" in result.output and not out.exists(), result.output
