"""diffusers' schedulers run on a fixed toy model: the golden trajectories the numpy samplers are checked against.

    python tests/golden_samplers.py   # needs the export extra (torch, diffusers); writes tests/data/sampler_golden.npz

For each sampler, step count, timestep spacing and Karras choice (CASES), and for the consistency samplers also
explicit timesteps and eta (OPTION_CASES), the file holds what diffusers' scheduler gives:
its timesteps, sigmas and initial sigma, and the latents after every step, starting from fixed unit noise, with
`toy_noise_prediction` as the model and the step noise of stochastic samplers taken, in order, from
`numpy.random.default_rng(STEP_NOISE_SEED)` (the stream the numpy samplers draw from). Also SDXL's
`alphas_cumprod`. tests/test_sampling.py checks the numpy samplers against the file where torch is absent, and
checks the file against diffusers where it is present, so the file cannot go stale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "data" / "sampler_golden.npz"
# The SDXL base scheduler config (stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json)
SDXL = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear",
        "use_karras_sigmas": False, "set_alpha_to_one": False, "clip_sample": False, "skip_prk_steps": True,
        "sample_max_value": 1.0, "trained_betas": None}  # fmt: skip
SHAPE = (1, 4, 4, 4)
START_SEED, STEP_NOISE_SEED = 0, 1
SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "lcm", "tcd")
CONSISTENCY = ("lcm", "tcd")  # no spacing (they pick from the timesteps they were distilled on), no Karras
# Karras sigmas exist for euler and dpmpp_2m only; one Karras step has no range to space. tcd: its default eta.
CASES = [(name, steps, spacing, karras) for name in SAMPLERS
         for steps in (1, 2, 4, 10, 30) for spacing in (None, "trailing") for karras in (False, True)
         if not (karras and name in ("euler_ancestral", *CONSISTENCY)) and not (name in CONSISTENCY and spacing)
         and not (karras and steps == 1)]  # fmt: skip


def trailing_timesteps(steps: int) -> tuple[int, ...]:
    """Explicit timesteps as the few-step releases give them: DMD2's README 999/749/499/249 for 4 steps, the
    trailing spacing Hyper-SD's 2/4/8-step LoRAs are sampled with (DDIM, timestep_spacing="trailing")."""
    return tuple(int(t) for t in np.arange(1000, 0, -1000 / steps).round()[:steps] - 1)


# (name, steps, explicit timesteps or None, eta or None): the fast path's options, for 1, 2, 4 and 8 steps
OPTION_CASES = [(name, steps, timesteps, eta) for steps in (1, 2, 4, 8)
                for name, timesteps, eta in (("lcm", trailing_timesteps(steps), None),
                                             *(("tcd", given, eta) for given in (None, trailing_timesteps(steps))
                                               for eta in (0.0, 0.3, 1.0)))]  # fmt: skip


def _sdxl_alphas_cumprod() -> np.ndarray:
    betas = np.linspace(SDXL["beta_start"] ** 0.5, SDXL["beta_end"] ** 0.5, 1000) ** 2
    return np.cumprod(1 - betas)


_ACP = _sdxl_alphas_cumprod()


def toy_noise_prediction(x: np.ndarray, t: float, step: int) -> np.ndarray:
    """A deterministic stand-in for the UNet: nonlinear in x and t, and like a real one predicting noise in
    proportion to the noise level, so latents stay O(1) over many steps."""
    noise_level = np.sqrt(1 - _ACP[int(np.clip(round(t), 0, 999))])
    return (0.9 * noise_level * x + 0.05 * np.tanh(x) + 0.02 * np.sin(t / 97.0) + 0.01 * step).astype(np.float32)


def start_noise() -> np.ndarray:
    return np.random.default_rng(START_SEED).standard_normal(SHAPE).astype(np.float32)


def case_key(name: str, steps: int, spacing: str | None, karras: bool) -> str:
    return f"{name}.{steps}.{spacing or 'config'}.{'karras' if karras else 'plain'}"


