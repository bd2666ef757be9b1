"""Run profiles written into the manifest at export: how the package is meant to be sampled.

`quality` is upstream InstantID's infer.py (Euler, 30 steps, CFG 5, the full VAE) unless a few-step
distillation is fused, in which case it is that distillation's own sampling with the full VAE decoder (a
distilled UNet does not get better with more steps or CFG). `fast` is the distillation's sampling with the
tiny decoder when the package has one; without a distillation it says why it is unavailable. Which
distillation a LoRA is comes from --profile, else its sha256, else its released file name (distillations.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..runtime.errors import CheckpointError, ConfigError
from ..runtime.manifest import RunProfile, sha256_of
from ..runtime.profiles import UPSTREAM, describe
from .distillations import Identified, identify
from .lora import LoraSpec, distillation_layers
from .lora_format import read_lora

NO_DISTILLATION = (
    "no few-step distillation is fused into this package's UNet; re-export with --lora and one of the released "
    "files (sdxl_lightning_4step_lora.safetensors, Hyper-SDXL-1step-lora.safetensors, ...; see the README)"
)


@dataclass(frozen=True)
class FusedLora:
    spec: LoraSpec
    sha256: str
    identified: Identified | None

    def record(self) -> dict:
        record = {"file": self.spec.path.name, "sha256": self.sha256, "scale": self.spec.scale}
        if self.identified:
            release = self.identified.release
            record |= {"release": release.family, "profile": release.profile, "identified": self.identified.how}
        return record


def _check_complete(lora_path, identified: Identified, layers: list[str]) -> None:
    """A file taken for a known release must adapt exactly the release's layers: a partial copy is refused."""
    lora = read_lora(lora_path)
    have = {layer.path for layer in lora.layers if layer.component == "unet"}
    expected = {name.replace(".", "_") if lora.layout == "kohya" else name for name in layers}
    missing, extra = sorted(expected - have), sorted(have - expected)
    if missing or extra or lora.components() != {"unet"}:
        prefix = "lora_unet_" if lora.layout == "kohya" else "unet."
        first = [prefix + name for name in (missing[:3] or extra[:3])] or sorted(lora.components() - {"unet"})
        raise CheckpointError(
            f"{lora_path.name} was {identified.how.split(' (')[0]} but does not hold the release's layers: it adapts "
            f"{len(have)} UNet layers where the release adapts {len(expected)} (first differing: {', '.join(first)}). "
            "A truncated or different file; pass --profile to fuse it anyway"
        )


def identify_loras(loras: tuple[LoraSpec, ...], asked: str | None, unet_config: dict) -> list[FusedLora]:
    if asked is not None and not loras:
        raise ConfigError("--profile names the distillation a --lora file holds; give the --lora too")
    fused = []
    for spec in loras:
        sha = sha256_of(spec.path)
        fused.append(FusedLora(spec, sha, identify(spec.path, sha, asked if len(loras) == 1 else None)))
    if asked is not None and len(loras) > 1:
        raise ConfigError("--profile with several --lora files is ambiguous; fuse one distillation per package")
    distilled = [f for f in fused if f.identified]
    if len(distilled) > 1:
        names = ", ".join(f.spec.path.name for f in distilled)
        raise ConfigError(f"several few-step distillations given ({names}); a package takes one")
    if distilled and asked is None:
        _check_complete(distilled[0].spec.path, distilled[0].identified, _layers(unet_config))
    return fused


def _layers(unet_config: dict) -> list[str]:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return distillation_layers(UNet2DConditionModel.from_config(unet_config))


def package_profiles(fused: list[FusedLora], tiny_decoder: bool) -> dict[str, RunProfile]:
    distilled = next((f.identified for f in fused if f.identified), None)
    if distilled is None:
        return {"quality": UPSTREAM, "fast": RunProfile(unavailable=NO_DISTILLATION)}
    release = distilled.release
    source = f"{release.family} ({release.profile}), {distilled.how}"
    note = "; no tiny decoder in the package (export --tiny-decoder taesdxl_decoder.pth), so the full VAE"
    note = "" if tiny_decoder else note
    return {
        "quality": replace(release.run, decoder="full", source=f"{source}, with the full VAE decoder"),
        "fast": replace(release.run, decoder="tiny" if tiny_decoder else "full", source=source + note),
    }


def log_profiles(profiles: dict, log: Callable[[str], None]) -> None:
    for name, profile in profiles.items():
        log(f"profile {name}: {describe(profile)}")
