"""The memory policy (which graphs stay open when, CFG in one call or two, the VAE decode whole or tiled), the
physical-memory query, the process's memory, and handing freed memory back.

    MEMORY_MODES                       what --memory accepts: auto, then the modes, fastest first
    MODES                              name -> Mode: what each mode closes after each stage, and how it runs
    MemoryPolicy.choose(mode, peaks)   the policy for a mode; "auto" takes the fastest mode whose predicted peak
                                       (memory_estimate.py) fits the budget
    policy.mode                        normal, low, lean or minimal
    policy.closes_after(stage)         the graphs to close once `stage` is done
    policy.close(stage, package)       close them (nothing in normal mode)
    opening_order(names, sizes)        the order graphs opened one after another open in: the largest first
    physical_memory()                  bytes of RAM, or None where the system does not say
    process_memory()                   this process's RSS now (anonymous and file-backed) and its peak, in bytes
    release_memory()                   collect garbage and return freed heap pages to the system
    drop_mapped_pages(path)            evict this process's read-only mapped pages of a file (they re-read on use)
    unwritten_maps(path)               its private writable maps of a file not written yet (droppable as well)

Stages, in the order a run passes them: "conditioning" (text encoders, image adapter and img2img's VAE encoder
done), "identitynet" and "unet" (after each call, every step; extra ControlNets follow IdentityNet),
"denoising" (the sampler loop done), "decoding" (the decoder done).
No mode changes the latents beyond float rounding (tests/test_memory_modes.py); the tiled decode changes pixels
by what runtime/decode.py states.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ConfigError
from .manifest import DECODER_GRAPHS

STAGES = ("conditioning", "identitynet", "unet", "denoising", "decoding")
_TEXT_AND_IMAGE = ("text_encoder", "text_encoder_2", "image_proj", "vae_encoder")  # vae_encoder: img2img
_DECODERS = tuple(DECODER_GRAPHS.values())  # whichever decoded
_LOW = {"conditioning": _TEXT_AND_IMAGE, "denoising": ("identitynet", "unet"), "decoding": _DECODERS}
_ONE_DENOISER = {**_LOW, "identitynet": ("identitynet",), "unet": ("unet",)}
DECODE_TILE = 64  # latents per tile side in the tiled decode (512 pixels with SDXL's VAE)


@dataclass(frozen=True)
class Mode:
    name: str
    closes_after: Mapping[str, tuple[str, ...]]
    cfg_split: bool  # CFG as two batch-1 calls of IdentityNet and the UNet (half their activations)
    decode_tile: int | None  # the full VAE decodes tiles of this many latents a side (None: the whole image)
    summary: str
    # ONNX Runtime plans each call's activations into one block (its memory pattern): about twice the
    # liveness peak, for ~9% less time per call on the full UNet (bench/RESULTS.md); off in the lean modes
    planned_activations: bool = True
    # ONNX Runtime reads the weights it does not prepack (int4's MatMulNBits, for one) in place from the mapped
    # data file; dropping those pages while a call runs (Levers.ort_drop_mapped) took the full int4 package's lean
    # peak at 768 from 4.22 to 3.56 GiB in the same time (bench/RESULTS.md). Off where memory is not the limit: a
    # dropped page is read again, from the page cache or, under pressure, from disk
    drops_mapped_weights: bool = False
    # the denoisers open (OpenVINO: compile or load their blobs) together, in the background while the text
    # encoders run: a shorter start, with every opening transient at once on top of the conditioning graphs
    opens_early: bool = False


# Fastest first: auto takes the first that fits. low closes each graph once its stage is done, so the peak is
# the two denoiser graphs; lean also halves the denoisers' and the VAE's activations, twice; minimal keeps only one
# denoiser graph open at a time, reopening both every step (slow: for machines that cannot hold the pair).
MODES = {mode.name: mode for mode in (
    Mode("normal", {}, False, None, "every graph stays open; the denoisers open while the text is encoded",
         opens_early=True),
    Mode("low", _LOW, False, None, "each graph closes once its stage is done (reopened for the next image)"),
    Mode("lean", _LOW, True, DECODE_TILE, "low, with CFG as two batch-1 calls, the VAE decoded in tiles, "
         "no planned activation blocks and weights read in place not kept", planned_activations=False,
         drops_mapped_weights=True),
    Mode("minimal", _ONE_DENOISER, True, DECODE_TILE,
         "lean, with one denoiser graph open at a time: both reopen every step (slow)", planned_activations=False,
         drops_mapped_weights=True),
)}  # fmt: skip
MEMORY_MODES = ("auto", *MODES)


class _Releases(Protocol):
    def release(self, *names: str) -> None: ...


def check_mode(mode: str) -> str:
    if mode not in MEMORY_MODES:
        raise ConfigError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class MemoryPolicy:
    mode: str  # a key of MODES
    estimate: object | None = field(default=None, compare=False)  # memory_estimate.MemoryPlan: the prediction

    def __post_init__(self):
        if self.mode not in MODES:
            check_mode(self.mode)
            raise ConfigError(f"memory mode {self.mode!r} is decided per run; give one of {', '.join(MODES)}")

    @classmethod
    def choose(cls, mode: str, peaks: Mapping[str, int] | None = None, budget: int | None = None) -> MemoryPolicy:
        """The policy for `mode`; "auto" takes the fastest mode whose predicted peak (`peaks`, bytes per mode)
        is within `budget` bytes, else the leanest; without a prediction or budget, "low"."""
        check_mode(mode)
        if mode != "auto":
            return cls(mode)
        if not peaks or budget is None:
            return cls("low")
        return cls(next((name for name in MODES if name in peaks and peaks[name] <= budget), list(MODES)[-1]))

    @property
    def cfg_split(self) -> bool:
        return MODES[self.mode].cfg_split

    @property
    def decode_tile(self) -> int | None:
        return MODES[self.mode].decode_tile

    @property
    def reopens_denoisers(self) -> bool:
        """The denoiser graphs close after each call (minimal), so opening them is part of every step."""
        return bool(self.closes_after("unet") or self.closes_after("identitynet"))

    @property
    def opens_early(self) -> bool:
        return MODES[self.mode].opens_early

    @property
    def planned_activations(self) -> bool:
        return MODES[self.mode].planned_activations

    @property
    def drops_mapped_weights(self) -> bool:
        return MODES[self.mode].drops_mapped_weights

    def closes_after(self, stage: str) -> tuple[str, ...]:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return MODES[self.mode].closes_after.get(stage, ())

    def close(self, stage: str, package: _Releases, controlnets: tuple[str, ...] = ()) -> None:
        """Close the sessions this policy frees after `stage`; they reopen on next use. `controlnets` (a run's
        extra ControlNet graphs) follow IdentityNet's rule: closed whenever it is."""
        names = self.closes_after(stage)
        if "identitynet" in names:
            names = (*names, *controlnets)
        if names:
            package.release(*names)

    def to_dict(self) -> dict:
        data = {"mode": self.mode}
        if self.estimate is not None:
            data["prediction"] = self.estimate.to_dict()
        return data


