"""The memory policy: which mode `auto` picks for which predicted peaks, and what each mode closes when."""

from __future__ import annotations

import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.memory import MEMORY_MODES, STAGES, MemoryPolicy

GIB = 2**30


@pytest.mark.parametrize(
    "peaks, budget, expected",
    [
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 20 * GIB, "normal"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 4 * GIB, "low"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 3.5 * GIB, "lean"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 2 * GIB, "minimal"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 1 * GIB, "minimal"),  # none fits
        (None, 8 * GIB, "low"),  # no prediction: the safe middle
    ],
)
def test_auto_takes_the_fastest_mode_whose_predicted_peak_fits(peaks, budget, expected):
    assert MemoryPolicy.choose("auto", peaks, budget).mode == expected


def test_explicit_modes_are_kept_and_unknown_ones_refused():
    modes = ["normal", "low", "lean", "minimal"]
    assert [MemoryPolicy.choose(mode).mode for mode in MEMORY_MODES[1:]] == modes
    with pytest.raises(ConfigError, match="memory mode must be one of auto, normal, low, lean, minimal"):
        MemoryPolicy.choose("tiny")


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
