"""Each numpy sampler against its diffusers scheduler: timesteps, sigmas and every step's output.

The diffusers side is recorded in tests/data/sampler_golden.npz (tests/golden_samplers.py writes it), so these
checks run where torch is absent too; where it is present, the file is checked against diffusers itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from golden_samplers import (
    CASES,
    CONSISTENCY,
    FIXTURE,
    OPTION_CASES,
    SDXL,
    STEP_NOISE_SEED,
    case_key,
    option_key,
    start_noise,
    toy_noise_prediction,
    trailing_timesteps,
)

from instantid_edge.runtime import sampling

ATOL = 1e-5  # float32 throughout, as in diffusers: numpy and torch round some products differently


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {name: data[name] for name in data.files}


def test_the_golden_file_covers_every_sampler_spacing_and_karras_choice(golden):
    cases = {(name, spacing, karras) for name, _, spacing, karras in CASES}
    assert cases == {(n, s, k) for n in sampling.SAMPLERS for s in (None, "trailing") for k in (False, True)
                     if (not k or sampling.SAMPLERS[n].karras) and (not s or sampling.SAMPLERS[n].spacing)}  # fmt: skip
    assert all(f"{case_key(*case)}.outputs" in golden for case in CASES)


@pytest.mark.parametrize("name, steps, spacing, karras", CASES)
def test_sampler_matches_diffusers_at_every_step(golden, name, steps, spacing, karras):
    key = case_key(name, steps, spacing, karras)
    schedule = sampling.make_schedule(name, SDXL, steps, spacing, karras)
    np.testing.assert_allclose(schedule.timesteps, golden[f"{key}.timesteps"], rtol=0, atol=1e-3)
    if name not in CONSISTENCY:
        np.testing.assert_allclose(schedule.sigmas, golden[f"{key}.sigmas"], rtol=1e-6, atol=1e-6)
    assert schedule.init_sigma == pytest.approx(float(golden[f"{key}.init_sigma"]), rel=1e-6)

    inputs = []  # what each step gave the model: step i+1's input is step i's output (scaled for the eulers)

    def recording(model_input, t, step):
        inputs.append(model_input)
        return toy_noise_prediction(model_input, t, step)

    expected = golden[f"{key}.outputs"]
    start = (start_noise() * np.float32(schedule.init_sigma)).astype(np.float32)
    final = sampling.SAMPLERS[name].run(recording, start, schedule, np.random.default_rng(STEP_NOISE_SEED))
    assert len(inputs) == steps == len(expected)
    np.testing.assert_allclose(final, expected[-1], rtol=0, atol=ATOL)
    for step in range(1, steps):
        scale = float((schedule.sigmas[step] ** 2 + 1) ** 0.5) if name in ("euler", "euler_ancestral") else 1.0
        np.testing.assert_allclose(inputs[step] * scale, expected[step - 1], rtol=0, atol=ATOL * scale)


def _run_recording(name, schedule, start):
    """The numpy sampler's final latents and what it gave the model at each step."""
    inputs = []

    def recording(model_input, t, step):
        inputs.append(model_input)
        return toy_noise_prediction(model_input, t, step)

    final = sampling.SAMPLERS[name].run(recording, start, schedule, np.random.default_rng(STEP_NOISE_SEED))
    return final, inputs


@pytest.mark.parametrize("name, steps, timesteps, eta", OPTION_CASES)
def test_consistency_samplers_with_explicit_timesteps_and_eta_match_diffusers_at_every_step(
    golden, name, steps, timesteps, eta
):
    """TCDScheduler (eta = its gamma) on its own 50-step grid or explicit timesteps, LCMScheduler on explicit
    timesteps (set_timesteps(timesteps=...)), for 1, 2, 4 and 8 steps: the fast path's samplers."""
    key = option_key(name, steps, timesteps, eta)
    schedule = sampling.make_schedule(name, SDXL, steps, timesteps=timesteps, eta=eta)
    np.testing.assert_array_equal(schedule.timesteps, golden[f"{key}.timesteps"])
    if timesteps and steps == 4:
        assert schedule.timesteps.tolist() == [999, 749, 499, 249]  # DMD2's README
    final, inputs = _run_recording(name, schedule, start_noise())
    expected = golden[f"{key}.outputs"]
    assert len(inputs) == steps == len(expected)
    np.testing.assert_allclose(final, expected[-1], rtol=0, atol=ATOL)
    for step in range(1, steps):
        np.testing.assert_allclose(inputs[step], expected[step - 1], rtol=0, atol=ATOL)


def test_tcd_eta_0_draws_no_step_noise_and_eta_changes_the_result():
    def final(eta, seed):
        schedule = sampling.make_schedule("tcd", SDXL, 4, eta=eta)
        return sampling.tcd(toy_noise_prediction, start_noise(), schedule, np.random.default_rng(seed))

    np.testing.assert_array_equal(final(0.0, 1), final(0.0, 99))
    assert not np.allclose(final(0.3, 1), final(0.3, 99))
    assert not np.allclose(final(0.0, 1), final(0.3, 1))