def opening_order(names: tuple[str, ...], sizes: Mapping[str, int]) -> tuple[str, ...]:
    """The order to open, one after another, graphs that stay open together: largest first, so the smaller one's opening
    transient (OpenVINO maps the whole IR while it compiles a copy) comes on top of the larger one's copy alone,
    not the larger one's transient on top of the smaller one's copy."""
    return tuple(sorted(names, key=lambda name: -sizes.get(name, 0)))


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def process_memory() -> dict[str, int]:
    """This process's memory in bytes: rss, anon (heap, arenas, copied weights), file (memory-mapped files) and
    peak (the kernel's high-water mark of rss); where /proc is missing, only the peak."""
    names = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    values = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in names:
                values[names[key]] = int(value.split()[0]) * 1024
    if "peak" not in values:  # ru_maxrss: KiB on Linux
        values["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return values


def release_memory() -> None:
    """Free what a finished phase held, and hand freed heap pages back to the system.

    glibc keeps freed heap pages (3.3 GiB after exporting the full IdentityNet, 8 GiB after the UNet);
    malloc_trim returns them, so the next phase does not stack on top.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_MADV_DONTNEED = 4  # Linux


def drop_mapped_pages(path: str | os.PathLike, unwritten: Collection[tuple[int, int]] = ()) -> int:
    """Drop this process's resident pages of its read-only memory maps of `path`; returns the bytes of mapping
    covered. OpenVINO keeps an IR's weights file mapped after compiling it, though the compiled model holds
    its own copy and never reads the mapped pages again: 2.5 GiB of the full int8 UNet's RSS once compiled
    (bench/RESULTS.md, "OpenVINO: the mapped weights dropped"). Read-only private maps of an unchanged file are safe
    to drop: a page read again comes back from the file. Where /proc or madvise is missing, nothing is done.

    `unwritten`: (start, end) of writable maps of `path` to drop as well (unwritten_maps).
    """
    target = os.path.realpath(path)
    covered = 0
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for start, end, writable, _, _ in _mappings_of(target):
            droppable = not writable or (start, end) in unwritten
            if droppable and libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
                covered += end - start
    return covered


def unwritten_maps(path: str | os.PathLike) -> frozenset[tuple[int, int]]:
    """(start, end) of this process's private writable maps of `path` none of whose pages was written yet.

    ONNX Runtime maps each external weight so and reads some in place at every call (int4's MatMulNBits); it
    writes none of them once the session is made, so the maps found unwritten then can be dropped during its calls
    for the session's life. /proc/self/smaps, which tells written pages, takes ~0.1 s to read beside the full
    UNet's 2,700 maps: read once per session, not at every drop. Not for a library that writes its maps later
    (OpenVINO does, while it compiles): a drop would lose the write.
    """
    with contextlib.suppress(OSError):
        maps = _mappings_of(os.path.realpath(path), smaps=True)
        return frozenset((start, end) for start, end, writable, private, anonymous in maps
                         if writable and private and anonymous == 0)  # fmt: skip
    return frozenset()


def _mappings_of(target: str, smaps: bool = False) -> list[tuple[int, int, bool, bool, int | None]]:
    """(start, end, writable, private, anonymous bytes) of each of this process's maps of the file `target`;
    anonymous (written) bytes from /proc/self/smaps where `smaps`, else None from the cheaper /proc/self/maps."""
    found: list[list] = []
    current = None
    with open("/proc/self/smaps" if smaps else "/proc/self/maps") as listing:
        for line in listing:
            fields = line.split(maxsplit=5)
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's line (maps) or header line (smaps)
                current = None
                if len(fields) == 6 and fields[5].rstrip("\n") == target:
                    start, end = (int(value, 16) for value in fields[0].split("-"))
                    current = [start, end, "w" in fields[1], fields[1].endswith("p"), None]
                    found.append(current)
            elif current is not None and fields[0] == "Anonymous:":
                current[4] = int(fields[1]) * 1024
    return [tuple(mapping) for mapping in found]


@contextlib.contextmanager
def dropping_mapped_pages(path: str | os.PathLike, every: float = 0.25, unwritten: Collection[tuple[int, int]] = ()):
    """Drop this process's mapped pages of `path` every `every` seconds while the block runs, and once after
    (`unwritten`: drop_mapped_pages).

    OpenVINO maps the whole IR while compiling it and copies each weight into its own layout; the pages it has
    read stay resident until the compile ends, on top of the copy it has made: the full-size UNet's compile
    peaked at its 4.15 GiB copy plus 3.4 GiB of mapped pages (bench/RESULTS.md, "OpenVINO: convolutions'
    weights stay float"). A page read again after a drop comes back from the file (drop_mapped_pages).
    """
    done = threading.Event()

    def drop() -> None:
        while not done.wait(every):
            drop_mapped_pages(path, unwritten)

    worker = threading.Thread(target=drop, name="drop-mapped", daemon=True)
    worker.start()
    try:
        yield
    finally:
        done.set()
        worker.join()
        drop_mapped_pages(path, unwritten)
