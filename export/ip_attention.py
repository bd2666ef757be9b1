"""IP-Adapter attention inside the SDXL UNet: every cross-attention (attn2) also attends to the face tokens.

The context arriving at each attn2 is [text tokens ..., 16 face tokens]. The text part goes through the
layer's own to_k/to_v, the face part through extra to_k_ip/to_v_ip projections; both attention results share
the query and are summed (face part times `scale`) before the output projection.

Key names follow the released `ip-adapter.bin["ip_adapter"]`: upstream loads it into
`ModuleList(unet.attn_processors.values())`, so a layer's index is its position among ALL attention
processors (attn1 and attn2 interleaved, down blocks, then up blocks, then the mid block), and the IP layers
are the odd indices: "1.to_k_ip.weight", "1.to_v_ip.weight", "3.to_k_ip.weight", ...
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn


class IPScale:
    """What all IP layers share: the IP scale (a float, or a 0-d tensor when exported as a graph input) and the
    face region their face attention is confined to (None: everywhere).

    The region comes in one of two forms. `region_pixels` [H, W] (0 or 1, at the output size) is applied as
    upstream's `region_control` does (ip_adapter/attention_processor.py: nearest resize by the factor
    sqrt(H * W / query tokens)); the reference uses it. `region_latent` [1, 1, h, w] (the latents' size) is
    the exported UNet's `face_mask` input: each layer of latent stride s takes every s-th value, which is the
    same nearest resize wherever upstream's applies (its factor is then exactly 8 * s) and also covers sizes
    that are not multiples of 64.
    """

    def __init__(self, value: float | torch.Tensor = 1.0):
        self.value = value
        self.region_pixels: torch.Tensor | None = None
        self.region_latent: torch.Tensor | None = None


class IPAttnProcessor(nn.Module):
    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int, scale: IPScale, stride: int = 1):
        super().__init__()
        self.num_tokens = num_tokens
        self.scale = scale
        self.stride = stride  # this layer's resolution: the latents' divided by `stride`
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def forward(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        if encoder_hidden_states is None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("IP attention expects [B, N, C] queries, a context and no attention mask")
        text, image = (
            encoder_hidden_states[:, : -self.num_tokens],
            encoder_hidden_states[:, -self.num_tokens :],
        )
        batch, heads = hidden_states.shape[0], attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        query = split(attn.to_q(hidden_states))
        out = F.scaled_dot_product_attention(query, split(attn.to_k(text)), split(attn.to_v(text)))
        ip = F.scaled_dot_product_attention(query, split(self.to_k_ip(image)), split(self.to_v_ip(image)))
        mask = self._region(query.shape[2])
        if mask is not None:
            ip = ip * mask
        out = out + self.scale.value * ip
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor

    def _region(self, tokens: int) -> torch.Tensor | None:
        """The face region at this layer's resolution, [1, 1, tokens, 1], or None."""
        if self.scale.region_latent is not None:
            mask = self.scale.region_latent[:, :, :: self.stride, :: self.stride]
        elif self.scale.region_pixels is not None:
            height, width = self.scale.region_pixels.shape
            ratio = (height * width / tokens) ** 0.5
            mask = F.interpolate(self.scale.region_pixels[None, None], scale_factor=1 / ratio, mode="nearest")
        else:
            return None
        return mask.reshape(1, 1, -1, 1)


def layer_stride(module_name: str, levels: int) -> int:
    """The latent stride of an attention layer from its module name: down block i works at 2**i, up block i at
    2**(levels - 1 - i), the mid block at the lowest resolution."""
    parts = module_name.split(".")
    if parts[0] == "down_blocks":
        return 2 ** int(parts[1])
    if parts[0] == "up_blocks":
        return 2 ** (levels - 1 - int(parts[1]))
    return 2 ** (levels - 1)


def ip_layer_names(unet) -> OrderedDict[int, str]:
    """Index in the released key numbering -> module name of each cross-attention layer."""
    return OrderedDict(
        (index, name.removesuffix(".processor"))
        for index, name in enumerate(unet.attn_processors)
        if name.endswith("attn2.processor")
    )


def ip_key_shapes(unet) -> OrderedDict[str, tuple[int, int]]:
    """The keys and shapes `ip-adapter.bin["ip_adapter"]` must hold for this UNet, in the released order."""
    modules = dict(unet.named_modules())
    cross = unet.config.cross_attention_dim
    shapes = OrderedDict()
    for index, name in ip_layer_names(unet).items():
        hidden = modules[name].to_k.out_features
        shapes[f"{index}.to_k_ip.weight"] = (hidden, cross)
        shapes[f"{index}.to_v_ip.weight"] = (hidden, cross)
    return shapes


def install_ip_attention(unet, num_tokens: int, scale: IPScale) -> OrderedDict[int, IPAttnProcessor]:
    """Give every attn2 an IP processor (attn1 keeps plain attention); returns them by released index."""
    modules = dict(unet.named_modules())
    cross = unet.config.cross_attention_dim
    levels = len(unet.config.block_out_channels)
    layers = ip_layer_names(unet)
    by_name, installed = {}, OrderedDict()
    for index, name in enumerate(unet.attn_processors):
        module_name = name.removesuffix(".processor")
        if index in layers:
            hidden = modules[module_name].to_k.out_features
            processor = IPAttnProcessor(hidden, cross, num_tokens, scale, layer_stride(module_name, levels))
            processor.to(device=unet.device, dtype=unet.dtype)
            installed[index] = processor
            by_name[name] = processor
        else:
            by_name[name] = AttnProcessor2_0()
    unet.set_attn_processor(by_name)
    return installed


def load_ip_weights(installed: OrderedDict[int, IPAttnProcessor], state: dict) -> None:
    """Strictly load `ip-adapter.bin["ip_adapter"]` into installed processors (raises KeyError/ValueError)."""
    expected = {f"{i}.{part}.weight" for i in installed for part in ("to_k_ip", "to_v_ip")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{len(expected)} IP tensors expected, file has {len(state)}; "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for index, processor in installed.items():
        for part in ("to_k_ip", "to_v_ip"):
            tensor = state[f"{index}.{part}.weight"]
            layer = getattr(processor, part)
            if tuple(tensor.shape) != tuple(layer.weight.shape):
                raise ValueError(
                    f"{index}.{part}.weight has shape {tuple(tensor.shape)}, the UNet needs {tuple(layer.weight.shape)}"
                )
            with torch.no_grad():
                layer.weight.copy_(tensor)
