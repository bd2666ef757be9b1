"""The Tiny AutoEncoder (TAESD family) as our own small torch modules, and loaders for its released files.

Architecture as published in madebyollin/taesd (taesd.py, MIT): the decoder is a Sequential of
    0 Clamp (tanh(x/3)*3), 1 conv3x3 latent->64, 2 ReLU,
    3-5 Block, 6 Upsample x2, 7 conv3x3 (no bias), 8-10 Block, 11 Upsample, 12 conv, 13-15 Block,
    16 Upsample, 17 conv, 18 Block, 19 conv3x3 64->3
where a Block is conv-ReLU-conv-ReLU-conv plus the input, then ReLU; the encoder mirrors it (stride-2 convs,
14 conv 64->latent). Its output image is in [0, 1]. TAESD-XL (taesdxl_*.pth) has 4 latent channels;
taef2 (FLUX.2) has 32 and, in the three innermost blocks, a "pool" branch added to the block's input:
conv1x1 64->256 (no bias), GroupNorm(4, 256), ReLU, conv1x1 256->64 (no bias).

Weights come as the GitHub `.pth` (state dict with keys `1.weight`, `3.conv.0.weight`, ...), the hub's
`.safetensors` of the same keys, or diffusers' AutoencoderTiny folder (config.json +
diffusion_pytorch_model.safetensors, keys `decoder.layers.0.weight`, ...: the same layers, indices one lower
because the clamp is not a layer there). SDXL's denoised latents go in as they are (AutoencoderTiny's
scaling_factor is 1.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..runtime.errors import CheckpointError

WIDTH = 64


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, channels: int = WIDTH, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(),
                                  _conv(channels, channels))  # fmt: skip
        self.pool = None
        if pool:
            wide = channels * 4
            self.pool = nn.Sequential(nn.Conv2d(channels, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(),
                                      nn.Conv2d(wide, channels, 1, bias=False))  # fmt: skip
        self.fuse = nn.ReLU()

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def tiny_decoder(latent_channels: int = 4, pool: bool = False) -> nn.Sequential:
    def blocks(with_pool):
        return [Block(pool=with_pool) for _ in range(3)]

    return nn.Sequential(
        Clamp(), _conv(latent_channels, WIDTH), nn.ReLU(),
        *blocks(pool), nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False),
        *blocks(False), nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False),
        *blocks(False), nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False),
        Block(), _conv(WIDTH, 3),
    )  # fmt: skip


def tiny_encoder(latent_channels: int = 4, pool: bool = False) -> nn.Sequential:
    def blocks(with_pool=False):
        return [Block(pool=with_pool) for _ in range(3)]

    return nn.Sequential(
        _conv(3, WIDTH), Block(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), *blocks(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), *blocks(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), *blocks(pool),
        _conv(WIDTH, latent_channels),
    )  # fmt: skip


class TinyDecoderGraph(nn.Module):
    """Denoised latents -> image in [-1, 1], the same contract as the full VAE decoder graph."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents):
        return self.decoder(latents) * 2 - 1


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        weights = path / "diffusion_pytorch_model.safetensors"
        config = path / "config.json"
        if not weights.is_file() or not config.is_file():
            raise CheckpointError(
                f"{path} is not a diffusers AutoencoderTiny folder (config.json + diffusion_pytorch_model.safetensors"
                "), e.g. a download of madebyollin/taesdxl"
            )
        kind = json.loads(config.read_text()).get("_class_name")
        if kind != "AutoencoderTiny":
            raise CheckpointError(f"{config} describes a {kind}, not an AutoencoderTiny (TAESD)")
        path = weights
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files fail in many ways: one message naming the file
        raise CheckpointError(f"cannot read tiny decoder weights {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a TAESD state dict")
    return state


def _decoder_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The decoder's tensors under taesd.py's own keys, from any of the released layouts."""
    if any(k.startswith("decoder.layers.") for k in state):  # diffusers AutoencoderTiny
        renamed = {}
        for key, value in state.items():
            if key.startswith("decoder.layers."):
                index, _, rest = key.removeprefix("decoder.layers.").partition(".")
                renamed[f"{int(index) + 1}.{rest}"] = value
        return renamed
    if "1.weight" in state and "19.weight" in state:
        return state
    if "0.weight" in state and "14.weight" in state:
        raise CheckpointError(f"{path.name} is a TAESD encoder; pass the decoder (e.g. taesdxl_decoder.pth)")
    raise CheckpointError(
        f"{path.name} is not a TAESD decoder: expected keys 1.weight ... 19.weight (taesd .pth/.safetensors) or "
        f"decoder.layers.* (diffusers AutoencoderTiny), found {sorted(state)[:4]}"
    )


def load_tiny_decoder(path: str | Path) -> nn.Sequential:
    """A TAESD-family decoder in fp32 from a .pth, a .safetensors or an AutoencoderTiny folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"tiny decoder not found: {path}")
    state = _decoder_state(_read_state(path), path)
    decoder = tiny_decoder(state["1.weight"].shape[1], pool="3.pool.0.weight" in state)
    _load(decoder, state, path)
    return decoder


def load_tiny_encoder(path: str | Path) -> nn.Sequential:
    """A TAESD-family encoder (taesd's `.pth` keys), to make test latents from a photo."""
    path = Path(path)
    state = _read_state(path)
    if "0.weight" not in state or "14.weight" not in state:
        raise CheckpointError(f"{path.name} is not a TAESD encoder (no 0.weight ... 14.weight)")
    encoder = tiny_encoder(state["14.weight"].shape[0], pool="11.pool.0.weight" in state)
    _load(encoder, state, path)
    return encoder


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path.name} does not fit the TAESD architecture: {exc}") from exc
    module.eval()
