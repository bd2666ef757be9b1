"""The torch-free runtime: numpy, ONNX Runtime or OpenVINO, insightface, a tokenizer.

Nothing in this package may import torch, diffusers or transformers (tests/test_no_torch.py checks it).
"""