@pytest.mark.torch
@pytest.mark.parametrize("steps", [2, 4, 8])
def test_tcd_with_trailing_timesteps_and_eta_0_is_ddim_trailing(steps):
    """Hyper-SD's README samples its 2/4/8-step LoRAs with DDIMScheduler(timestep_spacing="trailing"): our
    Hyper profiles are TCD on those timesteps with eta 0, which is that sampler step for step."""
    from diffusers import DDIMScheduler
    from golden_samplers import diffusers_trajectory

    ddim = DDIMScheduler.from_config({**SDXL, "timestep_spacing": "trailing"})
    ddim.set_timesteps(steps)
    schedule = sampling.make_schedule("tcd", SDXL, steps, timesteps=trailing_timesteps(steps), eta=0.0)
    np.testing.assert_array_equal(schedule.timesteps, ddim.timesteps.numpy().astype(np.float32))
    final, _ = _run_recording("tcd", schedule, start_noise())
    np.testing.assert_allclose(final, diffusers_trajectory(ddim, steps, eta=0.0)[-1], rtol=0, atol=ATOL)


@pytest.mark.torch
def test_the_golden_file_is_what_diffusers_gives_now(golden):
    from golden_samplers import golden_arrays

    fresh = golden_arrays()
    assert set(fresh) == set(golden)
    for name, array in fresh.items():
        # identical here; the margin is for another CPU's float rounding in torch, far below any scheduler change
        np.testing.assert_allclose(array, golden[name], rtol=1e-6, atol=1e-6,
                                   err_msg=f"{name}: regenerate with tests/golden_samplers.py")  # fmt: skip


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_trailing_spacing_gives_exactly_the_steps_asked_for(name):
    # diffusers' float arange returns 62 timesteps (the last -1) when asked for 61; we return 61
    schedule = sampling.make_schedule(name, SDXL, 61, "trailing")
    assert len(schedule.timesteps) == 61 and len(schedule.sigmas) == 62 and schedule.timesteps.min() >= 0


def test_alphas_cumprod_equals_diffusers_everywhere(golden):
    acp = sampling.alphas_cumprod(SDXL)
    assert acp.dtype == np.float32 and acp.shape == (1000,)
    # torch's float32 cumprod and ours round 121 of the 1000 products one float32 step apart, no more
    np.testing.assert_allclose(acp, golden["alphas_cumprod"], rtol=2e-7, atol=0)


def test_one_euler_step_with_the_true_noise_recovers_the_clean_sample():
    clean = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    schedule = sampling.make_schedule("euler", SDXL, 1)
    sigma = float(schedule.sigmas[0])
    x = clean + sigma * noise

    def exact(model_input, t, step):
        return noise

    out = sampling.euler(exact, x.astype(np.float32), schedule, np.random.default_rng(0))
    np.testing.assert_allclose(out, clean, atol=1e-4)


def test_samplers_leave_numpy_global_state_alone():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for name in sampling.SAMPLERS:
        schedule = sampling.make_schedule(name, SDXL, 4)
        sampling.SAMPLERS[name].run(
            toy_noise_prediction, np.ones((1, 4, 8, 8), np.float32), schedule, np.random.default_rng(0)
        )
    assert (np.random.get_state()[1] == before).all()


@pytest.mark.parametrize(
    "sampler, options, message",
    [
        ("heun", {}, "unknown sampler 'heun'"),
        ("euler_ancestral", {"karras": True}, "Karras sigmas apply to the euler and dpmpp_2m samplers"),
        ("lcm", {"karras": True}, "not lcm"),
        ("lcm", {"spacing": "trailing"}, "takes no timestep spacing"),
        ("euler", {"spacing": "linspace"}, "timestep spacing must be one of leading, trailing"),
    ],
)
def test_options_a_sampler_does_not_take_are_refused_not_dropped(sampler, options, message):
    from instantid_edge.runtime.errors import ConfigError
    from instantid_edge.runtime.settings import GenerationSettings

    with pytest.raises(ConfigError, match=message):
        sampling.make_schedule(sampler, SDXL, 4, options.get("spacing"), options.get("karras", False))
    settings = GenerationSettings("a portrait", sampler=sampler, karras=options.get("karras", False),
                                  timestep_spacing=options.get("spacing"))  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        settings.validate()


@pytest.mark.parametrize(
    "sampler, options, message",
    [
        ("euler", {"eta": 0.5}, "eta is for the tcd sampler"),
        ("lcm", {"eta": 0.5}, "eta is for the tcd sampler"),
        ("tcd", {"eta": 1.5}, "between 0 and 1; got 1.5"),
        ("euler", {"timesteps": (999, 499)}, "explicit timesteps apply to the lcm and tcd samplers, not euler"),
        ("tcd", {"timesteps": (999, 749, 499)}, "3 timesteps given for 2 steps"),
        ("lcm", {"timesteps": (499, 999)}, "must decrease strictly"),
        ("lcm", {"timesteps": (999, -1)}, "0 or more"),
        ("tcd", {"spacing": "trailing"}, "takes no timestep spacing .* or --timesteps"),
    ],
)
def test_the_fast_path_options_are_checked_against_the_sampler_they_belong_to(sampler, options, message):
    from instantid_edge.runtime.errors import ConfigError
    from instantid_edge.runtime.settings import GenerationSettings

    given = {"timesteps": options.get("timesteps"), "eta": options.get("eta")}
    with pytest.raises(ConfigError, match=message):
        sampling.make_schedule(sampler, SDXL, 2, options.get("spacing"), **given)
    settings = GenerationSettings("a portrait", sampler=sampler, steps=2, timestep_spacing=options.get("spacing"),
                                  **given)  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        settings.validate()


def test_explicit_timesteps_must_lie_on_the_schedulers_training_timesteps():
    from instantid_edge.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="below the scheduler's 1000 training timesteps"):
        sampling.make_schedule("lcm", SDXL, 2, timesteps=(1000, 500))
    with pytest.raises(ConfigError, match="at most 50, or give explicit timesteps"):
        sampling.make_schedule("tcd", SDXL, 51)
