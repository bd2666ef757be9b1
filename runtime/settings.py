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
        return self

    @property
    def cfg(self) -> bool:
        return self.guidance > 1

    def to_dict(self) -> dict:
        return asdict(self)


def identitynet_active(step: int, num_steps: int, start: float, end: float) -> bool:
    """diffusers' `controlnet_keep`: on unless the step lies before `start` or ends after `end`."""
    return not (step / num_steps < start or (step + 1) / num_steps > end)


def time_ids(height: int, width: int) -> list[float]:
    """SDXL micro-conditioning: original size, crop top-left (0, 0), target size."""
    return [float(height), float(width), 0.0, 0.0, float(height), float(width)]
