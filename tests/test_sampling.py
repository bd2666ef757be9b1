"""Each numpy sampler against its diffusers scheduler: timesteps, sigmas and every step's output."""

from __future__ import annotations

import numpy as np
import pytest

from instantid_edge.runtime import sampling

SDXL = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear",
        "use_karras_sigmas": False, "set_alpha_to_one": False, "clip_sample": False, "skip_prk_steps": True,
        "sample_max_value": 1.0, "trained_betas": None}  # fmt: skip
ATOL, RTOL = 1e-5, 0.0  # float32 throughout, as in diffusers


_ACP = sampling.alphas_cumprod(SDXL)


def fake_eps(x, t, step):
    """A deterministic stand-in for the UNet: nonlinear in x and t, and like a denoiser, predicting noise in
    proportion to the noise level, so latents stay O(1) over many steps."""
    noise_level = np.sqrt(1 - _ACP[int(np.clip(round(t), 0, 999))])
    return (0.9 * noise_level * x + 0.05 * np.tanh(x) + 0.02 * np.sin(t / 97.0) + 0.01 * step).astype(np.float32)


def _diffusers_run(scheduler, x, steps, noises):
    """diffusers' loop: scale_model_input, model, step; noise for stochastic steps taken from `noises`."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral
    import diffusers.schedulers.scheduling_lcm as lcm_module
    import torch

    draws = iter(noises)

    def given_noise(shape, generator=None, device=None, dtype=None, **_):
        return torch.from_numpy(next(draws)).to(dtype or torch.float32).reshape(shape)

    saved = ancestral.randn_tensor, lcm_module.randn_tensor
    ancestral.randn_tensor = lcm_module.randn_tensor = given_noise
    try:
        latents = torch.from_numpy(x) * scheduler.init_noise_sigma
        outputs = []
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            eps = torch.from_numpy(fake_eps(model_input.numpy(), float(t), i))
            result = scheduler.step(eps, t, latents, return_dict=False)
            latents = result[0]
            outputs.append(
                (
                    result[1]
                    if isinstance(scheduler, lcm_module.LCMScheduler) and i == len(scheduler.timesteps) - 1
                    else latents
                ).numpy()
            )
        return outputs
    finally:
        ancestral.randn_tensor, lcm_module.randn_tensor = saved


def _diffusers_scheduler(name, config, steps, spacing, karras):
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        LCMScheduler,
    )

    cls = {"euler": EulerDiscreteScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler,
           "dpmpp_2m": DPMSolverMultistepScheduler, "lcm": LCMScheduler}[name]  # fmt: skip
    overrides = {"timestep_spacing": spacing} if spacing else {}
    if karras:
        overrides["use_karras_sigmas"] = True
    scheduler = cls.from_config({**config, **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


CASES = [(name, steps, spacing, karras) for name in ("euler", "euler_ancestral", "dpmpp_2m", "lcm")
         for steps in (1, 2, 4, 10, 30) for spacing in (None, "trailing") for karras in (False, True)
         if not (karras and name in ("euler_ancestral", "lcm")) and not (name == "lcm" and spacing)
         and not (karras and steps == 1)]  # fmt: skip


@pytest.mark.torch
@pytest.mark.parametrize("name, steps, spacing, karras", CASES)
def test_sampler_matches_diffusers_at_every_step(name, steps, spacing, karras):
    scheduler = _diffusers_scheduler(name, SDXL, steps, spacing, karras)
    schedule = sampling.make_schedule(name, SDXL, steps, spacing, karras)
    np.testing.assert_allclose(schedule.timesteps, scheduler.timesteps.numpy().astype(np.float32), rtol=0, atol=1e-3)
    if name != "lcm":
        np.testing.assert_allclose(schedule.sigmas, scheduler.sigmas.numpy(), rtol=1e-6, atol=1e-6)
    assert schedule.init_sigma == pytest.approx(float(scheduler.init_noise_sigma), rel=1e-6)

    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    # the sampler draws one noise array per step from its generator, in order; diffusers gets the same draws
    stream = np.random.default_rng(1)
    expected = _diffusers_run(
        scheduler, x, steps, [stream.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(steps)]
    )

    inputs = []  # what each step gave the model: step i+1's input is step i's output (scaled for euler)

    def recording_eps(model_input, t, step):
        inputs.append(model_input)
        return fake_eps(model_input, t, step)

    start = (x * np.float32(schedule.init_sigma)).astype(np.float32)
    final = sampling.SAMPLERS[name][0](recording_eps, start, schedule, np.random.default_rng(1))
    np.testing.assert_allclose(final, expected[-1], rtol=RTOL, atol=ATOL)
    for step in range(1, steps):
        scale = float((schedule.sigmas[step] ** 2 + 1) ** 0.5) if name in ("euler", "euler_ancestral") else 1.0
        np.testing.assert_allclose(inputs[step] * scale, expected[step - 1], rtol=RTOL, atol=ATOL * scale)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_trailing_spacing_gives_exactly_the_steps_asked_for(name):
    # diffusers' float arange returns 62 timesteps (the last -1) when asked for 61; we return 61
    schedule = sampling.make_schedule(name, SDXL, 61, "trailing")
    assert len(schedule.timesteps) == 61 and len(schedule.sigmas) == 62 and schedule.timesteps.min() >= 0


def test_alphas_cumprod_is_monotonic_and_matches_the_sdxl_endpoints():
    acp = sampling.alphas_cumprod(SDXL)
    assert acp.dtype == np.float32 and acp.shape == (1000,)
    assert np.all(np.diff(acp) < 0)
    assert acp[0] == pytest.approx(1 - 0.00085, rel=1e-6)


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
        sampling.SAMPLERS[name][0](fake_eps, np.ones((1, 4, 8, 8), np.float32), schedule, np.random.default_rng(0))
    assert (np.random.get_state()[1] == before).all()
