"""Schedules and samplers as small numpy functions: the denoising loop without torch.

A sampler takes a `NoisePredictor` `eps(model_input, t, step)` (the UNet's noise prediction for what diffusers
would feed it at that step), the starting latents, a `Schedule` and an explicit numpy Generator, and returns the
final latents. Each follows its diffusers scheduler step for step (tests/test_sampling.py compares every step
with recorded diffusers trajectories): `euler` (EulerDiscreteScheduler, the SDXL default), `euler_ancestral`,
`dpmpp_2m` (DPMSolverMultistep, dpmsolver++ order 2), `lcm` (LCMScheduler) and `tcd` (TCDScheduler).

Public surface: `SAMPLERS` (name -> `Sampler`: its function, its schedule, its diffusers scheduler, how it
noises an img2img start, and which options it takes: Karras sigmas, a timestep spacing, explicit timesteps, eta),
`sampler_for` (the one check of a sampler name and its options), `make_schedule`, `schedule_for` (from settings),
`sample`. A new sampler is one function plus one `Sampler` entry.

img2img (`sample(..., init=Img2ImgStart)`) runs only the schedule's last steps, as diffusers' img2img
pipelines do (`get_timesteps`: the last min(int(steps * strength), steps) of the schedule), starting from the
init image's latents noised to the first of those timesteps by the sampler's scheduler's own `add_noise`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .errors import ConfigError

# eps(model_input, t, step) -> the predicted noise (epsilon), not the denoised latents k-diffusion's "denoiser"
# returns
NoisePredictor = Callable[[np.ndarray, float, int], np.ndarray]
SPACINGS = ("leading", "trailing")


@dataclass(frozen=True)
class Schedule:
    timesteps: np.ndarray  # what the model is given at each step
    sigmas: np.ndarray  # one more than timesteps (ends at 0); unused by lcm
    init_sigma: float  # unit noise is scaled by this
    alphas_cumprod: np.ndarray  # float32 [num_train_timesteps]
    eta: float = 0.0  # tcd: the stochastic share of each step (TCD's gamma)

    def from_step(self, start: int) -> Schedule:
        """The schedule's steps from `start` on (img2img runs the last ones)."""
        return replace(self, timesteps=self.timesteps[start:], sigmas=self.sigmas[start:])


def noise_by_sigma(x0: np.ndarray, noise: np.ndarray, s: Schedule) -> np.ndarray:
    """EulerDiscreteScheduler.add_noise: x0 + noise * sigma at the first step."""
    return (x0 + noise * s.sigmas[0]).astype(np.float32)


def noise_by_sigma_vp(x0: np.ndarray, noise: np.ndarray, s: Schedule) -> np.ndarray:
    """DPMSolverMultistepScheduler.add_noise: alpha * x0 + sigma * alpha * noise, alpha = 1 / sqrt(sigma^2 + 1)."""
    alpha = np.float32(1 / (s.sigmas[0] ** 2 + 1) ** 0.5)
    return (alpha * x0 + np.float32(s.sigmas[0] * alpha) * noise).astype(np.float32)


def noise_by_alphas(x0: np.ndarray, noise: np.ndarray, s: Schedule) -> np.ndarray:
    """The DDPM family's add_noise (LCMScheduler): sqrt(acp) * x0 + sqrt(1 - acp) * noise at the first timestep."""
    acp = s.alphas_cumprod[int(s.timesteps[0])]
    return (np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise).astype(np.float32)


@dataclass(frozen=True)
class Img2ImgStart:
    """Where an img2img run starts: the init image's latents and the step the run begins at."""

    latents: np.ndarray  # [1, C, h, w]: the VAE's latents of the init image (scaled), sampled from its posterior
    start_step: int  # index into the full schedule; the run takes the steps from there on


