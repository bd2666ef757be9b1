"""A job's generation settings: the client's fields over the server's run profile, a fresh seed, validated
against the runtime's ranges and the loaded package (its profiles and decoder graphs)."""

from __future__ import annotations

import secrets
from typing import Any

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.manifest import DECODER_GRAPHS, Manifest
from instantid_edge.runtime.profiles import apply_profile
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
    "decoder",
)


def package_decoders(manifest: Manifest) -> list[str]:
    """The keys of DECODER_GRAPHS whose graph this package has (the tiny one only when exported with it)."""
    return [name for name, graph in DECODER_GRAPHS.items() if graph in manifest.graphs]


def check_profile(manifest: Manifest, profile: str | None) -> None:
    """Refuse at start a --profile the package does not have (e.g. `fast` without a fused distillation), with the
    manifest's reason, rather than on every job."""
    if profile is not None:
        _settled(apply_profile(GenerationSettings(prompt=""), manifest, profile), manifest, "--profile " + profile)


def job_settings(fields: dict[str, Any], profile: str | None, manifest: Manifest) -> GenerationSettings:
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
        settings = apply_profile(settings, manifest, profile, set(fields))
    return _settled(settings, manifest, "decoder")


def _settled(settings: GenerationSettings, manifest: Manifest, asked_by: str) -> GenerationSettings:
    """Validated, and with a decoder this package has: refused here (422 for a client) rather than in the worker."""
    settings = settings.validate()
    have = package_decoders(manifest)
    if settings.decoder not in have:
        raise ConfigError(
            f"{asked_by}: this package has no {settings.decoder} decoder (it has: {', '.join(have)}); the tiny one "
            "comes with export --tiny-decoder"
        )
    return settings
