"""What a model package can do, read from its manifest, and the one error for asking what it cannot.

Packages exported before issue 16 (schema version 1) run exactly as before; they lack the UNet's `face_mask`
input (face-region control), a symbolic context length (weighted and long prompts), the VAE encoder's
`latents_std` (img2img) and extra ControlNets. Asking for those on such a package is a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .manifest import Manifest

REEXPORT = "re-export the package with this version of instantid-edge (`instantid-edge export`)"


@dataclass(frozen=True)
class Capabilities:
    face_region: bool  # the UNet takes a face mask
    any_prompt_length: bool  # the UNet's context length is not fixed
    img2img: bool  # a VAE encoder giving the latent distribution's mean and standard deviation
    controlnets: tuple[str, ...]  # names of the extra ControlNets

    @classmethod
    def of(cls, manifest: Manifest) -> Capabilities:
        unet = manifest.graph("unet")
        context = next(spec for spec in unet.inputs if spec.name == "encoder_hidden_states").shape[1]
        encoder = manifest.graphs.get("vae_encoder")
        return cls(
            face_region=any(spec.name == "face_mask" for spec in unet.inputs),
            any_prompt_length=isinstance(context, str),
            img2img=encoder is not None and any(spec.name == "latents_std" for spec in encoder.outputs),
            controlnets=tuple(manifest.controlnets),
        )

    def require(self, face_region: bool, weighted_prompts: bool, img2img: bool, controls: tuple[str, ...]) -> None:
        """Refuse, in one message, what this package cannot do."""
        missing = [what for what, asked, able in (
            ("face-region control", face_region, self.face_region),
            ("weighted prompts", weighted_prompts, self.any_prompt_length),
            ("img2img", img2img, self.img2img),
        ) if asked and not able]  # fmt: skip
        if missing:
            raise ConfigError(f"this package was exported before {' and '.join(missing)} existed; {REEXPORT}")
        unknown = [name for name in controls if name not in self.controlnets]
        if unknown:
            have = ", ".join(self.controlnets) or "none"
            raise ConfigError(
                f"the package has no ControlNet called {', '.join(unknown)} (it has: {have}); add one with "
                "`instantid-edge export CHECKPOINT --controlnet NAME=DIR`"
            )
