"""The per-image seed rule: initial noise and step noise from one generator per image, and given noise checked."""

from __future__ import annotations

import numpy as np
import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.noise import check_given_noise, image_rng, initial_noise

SHAPE = (4, 2, 3)


def test_image_rng_gives_the_initial_noise_then_the_step_generator_after_it():
    noise, steps = image_rng(seed=7, index=2, shape=SHAPE)
    rule = np.random.default_rng(7 + 2)  # image i of seed s: default_rng(s + i)
    assert noise.dtype == np.float32 and noise.shape == SHAPE
    np.testing.assert_array_equal(noise, rule.standard_normal(SHAPE, dtype=np.float32))
    np.testing.assert_array_equal(steps.standard_normal(SHAPE, dtype=np.float32),
                                  rule.standard_normal(SHAPE, dtype=np.float32))  # fmt: skip


def test_the_rule_gives_the_same_numbers_as_when_it_was_written():
    """numpy does not promise that a Generator's normal draws stay the same across versions; if they changed,
    every seed would give another image than before (and than on other machines), so that must be noticed."""
    noise, steps = image_rng(seed=7, index=2, shape=SHAPE)
    first_draws = np.float32([-0.35180455446243286, 2.059215784072876, 0.7923929691314697])
    first_step_draws = np.float32([-0.712901771068573, -0.008296514861285686, 0.579082190990448])
    np.testing.assert_array_equal(noise.ravel()[:3], first_draws)
    np.testing.assert_array_equal(steps.standard_normal(SHAPE, dtype=np.float32).ravel()[:3], first_step_draws)


def test_initial_noise_stacks_consecutive_seeds():
    both = initial_noise(10, SHAPE, num_images=2)
    assert both.shape == (2, *SHAPE)
    np.testing.assert_array_equal(both[1], image_rng(11, 0, SHAPE)[0])


def test_given_noise_is_batched_checked_and_refused_when_wrong():
    one = np.ones(SHAPE)
    checked = check_given_noise(one, (1, *SHAPE), "a run")
    assert checked.shape == (1, *SHAPE) and checked.dtype == np.float32
    with pytest.raises(ConfigError, match=r"given latents have shape \(1, 4, 2, 3\); a run needs \(2, 4, 2, 3\)"):
        check_given_noise(one, (2, *SHAPE), "a run")
    with pytest.raises(ConfigError, match="NaN or infinite"):
        check_given_noise(np.full(SHAPE, np.inf), (1, *SHAPE), "a run")
