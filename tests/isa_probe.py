"""Run one graph on saved inputs and save its outputs: the tests start this under `qemu-x86_64 -cpu Haswell`,
so that ONNX Runtime or OpenVINO picks the kernels of an AVX2-only CPU (no AVX-512, no VNNI) on any x86 machine.

    python tests/isa_probe.py MODEL.onnx|MODEL.xml INPUTS.npz OUTPUTS.npz
"""

from __future__ import annotations

import sys

import numpy as np


def run_onnxruntime(model: str, feeds: dict) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def run_openvino(model: str, feeds: dict) -> dict:
    import openvino as ov

    core = ov.Core()
    graph = core.read_model(model)
    graph.reshape({name: list(array.shape) for name, array in feeds.items()})
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled(feeds)
    return {port.get_any_name(): np.asarray(results[i]) for i, port in enumerate(compiled.outputs)}


def main(model: str, inputs: str, outputs: str) -> None:
    feeds = dict(np.load(inputs))
    run = run_openvino if model.endswith(".xml") else run_onnxruntime
    np.savez(outputs, **run(model, feeds))


if __name__ == "__main__":
    main(*sys.argv[1:4])
