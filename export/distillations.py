"""The released few-step SDXL LoRAs: their files, on-disk facts, and how each is meant to be sampled.

Every release here is a kohya-format LoRA over the same 788 UNet layers (lora.DISTILLATION_TARGETS) at
rank 64. The byte sizes below are reproduced exactly by writing those 788 layers with these dtypes and
metadata (tests/test_fast_path_standin.py does it on the meta device), which is how the layouts were
confirmed without the files:
- SDXL-Lightning: ByteDance/SDXL-Lightning on the hub; 2/4/8-step files 393,854,592 bytes each (git-LFS
  pointers in public mirrors, e.g. huggingface.co/mashb1t/misc), fp16 tensors and fp16 alphas, no metadata.
  README: Euler with "trailing" timesteps, guidance_scale 0.
- Hyper-SD: ByteDance/Hyper-SD, commit 2900d27 "upload SDXL loras": 787,359,648 bytes each, fp32, metadata
  {"format": "pt"}. README: the 1-step LoRA with TCDScheduler, eta 1.0; the 2/4/8-step LoRAs with DDIM and
  trailing spacing, guidance 0 (TCD on the trailing timesteps with eta 0 is that DDIM, step for step:
  tests/test_sampling.py).
- LCM-LoRA SDXL: latent-consistency/lcm-lora-sdxl `pytorch_lora_weights.safetensors`; trained by diffusers'
  train_lcm_distill_lora_sdxl.py (LoraConfig r=64, PEFT's default lora_alpha 8) and saved in kohya keys: a
  public copy of 393,854,624 bytes is the Lightning layout plus {"format": "pt"}; the current hub file adds
  web-UI metadata (393,855,224 bytes, sha256 a764e685... in public copies). LCMScheduler, 4-8 steps.
- DMD2: tianweiy/DMD2 `dmd2_sdxl_4step_lora_fp16.safetensors`, written by main/sdxl/extract_lora_module.py
  (rank 64, alpha 8, fp16 alphas, lora_unet_ + module path). README: LCMScheduler, guidance 0, timesteps
  [999, 749, 499, 249].
The alpha of the Hyper-SD files is not published anywhere we could read; the loader takes every file's
own alpha, so only the stand-ins assume 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import ConfigError
from ..runtime.manifest import RunProfile
from ..runtime.sampling import trailing_timesteps

SDXL_TIMESTEPS = 1000  # SDXL's training timesteps (scheduler_config num_train_timesteps), which they index


@dataclass(frozen=True)
class Release:
    profile: str  # our name for it, e.g. lightning-4step
    family: str
    file_name: str  # as released
    dtype: str  # safetensors dtype of every tensor, alphas included
    metadata: dict | None  # the safetensors __metadata__ the release carries
    released_bytes: int | None  # size of the released file (full SDXL), when known
    run: RunProfile  # its sampler, spacing, steps, guidance, eta and timesteps (the decoder is the package's)
    sha256: dict[str, str] = field(default_factory=dict)  # known hashes -> where they were seen
    folder: str | None = None  # the hub repo folder, for generic file names
    rank: int = 64
    alpha: float = 8.0


def _run(sampler, steps, spacing=None, eta=None, timesteps=None, guidance=0.0) -> RunProfile:
    return RunProfile(sampler, spacing, steps, guidance, eta, tuple(timesteps) if timesteps else None)


_LIGHTNING = {2: "04fafc778385b24144498a8247498ae4fb7a69f702ea0566bdce2845a31fcc43",
              4: "bf56cf2657efb15e465d81402ed481d1e11c4677e4bcce1bc11fe71ad8506b79",
              8: "5aa30d94cdf7950a8b53a693682650ee061eddb128c5435a8f88defea73b2ac6"}  # fmt: skip
_HYPER = {1: "c912df184c5116792d2c604d26c6bc2aa916685f4a793755255cda1c43a3c78a",
          2: "69b25c0187ced301c3603c599c0bc509ac99b8ac34db89a2aecc3d5f77a35187",
          4: "12f81a27d00a751a40d68fd15597091896c5a90f3bd632fb6c475607cbdad76e",
          8: "ca689190e8c46038550384b5675488526cfe5a40d35f82b27acb75c100f417c1"}  # fmt: skip

RELEASES: tuple[Release, ...] = (
    *(Release(f"lightning-{n}step", "SDXL-Lightning", f"sdxl_lightning_{n}step_lora.safetensors", "F16", None,
              393_854_592, _run("euler", n, spacing="trailing"), {sha: "ByteDance/SDXL-Lightning"})
      for n, sha in _LIGHTNING.items()),
    *(Release(f"hyper-{n}step", "Hyper-SD", f"Hyper-SDXL-{n}step{'s' if n > 1 else ''}-lora.safetensors", "F32",
              {"format": "pt"}, 787_359_648,
              _run("tcd", n, eta=1.0) if n == 1 else _run("tcd", n, timesteps=trailing_timesteps(SDXL_TIMESTEPS, n),
                                                          eta=0.0),
              {sha: "ByteDance/Hyper-SD"})
      for n, sha in _HYPER.items()),
    Release("lcm-4step", "LCM-LoRA SDXL", "pytorch_lora_weights.safetensors", "F16", {"format": "pt"}, 393_854_624,
            _run("lcm", 4), {"a764e6859b6e04047cd761c08ff0cee96413a8e004c9f07707530cd776b19141": "public copies",
                             "c3dbf7eb26dd00ae6b6b95da69be9f1cb95a3b2c5bcf9be82323227a19b91329": "public copies"},
            folder="lcm-lora-sdxl"),
    Release("dmd2-4step", "DMD2", "dmd2_sdxl_4step_lora_fp16.safetensors", "F16", None, None,
            _run("lcm", 4, timesteps=(999, 749, 499, 249)),
            {"7de75d21cb3f04bc3e734424157b2c3b799b862069c8dd9f4ad76fe66c57ba7c": "tianweiy/DMD2 @552f138"}),
)  # fmt: skip
PROFILES = {release.profile: release for release in RELEASES}


@dataclass(frozen=True)
class Identified:
    release: Release
    how: str  # said in the manifest and on the console


def _by_name(path: Path) -> Release | None:
    """A released name; a generic one (pytorch_lora_weights.safetensors) only inside its repo's folder, or
    renamed after the repo (lcm-lora-sdxl.safetensors, lcm_lora_sdxl.safetensors) as tools often do."""
    for release in RELEASES:
        if release.folder is None and path.name == release.file_name:
            return release
        if release.folder is not None:
            in_folder = path.name == release.file_name and release.folder in path.parent.name
            renamed = path.stem.replace("_", "-") == release.folder and path.suffix == ".safetensors"
            if in_folder or renamed:
                return release
    return None


def identify(path: Path, sha256: str, asked: str | None = None) -> Identified | None:
    """Which release a LoRA file is: asked for (--profile), else by sha256, else by its released name."""
    if asked is not None:
        if asked not in PROFILES:
            raise ConfigError(f"unknown --profile {asked!r}; choose one of {', '.join(PROFILES)}")
        return Identified(PROFILES[asked], f"as asked (--profile {asked})")
    for release in RELEASES:
        if sha256 in release.sha256:
            return Identified(release, f"identified by sha256 as the released {release.file_name}")
    release = _by_name(path)
    if release is not None:
        return Identified(
            release,
            f"inferred from the file name {path.name} (its sha256 is not a known release: a re-save or a stand-in); "
            "pass --profile to state it",
        )
    return None