def option_key(name: str, steps: int, timesteps: tuple[int, ...] | None, eta: float | None) -> str:
    given = "-".join(map(str, timesteps)) if timesteps else "own"
    return f"{name}.{steps}.timesteps-{given}.eta-{'default' if eta is None else eta}"


def diffusers_scheduler(name: str, steps: int, spacing: str | None, karras: bool, timesteps=None):
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        LCMScheduler,
        TCDScheduler,
    )

    cls = {"euler": EulerDiscreteScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler,
           "dpmpp_2m": DPMSolverMultistepScheduler, "lcm": LCMScheduler, "tcd": TCDScheduler}[name]  # fmt: skip
    overrides = {"timestep_spacing": spacing} if spacing else {}
    if karras:
        overrides["use_karras_sigmas"] = True
    scheduler = cls.from_config({**SDXL, **overrides})
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=list(timesteps))
    else:
        scheduler.set_timesteps(steps)
    return scheduler


def diffusers_trajectory(scheduler, steps: int, **step_options) -> np.ndarray:
    """diffusers' loop (scale_model_input, model, step(**step_options)) from `start_noise()`; the latents after
    every step.

    Stochastic schedulers draw their step noise through diffusers' `randn_tensor`; it is swapped for the
    numpy stream for the duration, so both sides add the same noise."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral
    import diffusers.schedulers.scheduling_lcm as lcm_module
    import diffusers.schedulers.scheduling_tcd as tcd_module
    import torch

    stream = np.random.default_rng(STEP_NOISE_SEED)

    def given_noise(shape, generator=None, device=None, dtype=None, **_):
        draw = stream.standard_normal(tuple(shape), dtype=np.float32)
        return torch.from_numpy(draw).to(dtype or torch.float32)

    modules = (ancestral, lcm_module, tcd_module)
    saved = [module.randn_tensor for module in modules]
    for module in modules:
        module.randn_tensor = given_noise
    try:
        latents = torch.from_numpy(start_noise()) * scheduler.init_noise_sigma
        outputs = []
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            eps = torch.from_numpy(toy_noise_prediction(model_input.numpy(), float(t), i))
            result = scheduler.step(eps, t, latents, return_dict=False, **step_options)
            latents = result[0]
            last_lcm = isinstance(scheduler, lcm_module.LCMScheduler) and i == steps - 1
            outputs.append((result[1] if last_lcm else latents).numpy())  # LCM's last output is the denoised
        return np.stack(outputs).astype(np.float32)
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.randn_tensor = original


def golden_arrays() -> dict[str, np.ndarray]:
    from diffusers import EulerDiscreteScheduler

    arrays = {"alphas_cumprod": EulerDiscreteScheduler.from_config(SDXL).alphas_cumprod.numpy()}
    for case in CASES:
        name, steps, spacing, karras = case
        key = case_key(*case)
        scheduler = diffusers_scheduler(name, steps, spacing, karras)
        arrays[f"{key}.timesteps"] = scheduler.timesteps.numpy().astype(np.float32)
        sigmas = scheduler.sigmas.numpy() if name not in CONSISTENCY else np.zeros(0)  # they have none
        arrays[f"{key}.sigmas"] = sigmas.astype(np.float32)
        arrays[f"{key}.init_sigma"] = np.float32(scheduler.init_noise_sigma)
        arrays[f"{key}.outputs"] = diffusers_trajectory(scheduler, steps)
    for case in OPTION_CASES:
        name, steps, timesteps, eta = case
        key = option_key(*case)
        scheduler = diffusers_scheduler(name, steps, None, False, timesteps)
        arrays[f"{key}.timesteps"] = scheduler.timesteps.numpy().astype(np.float32)
        arrays[f"{key}.outputs"] = diffusers_trajectory(scheduler, steps, **({} if eta is None else {"eta": eta}))
    return arrays


def main() -> None:
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **golden_arrays())
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes, {len(CASES) + len(OPTION_CASES)} cases)")


if __name__ == "__main__":
    main()
