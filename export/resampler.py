"""The image-prompt projection (InstantID's `Resampler`): one 512-d face embedding -> 16 context tokens.

A Perceiver-style resampler: 16 learned query tokens attend (4 times) to the projected face embedding
concatenated with themselves. Sub-module names and registration order follow the released
`ip-adapter.bin["image_proj"]`, so its state dict loads strictly.
"""

from __future__ import annotations

import torch
from torch import nn


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.dim_head, self.heads = dim_head, heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        q = self._split_heads(self.to_q(latents))
        k, v = (self._split_heads(t) for t in self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1))
        # The 1/sqrt(dim_head) scaling is split between q and k (as upstream does, for fp16 headroom).
        s = self.dim_head**-0.25
        weights = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class Resampler(nn.Module):
    def __init__(
        self,
        dim: int = 1280,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 20,
        num_queries: int = 16,
        embedding_dim: int = 512,
        output_dim: int = 2048,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """embeds [B, N, embedding_dim] (N = 1 face) -> tokens [B, num_queries, output_dim]."""
        latents = self.latents.repeat(embeds.shape[0], 1, 1)
        x = self.proj_in(embeds)
        for attention, ff in self.layers:
            latents = attention(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def resampler_config_from_state_dict(state: dict, dim_head: int = 64) -> dict:
    """Recover the Resampler hyper-parameters from tensor shapes (ip-adapter.bin carries no config)."""
    depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})
    dim = state["latents"].shape[2]
    inner = state["layers.0.0.to_q.weight"].shape[0]
    return {
        "dim": dim,
        "depth": depth,
        "dim_head": dim_head,
        "heads": inner // dim_head,
        "num_queries": state["latents"].shape[1],
        "embedding_dim": state["proj_in.weight"].shape[1],
        "output_dim": state["proj_out.weight"].shape[0],
        "ff_mult": state["layers.0.1.1.weight"].shape[0] // dim,
    }
