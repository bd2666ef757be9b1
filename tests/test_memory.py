"""The memory policy: which mode `auto` picks for which sizes, and which graphs each mode closes when."""

from __future__ import annotations

import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.memory import MEMORY_MODES, STAGES, MemoryPolicy

GIB = 2**30
SMALL = {"text_encoder": 1, "unet": 1, "identitynet": 1}


@pytest.mark.parametrize(
    "sizes, expected",
    [
        (SMALL, "normal"),
        ({"unet": 5 * GIB, "identitynet": 4 * GIB, "text_encoder_2": 3 * GIB}, "low"),  # 12 > 0.45 x 24
        ({"unet": 10 * GIB, "identitynet": 5 * GIB}, "minimal"),  # the denoiser pair alone is over 0.45 x 24
    ],
)
def test_auto_decides_from_the_graphs_weight_bytes_against_physical_memory(sizes, expected):
    assert MemoryPolicy.choose("auto", sizes, physical=24 * GIB).mode == expected


def test_explicit_modes_are_kept_and_unknown_ones_refused():
    modes = ["normal", "low", "lean", "minimal"]
    assert [MemoryPolicy.choose(mode, SMALL).mode for mode in MEMORY_MODES[1:]] == modes
    with pytest.raises(ConfigError, match="memory mode must be one of auto, normal, low, lean, minimal"):
        MemoryPolicy.choose("tiny", SMALL)


def test_each_mode_closes_what_it_promises_after_each_stage():
    modes = ("normal", "low", "lean", "minimal")
    closes = {mode: {s: MemoryPolicy(mode).closes_after(s) for s in STAGES} for mode in modes}
    assert not any(closes["normal"].values())
    conditioning = ("text_encoder", "text_encoder_2", "image_proj", "vae_encoder")
    low = {"conditioning": conditioning, "identitynet": (), "unet": (), "denoising": ("identitynet", "unet"),
           "decoding": ("vae_decoder", "vae_decoder_tiny")}  # fmt: skip
    assert closes["low"] == low and closes["lean"] == low
    assert closes["minimal"] == {**closes["low"], "identitynet": ("identitynet",), "unet": ("unet",)}
    with pytest.raises(ValueError, match="unknown stage"):
        MemoryPolicy("low").closes_after("loading")


def test_lean_and_minimal_split_cfg_and_tile_the_decode():
    assert [MemoryPolicy(m).cfg_split for m in ("normal", "low", "lean", "minimal")] == [False, False, True, True]
    assert [MemoryPolicy(m).decode_tile for m in ("normal", "low", "lean", "minimal")] == [None, None, 64, 64]
