"""Find and load InstantID checkpoints in the layouts users download.

A checkpoint folder holds:
    ControlNetModel/   IdentityNet (config.json + diffusion_pytorch_model.safetensors), as on the InstantX hub
    ip-adapter.bin     the image-prompt adapter (torch pickle {"image_proj": ..., "ip_adapter": ...})
    sdxl/              the SDXL base as a diffusers folder, or instead one single-file SDXL .safetensors
The SDXL base can also live elsewhere (`base=`): a diffusers folder or a single .safetensors file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import CheckpointError

LAYOUT_HELP = (
    "A checkpoint folder holds ControlNetModel/ (IdentityNet), ip-adapter.bin, and the SDXL base as sdxl/ "
    "(a diffusers folder) or one single-file SDXL .safetensors"
)

_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
)
_TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "model.fp16.safetensors",
)
SDXL_PARTS = {
    "unet": ("config.json", _DIFFUSERS_WEIGHTS),
    "vae": ("config.json", _DIFFUSERS_WEIGHTS),
    "text_encoder": ("config.json", _TRANSFORMERS_WEIGHTS),
    "text_encoder_2": ("config.json", _TRANSFORMERS_WEIGHTS),
    "tokenizer": ("vocab.json", ("merges.txt",)),
    "tokenizer_2": ("vocab.json", ("merges.txt",)),
    "scheduler": ("scheduler_config.json", ("scheduler_config.json",)),
}


@dataclass(frozen=True)
class CheckpointPaths:
    base: Path  # diffusers SDXL folder or single-file .safetensors
    identitynet: Path
    ip_adapter: Path

    @property
    def base_is_single_file(self) -> bool:
        return self.base.is_file()

    @property
    def standin_marker(self) -> Path:
        return self.ip_adapter.parent / "STANDIN.json"


def _problems_in_part(folder: Path, part: str) -> list[str]:
    required, weights = SDXL_PARTS[part]
    sub = folder / part
    if not sub.is_dir():
        return [f"{part}/ is missing"]
    problems = [] if (sub / required).is_file() else [f"{part}/{required} is missing"]
    if not any((sub / name).is_file() for name in weights):
        problems.append(f"{part}/ has no {' or '.join(weights)}")
    return problems


def check_diffusers_sdxl(folder: Path) -> None:
    problems = [] if (folder / "model_index.json").is_file() else ["model_index.json is missing"]
    for part in SDXL_PARTS:
        problems += _problems_in_part(folder, part)
    if problems:
        raise CheckpointError(f"SDXL folder {folder} is incomplete: {'; '.join(problems)}")


def _find_base(root: Path) -> Path:
    if (root / "sdxl").is_dir():
        return root / "sdxl"
    singles = sorted(root.glob("*.safetensors"))
    if len(singles) == 1:
        return singles[0]
    if len(singles) > 1:
        raise CheckpointError(
            f"{root} holds several .safetensors files ({', '.join(p.name for p in singles)}); "
            "pass --base FILE to choose the SDXL checkpoint"
        )
    raise CheckpointError(f"{root} has no SDXL base (sdxl/ or a single-file .safetensors). {LAYOUT_HELP}")


def locate_checkpoint(root: str | Path, base: str | Path | None = None) -> CheckpointPaths:
    """Check that every part is present before anything heavy is loaded; name all that is missing."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder. {LAYOUT_HELP}")
    problems = []
    identitynet = root / "ControlNetModel"
    if not (identitynet / "config.json").is_file():
        problems.append("ControlNetModel/config.json is missing")
    if not any((identitynet / name).is_file() for name in _DIFFUSERS_WEIGHTS):
        problems.append("ControlNetModel/ has no diffusion_pytorch_model.safetensors")
    ip_adapter = root / "ip-adapter.bin"
    if not ip_adapter.is_file():
        problems.append("ip-adapter.bin is missing")
    if problems:
        raise CheckpointError(f"checkpoint {root} is incomplete: {'; '.join(problems)}. {LAYOUT_HELP}")
    base_path = Path(base) if base is not None else _find_base(root)
    if base_path.is_dir():
        check_diffusers_sdxl(base_path)
    elif not (base_path.is_file() and base_path.suffix == ".safetensors"):
        raise CheckpointError(f"SDXL base {base_path} is neither a diffusers folder nor a .safetensors file")
    return CheckpointPaths(base=base_path, identitynet=identitynet, ip_adapter=ip_adapter)


def weight_variant(folder: Path) -> str | None:
    """'fp16' when a component folder holds only the fp16 variant of its weights (as some downloads do)."""
    names = {p.name for p in folder.iterdir()}
    plain = {
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.bin",
        "model.safetensors",
        "pytorch_model.bin",
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors.index.json",
    }
    if names & plain:
        return None
    return "fp16" if any(".fp16." in name for name in names) else None
