"""A job's generation settings: the client's fields, the server's run profile, a fresh seed, validated."""

from __future__ import annotations

import secrets
from typing import Any

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.settings import GenerationSettings

# The GenerationSettings fields a client may set through the API (num_images is always 1: one portrait per job).
CLIENT_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "ip_scale",
    "identitynet_scale",
    "width",
    "height",
    "sampler",
)


def check_profile(profile: str | None) -> None:
    """Refuse --profile at start when this runtime has no run profiles."""
    if profile is not None:
        _profile_function()


def _profile_function():
    try:
        from instantid_edge.runtime.profiles import apply_profile
    except ImportError:
        raise ConfigError(
            "--profile needs run profiles (the fast path, issue 11), which this runtime does not have yet; "
            "leave --profile out"
        ) from None
    return apply_profile


def job_settings(fields: dict[str, Any], profile: str | None = None, manifest=None) -> GenerationSettings:
    """Settings for one job; the client's fields win over the profile. A missing seed is drawn at random (and
    reported in the job's status), so that two visitors with the same photo do not get the same picture."""
    unknown = set(fields) - set(CLIENT_FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    given = dict(fields)
    given.setdefault("seed", secrets.randbelow(2**31))
    try:
        settings = GenerationSettings(**given)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    if profile is not None:
        settings = _profile_function()(settings, manifest, profile, set(fields))
    return settings.validate()
