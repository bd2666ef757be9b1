"""The torch-free runtime against the PyTorch reference: same photo, prompt, seed and settings.

fp32 on both sides, so the only differences are float rounding in differently fused kernels: final
latents agree to 1e-3 (their magnitude is ~1-10 after 4 steps) and images to at most 1 level in 255 on
average (a few pixels may round the other way).
"""

from __future__ import annotations

import numpy as np
import pytest

from instantid_edge.runtime.settings import GenerationSettings

pytestmark = pytest.mark.torch

LATENT_ATOL = 1e-3


@pytest.fixture(scope="module")
def face_rgb(astronaut):
    from instantid_edge.runtime.images import load_rgb

    return load_rgb(astronaut)


@pytest.fixture(scope="module")
def runtime(tiny_package, face_pack):
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    pipelines = {
        b: InstantIDPipeline.load(tiny_package, backend=b, face_models=face_pack) for b in ("onnxruntime", "openvino")
    }
    for pipe in pipelines.values():
        pipe.watermark = False  # the reference marks nothing; the watermark's cost is measured in its own tests
    return pipelines


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("guidance, negative", [(5.0, None), (5.0, "blurry, lowres"), (1.0, None)])
def test_runtime_matches_the_reference(tiny_models, analyzer, runtime, face_rgb, backend, guidance, negative):
    from instantid_edge.export.reference import generate

    settings = GenerationSettings(
        prompt="a watercolor portrait of an astronaut", negative_prompt=negative, seed=11, steps=4,
        guidance=guidance, height=128, width=192, ip_scale=0.7, identitynet_scale=0.9, control_end=0.75,
    )  # fmt: skip
    expected = generate(tiny_models, analyzer, face_rgb, settings)
    produced = runtime[backend](face_rgb, settings)
    np.testing.assert_array_equal(produced.conditioning.control, expected.conditioning.control)
    np.testing.assert_allclose(produced.latents, expected.latents, rtol=0, atol=LATENT_ATOL)
    difference = np.abs(produced.images[0].astype(int) - expected.image.astype(int))
    assert difference.mean() < 1.0 and difference.max() <= 3
    assert np.abs(expected.latents).max() > 0.5  # not a trivially small comparison
