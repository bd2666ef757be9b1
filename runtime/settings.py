"""Generation settings: one frozen, validated record per call, shared by the reference and the runtime."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ConfigError
from .manifest import DECODER_GRAPHS
from .sampling import sampler_for

MIN_SIDE, MAX_SIDE = 64, 4096
MAX_IMAGES = 16


def check_size(height: int | None, width: int | None, neither: str) -> None:
    """The rule for output sizes, wherever one is asked for: both or neither (`neither` says what that means),
    each a multiple of 8 between MIN_SIDE and MAX_SIDE."""
    if (height is None) != (width is None):
        raise ConfigError(f"give both --height and --width, or neither ({neither})")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value % 8 or not MIN_SIDE <= value <= MAX_SIDE):
            raise ConfigError(
                f"{name} must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}, got {value} (multiples of 64 work "
                "best)"
            )


@dataclass(frozen=True)
class GenerationSettings:
    prompt: str
    negative_prompt: str | None = None  # None: zero negative embeddings (SDXL's force_zeros_for_empty_prompt)
    seed: int = 0
    steps: int = 30
    guidance: float = 5.0  # classifier-free guidance runs only when > 1, as in diffusers
    ip_scale: float = 0.8
    identitynet_scale: float = 0.8
    height: int | None = None  # None: the size of the resized face photo (long side 1280)
    width: int | None = None
    control_start: float = 0.0  # IdentityNet active window, as fractions of the schedule
    control_end: float = 1.0
    sampler: str = "euler"
    karras: bool = False  # Karras sigmas (samplers that take them: see sampling.SAMPLERS)
    timestep_spacing: str | None = None  # None: the package's scheduler config (SDXL: leading); not for lcm/tcd
    num_images: int = 1  # image i uses seed + i
    eta: float | None = None  # tcd: the stochastic share of each step (None: the sampler's default)
    timesteps: tuple[int, ...] | None = None  # lcm/tcd: explicit timesteps, e.g. DMD2's 999/749/499/249
    decoder: str = "full"  # a key of manifest.DECODER_GRAPHS: the VAE decoder, or TAESD-XL ("tiny")
    # InstantID's app (gradio_demo/app.py) and its full and img2img pipelines:
    face_region: bool | None = None  # IdentityNet and the face attention only in the face's box (the app's
    # "enhance non-face region", on there); None: on where the package can (packages exported before it cannot)
    weighted_prompts: bool = False  # (word:1.2), [word], escapes, prompts beyond one chunk: prompt_weights.py
    strength: float | None = None  # img2img: share of the schedule run from the init image (None: 0.8)
    controls: tuple[tuple[str, float], ...] = ()  # extra ControlNets of the package: (name, strength) each

    def validate(self) -> GenerationSettings:
        if not 1 <= self.steps <= 1000:
            raise ConfigError(f"steps must be between 1 and 1000, got {self.steps}")
        if not 0 <= self.guidance <= 50:
            raise ConfigError(f"guidance must be between 0 and 50, got {self.guidance}")
        for name in ("ip_scale", "identitynet_scale"):
            value = getattr(self, name)
            if not 0 <= value <= 5:
                raise ConfigError(f"{name.replace('_', '-')} must be between 0 and 5, got {value}")
        check_size(self.height, self.width, neither="the face photo's size is used")
        if not 0 <= self.control_start < self.control_end <= 1:
            raise ConfigError(
                f"the IdentityNet window must satisfy 0 <= start < end <= 1, got "
                f"{self.control_start}..{self.control_end}"
            )
        sampler_for(self.sampler, self.timestep_spacing, self.karras, self.timesteps, self.eta, self.steps)
        if self.decoder not in DECODER_GRAPHS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODER_GRAPHS)}, got {self.decoder!r}")
        if not 1 <= self.num_images <= MAX_IMAGES:
            raise ConfigError(f"num-images must be between 1 and {MAX_IMAGES}, got {self.num_images}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be between 0 and 2**63-1, got {self.seed}")
        if self.strength is not None:
            img2img_steps(self.steps, self.strength)
        check_controls(self.controls)
        return self

    @property
    def cfg(self) -> bool:
        return self.guidance > 1

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_STRENGTH = 0.8  # upstream's img2img pipeline's default


def img2img_steps(steps: int, strength: float) -> int:
    """How many of `steps` an img2img run takes: diffusers' `get_timesteps`, min(int(steps * strength), steps);
    the run starts at step `steps` minus that. Refuses a strength outside (0, 1] or one that leaves no step."""
    if not 0 < strength <= 1:
        raise ConfigError(f"strength must be in (0, 1] (1 re-noises the init image fully), got {strength}")
    run = min(int(steps * strength), steps)
    if run == 0:
        raise ConfigError(
            f"strength {strength} with {steps} steps leaves no step to run (int(steps * strength) = 0); "
            f"raise the strength to at least {1 / steps:.3g} or the steps"
        )
    return run


def check_controls(controls: tuple[tuple[str, float], ...]) -> None:
    """Names non-empty and used once, strengths in [0, 5] (the same range as the IdentityNet scale)."""
    names = [name for name, _ in controls]
    for name, strength in controls:
        if not name:
            raise ConfigError("a control needs the name of one of the package's ControlNets")
        if not 0 <= strength <= 5:
            raise ConfigError(f"the strength of control {name!r} must be between 0 and 5, got {strength}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"control(s) {', '.join(repeated)} given more than once; give each ControlNet once")


def identitynet_active(step: int, num_steps: int, start: float, end: float) -> bool:
    """diffusers' `controlnet_keep`: on unless the step lies before `start` or ends after `end`."""
    return not (step / num_steps < start or (step + 1) / num_steps > end)


def time_ids(height: int, width: int) -> list[float]:
    """SDXL micro-conditioning: original size, crop top-left (0, 0), target size."""
    return [float(height), float(width), 0.0, 0.0, float(height), float(width)]
