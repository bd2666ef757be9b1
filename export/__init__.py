"""Everything that needs torch: stand-in checkpoints, the PyTorch reference pipeline, ONNX/OpenVINO export."""
