"""The TAESD-XL decoder: our module loads the real taef2 weights of the same family and decodes the
encoding of a real photo well; the exported graph equals the module on both backends; every released
weight layout loads the same decoder, checked against diffusers' AutoencoderTiny."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.torch


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def test_the_real_taef2_weights_decode_the_encoding_of_a_photo(assets):
    """taef2 (FLUX.2 latents, 32 channels, GroupNorm pool blocks) has the same key layout as taesdxl_*.pth;
    ../shared/assets/SOURCES.md measured about 31 dB for this round trip, random weights about 5 dB."""
    import torch

    from instantid_edge.export.taesd import load_tiny_decoder, load_tiny_encoder

    encoder = load_tiny_encoder(assets / "taesd" / "taef2_encoder.pth")
    decoder = load_tiny_decoder(assets / "taesd" / "taef2_decoder.pth")
    photo = np.asarray(Image.open(assets / "faces" / "astronaut.png").convert("RGB"), np.float32) / 255
    with torch.inference_mode():
        latents = encoder(torch.from_numpy(photo).permute(2, 0, 1)[None])
        decoded = decoder(latents).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert latents.shape == (1, 32, 64, 64) and decoder[1].in_channels == 32
    assert _psnr(decoded, photo) >= 28.0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_tiny_decoder_graph_equals_the_torch_module(fast_package, fast_path, backend):
    import torch

    from instantid_edge.export.taesd import TinyDecoderGraph, load_tiny_decoder
    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.session import SessionOptions, open_session

    manifest = read_manifest(fast_package)
    session = open_session(manifest.graph("vae_decoder_tiny"), fast_package, SessionOptions(backend=backend))
    latents = np.random.default_rng(0).standard_normal((1, 4, 12, 20)).astype(np.float32) * 3
    produced = session.run({"latents": latents})["image"]
    with torch.inference_mode():
        expected = TinyDecoderGraph(load_tiny_decoder(fast_path / "taesdxl_decoder.pth"))(torch.from_numpy(latents))
    assert produced.shape == (1, 3, 96, 160)
    np.testing.assert_allclose(produced, expected.numpy(), rtol=0, atol=1e-5)
    assert np.abs(expected.numpy()).max() > 0.1


def test_an_autoencoder_tiny_folder_decodes_as_diffusers_does(tmp_path):
    """diffusers' AutoencoderTiny names the layers decoder.layers.N (one lower: its clamp is not a layer) and
    maps the [0, 1] output to [-1, 1]; our loader must give exactly its decode."""
    import torch
    from diffusers import AutoencoderTiny

    from instantid_edge.export.taesd import TinyDecoderGraph, load_tiny_decoder

    torch.manual_seed(0)
    vae = AutoencoderTiny().eval()  # TAESD's architecture, diffusers' own random initialisation
    vae.save_pretrained(tmp_path / "taesdxl")
    latents = torch.randn(1, 4, 8, 8) * 2
    with torch.inference_mode():
        expected = vae.decode(latents).sample
        produced = TinyDecoderGraph(load_tiny_decoder(tmp_path / "taesdxl"))(latents)
    np.testing.assert_allclose(produced.numpy(), expected.numpy(), rtol=0, atol=1e-5)


def test_the_pth_and_safetensors_layouts_load_the_same_decoder(tmp_path, fast_path):
    import torch
    from safetensors.torch import save_file

    from instantid_edge.export.taesd import load_tiny_decoder

    state = torch.load(fast_path / "taesdxl_decoder.pth", weights_only=True)
    save_file(state, tmp_path / "taesdxl_decoder.safetensors")
    a, b = (
        load_tiny_decoder(fast_path / "taesdxl_decoder.pth"),
        load_tiny_decoder(tmp_path / "taesdxl_decoder.safetensors"),
    )
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"junk"), "cannot read tiny decoder weights"),
        (lambda p: __import__("torch").save({"weight": __import__("torch").zeros(2)}, p), "not a TAESD decoder"),
        (lambda p: __import__("torch").save([1, 2], p), "not a TAESD state dict"),
    ],
)
def test_files_that_are_not_a_tiny_decoder_are_refused(tmp_path, make, message):
    from instantid_edge.export.taesd import load_tiny_decoder
    from instantid_edge.runtime.errors import CheckpointError

    make(tmp_path / "decoder.pth")
    with pytest.raises(CheckpointError, match=message):
        load_tiny_decoder(tmp_path / "decoder.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers AutoencoderTiny folder"):
        load_tiny_decoder(tmp_path / "folder")
