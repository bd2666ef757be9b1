"""The reference's samplers: diffusers' own schedulers, configured as the runtime's settings describe.

Each runtime sampler names the diffusers scheduler it follows step for step (runtime/sampling.py SAMPLERS;
tests/test_sampling.py checks them against recorded trajectories), and the reference runs that scheduler. The
noise stochastic steps draw comes from numpy, from the seed's step generator (runtime/noise.py image_rng: the
runtime's rule), instead of torch's generator.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import numpy as np
import torch

from ..runtime.sampling import sampler_for
from ..runtime.settings import GenerationSettings


def reference_scheduler(settings: GenerationSettings, config: dict):
    """(scheduler with its timesteps set, extra keyword arguments for its step())."""
    import diffusers

    sampler = sampler_for(settings.sampler, settings.timestep_spacing, settings.karras, settings.timesteps,
                          settings.eta, settings.steps)  # fmt: skip
    overrides = {"timestep_spacing": settings.timestep_spacing} if settings.timestep_spacing else {}
    if settings.karras:
        overrides["use_karras_sigmas"] = True
    scheduler = getattr(diffusers, sampler.diffusers).from_config({**config, **overrides})
    if settings.timesteps is not None:
        scheduler.set_timesteps(timesteps=list(settings.timesteps))
    else:
        scheduler.set_timesteps(settings.steps)
    step_options = {"eta": sampler.eta if settings.eta is None else settings.eta} if sampler.eta is not None else {}
    return scheduler, step_options


@contextlib.contextmanager
def numpy_step_noise(scheduler, rng: np.random.Generator) -> Iterator[None]:
    """Make the scheduler's stochastic steps draw numpy noise from `rng`, the image's step generator: what the
    runtime's samplers do."""
    module = sys.modules[type(scheduler).__module__]

    def numpy_noise(shape, generator=None, device=None, dtype=None, **_):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    original = getattr(module, "randn_tensor", None)
    if original is None:  # a deterministic scheduler draws nothing
        yield
        return
    module.randn_tensor = numpy_noise
    try:
        yield
    finally:
        module.randn_tensor = original
