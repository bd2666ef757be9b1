"""int8 and int4 model packages: NNCF for OpenVINO IR, our streamed rewrites for ONNX; fidelity measured."""
