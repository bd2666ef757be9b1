"""Run profiles: the sampling a package was exported for (the manifest's typed `profiles`), applied to settings.

`fast` and `quality` are written at export (export/profiles.py). A flag given on the command line always
wins over the profile; a package without a few-step distillation has no `fast` profile and says why.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import ConfigError
from .manifest import PROFILE_NAMES, Manifest, RunProfile
from .settings import GenerationSettings

# GenerationSettings' defaults are upstream InstantID's (infer.py: Euler, 30 steps, CFG 5, the full VAE)
_DEFAULTS = GenerationSettings(prompt="")
UPSTREAM = RunProfile(**{name: getattr(_DEFAULTS, name) for name in RunProfile.settings_fields()},
                      source="upstream InstantID defaults (infer.py)")  # fmt: skip
# packages exported before profiles existed: upstream's defaults, no fast path
LEGACY = {
    "quality": UPSTREAM,
    "fast": RunProfile(unavailable="this package was exported before run profiles existed; re-export it"),
}


def package_profiles(manifest: Manifest) -> dict[str, RunProfile]:
    return manifest.profiles if manifest.profiles is not None else LEGACY


def describe(profile: RunProfile) -> str:
    """One line: sampler, spacing, steps, guidance, eta, timesteps, decoder (or why it is unavailable)."""
    if profile.unavailable is not None:
        return "unavailable: " + profile.unavailable
    parts = [profile.sampler, *([profile.timestep_spacing] if profile.timestep_spacing else []),
             f"{profile.steps} steps", f"guidance {profile.guidance:g}"]  # fmt: skip
    if profile.eta is not None:
        parts.append(f"eta {profile.eta:g}")
    if profile.timesteps:
        parts.append("timesteps " + "/".join(str(t) for t in profile.timesteps))
    return ", ".join(parts) + f", {profile.decoder} decoder"


def apply_profile(
    settings: GenerationSettings, manifest: Manifest, name: str, explicit: set[str] = frozenset()
) -> GenerationSettings:
    """`settings` with the profile's fields, except those in `explicit` (given by the caller)."""
    if name not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}")
    profile = package_profiles(manifest)[name]
    if profile.unavailable is not None:
        raise ConfigError(f"--profile {name} is unavailable for {manifest.root}: {profile.unavailable}")
    values = {field: value for field, value in profile.settings().items() if field not in explicit}
    if "steps" in explicit and "timesteps" not in explicit:
        values["timesteps"] = None  # explicit timesteps come with their own count; a new count drops them
    if "timesteps" in explicit and settings.timesteps:
        values.pop("steps", None)  # and given timesteps set the count
    return replace(settings, **values)
