"""The memory policy (which graphs stay open when), the physical-memory query, and handing freed memory back.

    MEMORY_MODES                       what --memory accepts: auto, normal, low, minimal
    MemoryPolicy.choose(mode, sizes)   the policy for a mode; "auto" decides from the graphs' weight bytes
    policy.mode                        normal, low or minimal
    policy.closes_after(stage)         the graphs to close once `stage` is done
    policy.close(stage, package)       close them (nothing in normal mode)
    physical_memory()                  bytes of RAM, or None where the system does not say
    release_memory()                   collect garbage and return freed heap pages to the system

Stages, in the order a run passes them: "conditioning" (text encoders, image adapter and img2img's VAE encoder
done), "identitynet" and "unet" (after each call, every step; extra ControlNets follow IdentityNet),
"denoising" (the sampler loop done), "decoding" (the decoder done).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError
from .manifest import DECODER_GRAPHS

MEMORY_MODES = ("auto", "normal", "low", "minimal")
_TEXT_AND_IMAGE = ("text_encoder", "text_encoder_2", "image_proj", "vae_encoder")  # vae_encoder: img2img
_DECODERS = tuple(DECODER_GRAPHS.values())  # whichever decoded
_LOW = {"conditioning": _TEXT_AND_IMAGE, "denoising": ("identitynet", "unet"), "decoding": _DECODERS}
# normal keeps every graph open; low closes each once its stage is done, so the peak is the two denoiser graphs;
# minimal also keeps only one of those two open at a time, reopening them every step (slow, for machines that
# cannot hold both, such as the full-size fp32 pair on 24 GiB)
_CLOSES_AFTER = {"normal": {}, "low": _LOW, "minimal": {**_LOW, "identitynet": ("identitynet",), "unet": ("unet",)}}
STAGES = ("conditioning", "identitynet", "unet", "denoising", "decoding")
# Loaded weights take about their file size (more while a backend repacks them); activations, the other graphs
# and the process come on top: beyond this share of RAM, auto holds fewer graphs at once.
_AUTO_SHARE = 0.45


class _Releases(Protocol):
    def release(self, *names: str) -> None: ...


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class MemoryPolicy:
    mode: str  # normal, low or minimal

    @classmethod
    def choose(cls, mode: str, graph_bytes: Mapping[str, int], physical: int | None = None) -> MemoryPolicy:
        """The policy for `mode`; "auto" compares the graphs' weight bytes (in the format being run) with RAM."""
        if mode not in MEMORY_MODES:
            raise ConfigError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
        if mode != "auto":
            return cls(mode)
        physical = physical or physical_memory()
        if physical is None:
            return cls("low")
        if graph_bytes.get("unet", 0) + graph_bytes.get("identitynet", 0) > _AUTO_SHARE * physical:
            return cls("minimal")
        return cls("low" if sum(graph_bytes.values()) > _AUTO_SHARE * physical else "normal")

    def closes_after(self, stage: str) -> tuple[str, ...]:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return _CLOSES_AFTER[self.mode].get(stage, ())

    def close(self, stage: str, package: _Releases, controlnets: tuple[str, ...] = ()) -> None:
        """Close the sessions this policy frees after `stage`; they reopen on next use. `controlnets` (a run's
        extra ControlNet graphs) follow IdentityNet's rule: closed whenever it is."""
        names = self.closes_after(stage)
        if "identitynet" in names:
            names = (*names, *controlnets)
        if names:
            package.release(*names)


def release_memory() -> None:
    """Free what a finished phase held, and hand freed heap pages back to the system.

    glibc keeps freed heap pages (3.3 GiB after exporting the full IdentityNet, 8 GiB after the UNet);
    malloc_trim returns them, so the next phase does not stack on top.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
