"""int8 (and int4) OpenVINO IR with NNCF: weight compression, hybrid (int8 or int4 MatMul weights), or full
post-training quantization.

The weight-only actions leave convolutions as policy.WEIGHT_ONLY_CONVOLUTIONS says (float: OpenVINO would
decompress their int8 weights to f32 at compile time and keep both copies).
Calibrated (integer) layers get NNCF's overflow fix in every layer, not only the first (its default): weights
in half the int8 range, so the u8 x s8 kernels of CPUs without VNNI cannot saturate (runtime/cpu.py).
"""

from __future__ import annotations

from pathlib import Path

CONVOLUTIONS = ["Convolution", "GroupConvolution", "ConvolutionBackpropData"]  # OpenVINO op types


def quantize_openvino(
    source_xml: Path, target_xml: Path, action: str, samples: list[dict], keep_float: list[str]
) -> None:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    from .policy import PRECISION, WEIGHT_ONLY, WEIGHT_ONLY_CONVOLUTIONS

    model = ov.Core().read_model(str(source_xml))
    keep = nncf.IgnoredScope(patterns=keep_float, validate=False) if keep_float else None
    if WEIGHT_ONLY_CONVOLUTIONS["openvino"] == "float" and action in WEIGHT_ONLY:
        keep = nncf.IgnoredScope(types=CONVOLUTIONS, patterns=keep_float, validate=False)
    calibrated = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1), overflow_fix=OverflowFix.ENABLE
    )
    if action in ("hybrid", "int4-hybrid"):
        # Convolutions: int8 weights and calibrated activations. Then MatMul/Gather weights: int8 or int4, compute
        # float. (Activations of the attention and feed-forward MatMuls are as large as their weights.)
        skip = nncf.IgnoredScope(types=["MatMul", "Gather"], patterns=keep_float, validate=False)
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), ignored_scope=skip,
                              model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=calibrated)  # fmt: skip
        keep = nncf.IgnoredScope(types=CONVOLUTIONS, patterns=keep_float, validate=False)
    if action == "full":
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), ignored_scope=keep,
                              model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=calibrated)  # fmt: skip
    elif PRECISION[action] == "int8":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=keep)
    elif PRECISION[action] == "int4":
        model = _compress_int4(model, keep)
    else:
        raise ValueError(action)
    ov.save_model(model, str(target_xml), compress_to_fp16=False)


def _compress_int4(model, keep):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from .policy import INT4

    # all_layers: the last MatMul too (NNCF would keep it int8; the ONNX rewrite has no such exception).
    fallback = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                             min_adjusted_group_size=INT4.min_group_size)  # fmt: skip
    return nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=INT4.group_size, ratio=1.0, all_layers=True,
        backup_mode=nncf.BackupMode.INT8_ASYM, ignored_scope=keep, advanced_parameters=fallback,
    )  # fmt: skip
