"""Generation options shared by `reference` and `generate`, and their conversion to settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from .errors import ConfigError
from .memory import MEMORY_MODES, MODES
from .sampling import SAMPLER_NAMES, SAMPLERS, SPACINGS
from .settings import GenerationSettings


def _timesteps(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(t) for t in value.split(","))
    except ValueError:
        raise click.BadParameter("give integers separated by commas, e.g. 999,749,499,249") from None


_OPTIONS = [
    click.option("--face", type=click.Path(path_type=Path), required=True, help="Photo of one person's face."),
    click.option("--prompt", required=True, help="What to generate."),
    click.option(
        "--style",
        help="A named style (`instantid-edge styles` lists them): wraps the prompt and adds its negative prompt.",
    ),
    click.option("--out", type=click.Path(path_type=Path), required=True, help="Output PNG path."),
    click.option("--negative-prompt", default=None, help="Default: none (zero negative embeddings, as SDXL)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--steps", type=int, default=30, show_default=True),
    click.option("--guidance", type=float, default=5.0, show_default=True, help="CFG runs only when > 1."),
    click.option("--ip-scale", type=float, default=0.8, show_default=True, help="Image-adapter strength."),
    click.option("--identitynet-scale", type=float, default=0.8, show_default=True, help="IdentityNet strength."),
    click.option(
        "--face-region/--no-face-region",
        default=None,
        help="Confine IdentityNet and the face attention to the face's box (InstantID's app: 'enhance non-face "
        "region', on there). Default: on where the package can (packages exported before it: off).",
    ),
    click.option(
        "--weighted-prompts",
        is_flag=True,
        help="Read (word:1.2), (word), [word] and \\( escapes, and prompts beyond 77 tokens, as InstantID's app.",
    ),
    click.option("--init-image", type=click.Path(path_type=Path), help="img2img: start from this photo."),
    click.option(
        "--control",
        "controls",
        multiple=True,
        metavar="NAME[=IMG][:S]",
        help="An extra ControlNet of the package with strength S (default 0.4), repeatable: canny takes edges of "
        "IMG (default: the pose or face photo), others (depth, pose) a prepared condition image IMG.",
    ),
    click.option("--strength", type=float, help="img2img: share of the steps run from the init image (default 0.8)."),
    click.option("--height", type=int, help="Output height (default: the face photo resized, long side 1280)."),
    click.option("--width", type=int, help="Output width (give both or neither)."),
    click.option(
        "--face-models",
        type=click.Path(path_type=Path),
        help="Folder holding an insightface pack's .onnx files (default ~/.insightface/models/antelopev2).",
    ),
    click.option("--latents", type=click.Path(path_type=Path), help="Initial unit noise (.npy) instead of --seed."),
    click.option("--save-latents", type=click.Path(path_type=Path), help="Write the final latents (.npy)."),
]


def _taking(option: str) -> str:
    """The samplers whose SAMPLERS entry takes `option`, for the help texts."""
    return ", ".join(name for name, sampler in SAMPLERS.items() if getattr(sampler, option) not in (False, None))


_ETA_DEFAULTS = ", ".join(f"{name} {sampler.eta:g}" for name, sampler in SAMPLERS.items() if sampler.eta is not None)
# How the denoising loop samples: shared so that `reference` is the oracle for every `generate` setting.
_SAMPLER_OPTIONS = [
    click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="euler", show_default=True),
    click.option("--karras", is_flag=True, help=f"Karras sigmas ({_taking('karras')})."),
    click.option(
        "--timestep-spacing",
        type=click.Choice(SPACINGS),
        help=f"{_taking('spacing')}; default: the package's scheduler (leading).",
    ),
    click.option(
        "--eta", type=float, help=f"{_taking('eta')}: stochastic share of each step, 0-1 (default: {_ETA_DEFAULTS})."
    ),
    click.option(
        "--timesteps",
        callback=_timesteps,
        metavar="T1,T2,...",
        help=f"{_taking('timesteps')}: explicit timesteps, e.g. 999,749,499,249 (their count sets --steps).",
    ),
]


def explicit_options(ctx: click.Context) -> set[str]:
    """The options given on the command line (they override a profile)."""
    from click.core import ParameterSource

    return {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}


def sampler_options(command):
    for option in reversed(_SAMPLER_OPTIONS):
        command = option(command)
    return functools.wraps(command)(command)


MODE_HELP = "; ".join(f"{mode.name}: {mode.summary}" for mode in MODES.values()) + "."


def memory_option(help_text: str):
    return click.option("--memory", type=click.Choice(MEMORY_MODES), default="auto", show_default=True, help=help_text)


def generation_options(command):
    for option in reversed(_OPTIONS):
        command = option(command)
    return functools.wraps(command)(command)


@dataclass(frozen=True)
class GenerationInputs:
    face: Path
    out: Path
    face_models: Path | None
    latents: Path | None
    save_latents: Path | None
    init_image: Path | None = None  # img2img
    control_images: tuple[tuple[str, Path], ...] = ()  # the extra ControlNets' images by name

    def load_latents(self) -> np.ndarray | None:
        if self.latents is None:
            return None
        try:
            return np.load(self.latents, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read --latents {self.latents} as a .npy array: {exc}") from exc

    def load_init_image(self) -> np.ndarray | None:
        """img2img's init photo (the face photo's rules: EXIF rotation, modes, size limits), or None."""
        from .images import load_rgb

        return None if self.init_image is None else load_rgb(self.init_image)

    def load_control_images(self) -> dict:
        from .images import load_rgb

        return {name: load_rgb(path) for name, path in self.control_images}


def settings_from_options(
    options: dict, explicit: set[str] = frozenset(), adjust=None
) -> tuple[GenerationSettings, GenerationInputs]:
    """Settings from the options; `adjust(settings)` (a run profile) comes before validation."""
    from .controlnets import parse_control

    controls = [parse_control(text) for text in options.pop("controls", ())]
    options["controls"] = tuple((name, strength) for name, _, strength in controls)
    names = ("face", "out", "face_models", "latents", "save_latents", "init_image")
    images = tuple((name, path) for name, path, _ in controls if path is not None)
    inputs = GenerationInputs(**{k: options.pop(k) for k in names}, control_images=images)
    if inputs.out.suffix.lower() != ".png":
        raise ConfigError(f"--out must end in .png (the output carries its provenance in PNG metadata): {inputs.out}")
    style = options.pop("style", None)
    if style is not None:  # as the app: the style wraps the prompt, its negative prompt comes first
        from .styles import load_styles

        options["prompt"], options["negative_prompt"] = (
            load_styles().get(style).apply(options["prompt"], options["negative_prompt"])
        )
    if options.get("timesteps") and "steps" not in explicit:
        options["steps"] = len(options["timesteps"])
    settings = GenerationSettings(**options)
    return (adjust(settings) if adjust else settings).validate(), inputs