def alphas_cumprod(config: dict) -> np.ndarray:
    """scaled_linear betas as diffusers computes them (torch float32 linspace, cumprod accumulated in double)."""
    if (
        config.get("beta_schedule", "scaled_linear") != "scaled_linear"
        or config.get("prediction_type", "epsilon") != "epsilon"
    ):
        raise ConfigError("only the SDXL noise schedule (scaled_linear betas, epsilon prediction) is supported")
    n = int(config["num_train_timesteps"])
    start, end = np.float32(config["beta_start"] ** 0.5), np.float32(config["beta_end"] ** 0.5)
    step = (end - start) / np.float32(n - 1)
    index = np.arange(n)
    # torch.linspace fills the first half from the start and the second half from the end
    roots = np.where(
        index < n // 2, start + step * index.astype(np.float32), end - step * (n - 1 - index).astype(np.float32)
    )
    betas = (roots.astype(np.float32) ** 2).astype(np.float32)
    return np.cumprod((1 - betas).astype(np.float64)).astype(np.float32)


def _karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timestep of each sigma by linear interpolation in log-sigma (diffusers' rule)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def trailing_timesteps(num_train_timesteps: int, steps: int) -> tuple[int, ...]:
    """`trailing` spacing (diffusers' rule, DDIM's too): from the last training timestep down in equal strides;
    999/749/499/249 for 4 of 1000."""
    n = num_train_timesteps
    # [:steps]: float steps make arange return steps + 1 values for some counts (61, 103, ...) in diffusers
    return tuple(int(t) - 1 for t in np.arange(n, 0, -n / steps).round()[:steps])


def euler_schedule(config: dict, steps: int, spacing: str | None = None, karras: bool = False) -> Schedule:
    """EulerDiscreteScheduler.set_timesteps (also EulerAncestral's, which has no Karras option)."""
    acp = alphas_cumprod(config)
    n = int(config["num_train_timesteps"])
    spacing = spacing or config.get("timestep_spacing", "leading")
    if spacing == "leading":
        timesteps = (np.arange(steps) * (n // steps)).round()[::-1].astype(np.float32) + config.get("steps_offset", 0)
    else:
        timesteps = np.array(trailing_timesteps(n, steps), np.float32)
    table = ((1 - acp) / acp) ** 0.5
    sigmas = np.interp(timesteps, np.arange(n), table)
    if karras:
        sigmas = _karras(sigmas[-1], sigmas[0], steps)
        timesteps = _sigma_to_t(sigmas, np.log(table))
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    top = float(sigmas.max())
    return Schedule(timesteps.astype(np.float32), sigmas, top if spacing == "trailing" else (top**2 + 1) ** 0.5, acp)


def dpm_schedule(config: dict, steps: int, spacing: str | None = None, karras: bool = False) -> Schedule:
    """DPMSolverMultistepScheduler.set_timesteps: integer timesteps, sigmas ending at zero, no input scaling."""
    acp = alphas_cumprod(config)
    n = int(config["num_train_timesteps"])
    spacing = spacing or config.get("timestep_spacing", "leading")
    if spacing == "leading":
        timesteps = (np.arange(steps + 1) * (n // (steps + 1))).round()[::-1][:-1] + config.get("steps_offset", 0)
    else:
        timesteps = np.array(trailing_timesteps(n, steps))
    table = ((1 - acp) / acp) ** 0.5
    if karras:
        sigmas = _karras(table[0], table[-1], steps)
        timesteps = _sigma_to_t(sigmas, np.log(table)).round()
    else:
        sigmas = np.interp(timesteps, np.arange(n), table)
    return Schedule(
        timesteps.astype(np.int64).astype(np.float32), np.concatenate([sigmas, [0.0]]).astype(np.float32), 1.0, acp
    )


def consistency_schedule(
    config: dict, steps: int, timesteps=None, eta: float = 0.0, original_steps: int = 50
) -> Schedule:
    """LCMScheduler/TCDScheduler.set_timesteps: `steps` evenly chosen from the 50 timesteps they were distilled
    on, or the explicit `timesteps` (set_timesteps(timesteps=...)), e.g. DMD2's 999/749/499/249."""
    n = int(config["num_train_timesteps"])
    if timesteps is not None:
        timesteps = np.asarray(timesteps)
        if timesteps.max() >= n:  # the rest of the rule: sampler_for
            raise ConfigError(
                f"timesteps must be below the scheduler's {n} training timesteps, got {[int(t) for t in timesteps]}"
            )
    else:
        origin = (np.arange(1, original_steps + 1) * (n // original_steps) - 1)[::-1]
        if steps > original_steps:
            raise ConfigError(
                f"{steps} steps asked for, but this sampler picks from the {original_steps} timesteps it was distilled "
                f"on: ask for at most {original_steps}, or give explicit timesteps"
            )
        timesteps = origin[np.floor(np.linspace(0, original_steps, steps, endpoint=False)).astype(np.int64)]
    zeros = np.zeros(steps + 1, np.float32)
    return Schedule(timesteps.astype(np.float32), zeros, 1.0, alphas_cumprod(config), float(eta))


def euler(eps: NoisePredictor, x: np.ndarray, s: Schedule, rng: np.random.Generator, callback=None) -> np.ndarray:
    for i, t in enumerate(s.timesteps):
        sigma, sigma_next = s.sigmas[i], s.sigmas[i + 1]
        noise = eps(x / np.float32((sigma**2 + 1) ** 0.5), float(t), i)
        denoised = x - sigma * noise
        x = (x + (x - denoised) / sigma * (sigma_next - sigma)).astype(np.float32)
        if callback:
            callback(i)
    return x


def euler_ancestral(
    eps: NoisePredictor, x: np.ndarray, s: Schedule, rng: np.random.Generator, callback=None
) -> np.ndarray:
    for i, t in enumerate(s.timesteps):
        sigma, sigma_next = s.sigmas[i], s.sigmas[i + 1]
        noise = eps(x / np.float32((sigma**2 + 1) ** 0.5), float(t), i)
        denoised = x - sigma * noise
        sigma_up = np.float32((sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = np.float32((sigma_next**2 - sigma_up**2) ** 0.5)
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        x = (x + rng.standard_normal(x.shape, dtype=np.float32) * sigma_up).astype(np.float32)
        if callback:
            callback(i)
    return x


def dpmpp_2m(eps: NoisePredictor, x: np.ndarray, s: Schedule, rng: np.random.Generator, callback=None) -> np.ndarray:
    """DPM-Solver++(2M), midpoint; the last step is first order (diffusers' final_sigmas_type "zero")."""

    def alpha_sigma(sigma):
        alpha = np.float32(1 / (sigma**2 + 1) ** 0.5)
        return alpha, np.float32(sigma * alpha)

    previous = None
    steps = len(s.timesteps)
    for i, t in enumerate(s.timesteps):
        alpha_s, sigma_s = alpha_sigma(s.sigmas[i])
        denoised = (x - sigma_s * eps(x, float(t), i)) / alpha_s
        if i == steps - 1:  # sigma_next = 0: the first-order update lands exactly on the prediction
            x = denoised
        else:
            alpha_t, sigma_t = alpha_sigma(s.sigmas[i + 1])
            h = np.float32(np.log(alpha_t) - np.log(sigma_t) - (np.log(alpha_s) - np.log(sigma_s)))
            step = alpha_t * np.float32(np.exp(-h) - 1.0)
            if previous is None:
                x = (sigma_t / sigma_s) * x - step * denoised
            else:
                alpha_p, sigma_p = alpha_sigma(s.sigmas[i - 1])
                r = np.float32((np.log(alpha_s) - np.log(sigma_s) - (np.log(alpha_p) - np.log(sigma_p))) / h)
                x = (
                    (sigma_t / sigma_s) * x
                    - step * denoised
                    - np.float32(0.5) * step * ((1 / r) * (denoised - previous))
                )
        previous = denoised
        x = x.astype(np.float32)
        if callback:
            callback(i)
    return x


def lcm(eps: NoisePredictor, x: np.ndarray, s: Schedule, rng: np.random.Generator, callback=None) -> np.ndarray:
    """Consistency steps: predict the clean latents, then re-noise them to the next timestep (not after the last)."""
    sigma_data, scaling = 0.5, 10.0
    for i, t in enumerate(s.timesteps):
        a = s.alphas_cumprod[int(t)]
        scaled = t * scaling
        c_skip, c_out = sigma_data**2 / (scaled**2 + sigma_data**2), scaled / (scaled**2 + sigma_data**2) ** 0.5
        x0 = (x - np.sqrt(1 - a) * eps(x, float(t), i)) / np.sqrt(a)
        x = (np.float32(c_out) * x0 + np.float32(c_skip) * x).astype(np.float32)
        if i < len(s.timesteps) - 1:
            a_next = s.alphas_cumprod[int(s.timesteps[i + 1])]
            x = (np.sqrt(a_next) * x + np.sqrt(1 - a_next) * rng.standard_normal(x.shape, dtype=np.float32)).astype(
                np.float32
            )
        if callback:
            callback(i)
    return x


def tcd(eps: NoisePredictor, x: np.ndarray, s: Schedule, rng: np.random.Generator, callback=None) -> np.ndarray:
    """Trajectory consistency: predict the clean latents, step to an earlier point s = floor((1 - eta) * t_next)
    of the trajectory, then re-noise from s to the next timestep (not after the last step, nor when eta = 0)."""
    last = len(s.timesteps) - 1
    for i, t in enumerate(s.timesteps):
        following = int(s.timesteps[i + 1]) if i < last else 0
        earlier = int(np.floor(np.float32(1 - s.eta) * np.float32(following)))  # float32, as TCDScheduler.step
        a_t, a_next, a_s = (s.alphas_cumprod[k] for k in (int(t), following, earlier))
        noise = eps(x, float(t), i)
        x0 = (x - np.sqrt(1 - a_t) * noise) / np.sqrt(a_t)
        x = (np.sqrt(a_s) * x0 + np.sqrt(1 - a_s) * noise).astype(np.float32)
        if s.eta > 0 and i < last:
            ratio = np.float32(a_next / a_s)
            fresh = rng.standard_normal(x.shape, dtype=np.float32)
            x = (np.sqrt(ratio) * x + np.sqrt(1 - ratio) * fresh).astype(np.float32)
        if callback:
            callback(i)
    return x


@dataclass(frozen=True)
class Sampler:
    name: str
    run: Callable[..., np.ndarray]  # (eps, latents, schedule, rng, callback) -> final latents
    schedule: Callable[..., Schedule]  # (config, steps[, spacing][, karras][, timesteps][, eta]) -> Schedule
    diffusers: str  # the diffusers scheduler class it follows step for step (the PyTorch reference runs it)
    add_noise: Callable[[np.ndarray, np.ndarray, Schedule], np.ndarray]  # img2img: (x0, unit noise, schedule)
    karras: bool = False  # takes Karras sigmas
    spacing: bool = False  # takes a timestep spacing (lcm and tcd pick from the timesteps they were distilled on)
    timesteps: bool = False  # takes explicit timesteps instead
    eta: float | None = None  # takes an eta, and its default (None: takes none)


SAMPLERS = {
    sampler.name: sampler
    for sampler in (
        Sampler("euler", euler, euler_schedule, "EulerDiscreteScheduler", noise_by_sigma, karras=True, spacing=True),
        Sampler(
            "euler_ancestral",
            euler_ancestral,
            euler_schedule,
            "EulerAncestralDiscreteScheduler",
            noise_by_sigma,
            spacing=True,
        ),  # fmt: skip
        Sampler(
            "dpmpp_2m",
            dpmpp_2m,
            dpm_schedule,
            "DPMSolverMultistepScheduler",
            noise_by_sigma_vp,
            karras=True,
            spacing=True,
        ),  # fmt: skip
        Sampler("lcm", lcm, consistency_schedule, "LCMScheduler", noise_by_alphas, timesteps=True),
        Sampler(
            "tcd", tcd, consistency_schedule, "TCDScheduler", noise_by_alphas, timesteps=True, eta=0.3
        ),  # TCDScheduler.step's eta  # fmt: skip
    )
}
SAMPLER_NAMES = tuple(SAMPLERS)


def sampler_for(
    name: str,
    spacing: str | None = None,
    karras: bool = False,
    timesteps: Sequence[int] | None = None,
    eta: float | None = None,
    steps: int | None = None,
) -> Sampler:
    """The sampler called `name`, refusing options it does not take (none is ever dropped silently) and option
    values it cannot use; explicit `timesteps` must be as many as `steps` when that is given."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    sampler = SAMPLERS[name]
    if karras and not sampler.karras:
        with_karras = " and ".join(n for n, s in SAMPLERS.items() if s.karras)
        raise ConfigError(f"Karras sigmas apply to the {with_karras} samplers, not {name}")
    if spacing is not None and spacing not in SPACINGS:
        raise ConfigError(f"timestep spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if spacing is not None and not sampler.spacing:
        hint = ", or --timesteps" if sampler.timesteps else ""
        raise ConfigError(
            f"the {name} sampler takes no timestep spacing (it uses the timesteps it was distilled on{hint})"
        )
    if timesteps is not None:
        _check_timesteps(name, sampler, list(timesteps), steps)
    if eta is not None and (sampler.eta is None or not 0 <= eta <= 1):
        with_eta = " and ".join(n for n, s in SAMPLERS.items() if s.eta is not None)
        raise ConfigError(f"eta is for the {with_eta} sampler, between 0 and 1; got {eta} with {name}")
    return sampler


def _check_timesteps(name: str, sampler: Sampler, timesteps: list[int], steps: int | None) -> None:
    if not sampler.timesteps:
        with_timesteps = " and ".join(n for n, s in SAMPLERS.items() if s.timesteps)
        raise ConfigError(f"explicit timesteps apply to the {with_timesteps} samplers, not {name}")
    if steps is not None and len(timesteps) != steps:
        raise ConfigError(f"{len(timesteps)} timesteps given for {steps} steps; give as many as the steps")
    decreasing = all(b < a for a, b in zip(timesteps, timesteps[1:], strict=False))
    if not timesteps or not decreasing or timesteps[-1] < 0:
        raise ConfigError(f"timesteps must decrease strictly and be 0 or more, got {timesteps}")


def make_schedule(
    name: str,
    config: dict,
    steps: int,
    spacing: str | None = None,
    karras: bool = False,
    timesteps: Sequence[int] | None = None,
    eta: float | None = None,
) -> Schedule:
    """`spacing` None: the scheduler config's (SDXL: leading); `timesteps` None: the sampler's own; `eta` None:
    the sampler's default."""
    sampler = sampler_for(name, spacing, karras, timesteps, eta, steps)
    options = {"spacing": spacing} if sampler.spacing else {}
    if sampler.karras:
        options["karras"] = karras
    if sampler.timesteps:
        options["timesteps"] = timesteps
    if sampler.eta is not None:
        options["eta"] = sampler.eta if eta is None else eta
    return sampler.schedule(config, steps, **options)


def schedule_for(settings, scheduler_config: dict) -> Schedule:
    """The schedule GenerationSettings ask for, on the package's scheduler config."""
    return make_schedule(
        settings.sampler,
        scheduler_config,
        settings.steps,
        settings.timestep_spacing,
        settings.karras,
        settings.timesteps,
        settings.eta,
    )


def sample(settings, scheduler_config: dict, eps: NoisePredictor, noise: np.ndarray, rng: np.random.Generator,
           callback=None, init: Img2ImgStart | None = None) -> np.ndarray:  # fmt: skip
    """Run `settings.sampler` from unit `noise` (img2img: from `init` noised with it); the step noise of
    stochastic samplers comes from `rng`."""
    schedule = schedule_for(settings, scheduler_config)
    sampler = SAMPLERS[settings.sampler]
    if init is None:
        start = (noise * np.float32(schedule.init_sigma)).astype(np.float32)
    else:
        schedule = schedule.from_step(init.start_step)
        start = sampler.add_noise(init.latents, noise, schedule)
    return sampler.run(eps, start, schedule, rng, callback)
