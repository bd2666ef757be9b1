"""int8 model packages: NNCF for OpenVINO IR, onnxruntime.quantization for ONNX, fidelity measured, not assumed."""
