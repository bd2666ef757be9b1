"""Self-attention computed a few heads at a time, so the exported graphs never hold every head's scores at once.

A self-attention over N tokens materialises batch x heads x N x N scores (and as many softmax outputs) in the
ONNX graph's MatMul-Softmax-MatMul. At 1024 x 1024 the SDXL UNet's and IdentityNet's 64 x 64 blocks have
N = 4096 and 10 heads: 0.67 GB per batch item per tensor, most of their activation peak. Computing the heads in
slices, one after another, keeps one slice's scores alive at a time; the result is the same attention (each
head is independent), only its graph is longer. This is diffusers' "attention slicing" (`SlicedAttnProcessor`,
which slices batch x heads) restricted to the heads, whose count is fixed in the graph while the batch and
token counts stay dynamic.

Cross-attention (77 text or 16 face tokens) keeps its heads together: its scores are N x 77, small. Only the
ONNX graphs are sliced: OpenVINO reads MatMul-Softmax-MatMul as one ScaledDotProductAttention op, whose CPU
kernel never holds the scores (on the small stand-in at 1024 x 1024 its UNet's activations were 0.11 GiB whole
against ONNX Runtime's 0.58), and slices only cost it memory and time (bench/RESULTS.md, "Attention in head slices").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

PLAIN = (AttnProcessor, AttnProcessor2_0)  # diffusers' processors that compute attention in one piece


class HeadSlicedAttnProcessor:
    """diffusers' plain attention, with self-attention computed `heads_per_slice` heads at a time."""

    def __init__(self, heads_per_slice: int):
        if heads_per_slice < 1:
            raise ValueError(f"heads_per_slice must be at least 1, not {heads_per_slice}")
        self.heads_per_slice = heads_per_slice

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, *_, **__):
        if attention_mask is not None or hidden_states.ndim != 3 or not _token_attention(attn):
            raise ValueError("head-sliced attention expects [B, N, C] tokens, no mask, norms or residual")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, heads = hidden_states.shape[0], attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        query, key, value = split(attn.to_q(hidden_states)), split(attn.to_k(context)), split(attn.to_v(context))
        step = heads if encoder_hidden_states is not None else self.heads_per_slice
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    query[:, s : s + step], key[:, s : s + step], value[:, s : s + step], scale=attn.scale
                )
                for s in range(0, heads, step)
            ],
            dim=1,
        )
        out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def _token_attention(attn: Attention) -> bool:
    """Attention over [B, N, C] tokens without norms or residual (a transformer block's; not the VAE's)."""
    norms = (attn.group_norm, attn.spatial_norm, attn.norm_q, attn.norm_cross)
    return all(norm is None for norm in norms) and not attn.residual_connection


@contextlib.contextmanager
def sliced_attention(model: nn.Module, heads_per_slice: int | None) -> Iterator[bool]:
    """Within the block, every plain token attention of `model` with more than `heads_per_slice` heads computes
    them that many at a time (None: none changed); afterwards each has its own processor back. Yields whether any
    attention was sliced. Other processors (IP attention) are left alone."""
    changed = {}
    if heads_per_slice is not None:
        for module in model.modules():
            plain = isinstance(module, Attention) and isinstance(module.processor, PLAIN)
            if plain and _token_attention(module) and module.heads > heads_per_slice:
                changed[module] = module.processor
                module.set_processor(HeadSlicedAttnProcessor(heads_per_slice))
    try:
        yield bool(changed)
    finally:
        for module, processor in changed.items():
            module.set_processor(processor)
