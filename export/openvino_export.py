"""ONNX -> OpenVINO IR (.xml + .bin), weights kept in fp32 (OpenVINO's default would halve them to fp16)."""

from __future__ import annotations

from pathlib import Path


def convert_to_openvino(onnx_path: Path, xml_path: Path) -> list[Path]:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    del model
    return [xml_path, xml_path.with_suffix(".bin")]
