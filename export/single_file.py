"""Single-file SDXL checkpoints: the original Stability (SGM) layout in one .safetensors.

Keys: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `conditioner.embedders.0.transformer.*`
(CLIP-L, Hugging Face names), `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG: fused q/k/v, text
projection applied as x @ P). Loading converts one component at a time (UNet and VAE with diffusers' own
converters), so memory holds one component twice at most. A single file carries no configs and no
tokenizers: configs come from the SDXL architecture this project carries (or, for stand-ins, from the
architecture stored in the file's metadata), tokenizers from tokenizer/ and tokenizer_2/ folders beside the file
(else the shared assets).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..runtime.errors import CheckpointError
from .architecture import SDXL_SCHEDULER, architecture
from .safetensors_stream import write_safetensors

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L, BIG_G = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
METADATA_KEY = "instantid_edge_architecture"
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_BIG_G_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                "self_attn.out_proj": "attn.out_proj"}  # fmt: skip


# --- diffusers -> SGM names (to write stand-ins as single files) -----------------------------------------


def unet_key(key: str, config: dict) -> str:
    per_block = config["layers_per_block"] + 1
    rules = [
        (r"conv_in\.(.*)", lambda m: f"input_blocks.0.0.{m[1]}"),
        (r"time_embedding\.linear_(\d)\.(.*)", lambda m: f"time_embed.{2 * int(m[1]) - 2}.{m[2]}"),
        (r"add_embedding\.linear_(\d)\.(.*)", lambda m: f"label_emb.0.{2 * int(m[1]) - 2}.{m[2]}"),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)",
         lambda m: f"input_blocks.{int(m[1]) * per_block + int(m[2]) + 1}.0.{_RESNET[m[3]]}.{m[4]}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)",
         lambda m: f"input_blocks.{int(m[1]) * per_block + int(m[2]) + 1}.1.{m[3]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)",
         lambda m: f"input_blocks.{(int(m[1]) + 1) * per_block}.0.op.{m[2]}"),
        (r"mid_block\.resnets\.(\d)\.(\w+)\.(.*)", lambda m: f"middle_block.{2 * int(m[1])}.{_RESNET[m[2]]}.{m[3]}"),
        (r"mid_block\.attentions\.0\.(.*)", lambda m: f"middle_block.1.{m[1]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * per_block + int(m[2])}.0.{_RESNET[m[3]]}.{m[4]}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * per_block + int(m[2])}.1.{m[3]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * per_block + per_block - 1}."
                   f"{2 if config['up_block_types'][int(m[1])].startswith('CrossAttn') else 1}.conv.{m[2]}"),
        (r"conv_norm_out\.(.*)", lambda m: f"out.0.{m[1]}"),
        (r"conv_out\.(.*)", lambda m: f"out.2.{m[1]}"),
    ]  # fmt: skip
    for pattern, replace in rules:
        if match := re.fullmatch(pattern, key):
            return UNET + replace(match)
    raise KeyError(f"no SGM name for UNet tensor {key}")


def vae_key(key: str, config: dict) -> str:
    blocks = len(config["block_out_channels"])

    def resnet(rest):
        return rest.replace("conv_shortcut", "nin_shortcut")

    def attention(rest):
        name, param = rest.rsplit(".", 1)
        return f"{_VAE_ATTENTION[name]}.{param}"

    rules = [
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)",
         lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", lambda m: f"{m[1]}.mid.attn_1.{attention(m[2])}"),
        (r"(encoder|decoder)\.conv_norm_out\.(.*)", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", lambda m: f"encoder.down.{m[1]}.downsample.{m[2]}"),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)",
         lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample.{m[2]}"),
        (r"(.*)", lambda m: m[1]),  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
    ]  # fmt: skip
    for pattern, replace in rules:
        if match := re.fullmatch(pattern, key):
            return VAE + replace(match)
    raise KeyError(key)


def big_g_keys(keys: list[str]) -> dict[str, list[str]]:
    """SGM name -> the diffusers tensors it is made of (q, k, v fuse into one in_proj)."""
    mapping = {}
    for key in keys:
        if key == "text_projection.weight":
            mapping[BIG_G + "text_projection"] = [key]
        elif key == "text_model.embeddings.token_embedding.weight":
            mapping[BIG_G + "token_embedding.weight"] = [key]
        elif key == "text_model.embeddings.position_embedding.weight":
            mapping[BIG_G + "positional_embedding"] = [key]
        elif key.startswith("text_model.final_layer_norm."):
            mapping[BIG_G + "ln_final." + key.rsplit(".", 1)[1]] = [key]
        elif match := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            target = f"{BIG_G}transformer.resblocks.{match[1]}.attn.in_proj_{match[3]}"
            mapping.setdefault(target, []).append(key)
        elif match := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", key):
            mapping[f"{BIG_G}transformer.resblocks.{match[1]}.{_BIG_G_LAYER[match[2]]}.{match[3]}"] = [key]
        else:
            raise KeyError(f"no OpenCLIP name for text_encoder_2 tensor {key}")
    for parts in mapping.values():
        parts.sort(key=lambda k: "qkv".find(k.rsplit("_proj", 1)[0][-1]) if "_proj." in k else 0)
    return mapping


def write_single_file(sdxl_folder: Path, out: Path, preset: str, embedding_dim: int, dtype: torch.dtype) -> int:
    """Rewrite a diffusers SDXL folder (unet, vae, both text encoders) as one SGM-layout .safetensors."""
    from safetensors import safe_open

    arch = architecture(preset, embedding_dim)
    sources = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
               "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}  # fmt: skip
    handles = {part: safe_open(sdxl_folder / part / name, "pt") for part, name in sources.items()}
    keys = {part: list(handle.keys()) for part, handle in handles.items()}  # safe_open handles are not dicts
    plan: dict[str, tuple[str, list[str]]] = {}  # SGM name -> (component, diffusers tensors)
    for key in keys["unet"]:
        plan[unet_key(key, arch.unet)] = ("unet", [key])
    for key in keys["vae"]:
        plan[vae_key(key, arch.vae)] = ("vae", [key])
    for key in keys["text_encoder"]:
        plan[CLIP_L + key] = ("text_encoder", [key])
    for name, parts in big_g_keys(keys["text_encoder_2"]).items():
        plan[name] = ("text_encoder_2", parts)

    def make(name, shape):
        part, keys = plan[name]
        tensors = [handles[part].get_tensor(k) for k in keys]
        if name == BIG_G + "text_projection":
            return tensors[0].T.contiguous()
        if name.startswith(VAE) and ".mid.attn_1." in name and tensors[0].ndim == 2:
            return tensors[0][:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        return torch.cat(tensors) if len(tensors) > 1 else tensors[0]

    shapes = {}
    for name, (part, keys) in plan.items():
        shape = list(handles[part].get_slice(keys[0]).get_shape())
        shape[0] *= len(keys)
        if name == BIG_G + "text_projection":
            shape = shape[::-1]
        elif name.startswith(VAE) and ".mid.attn_1." in name and len(shape) == 2:
            shape += [1, 1]
        shapes[name] = tuple(shape)
    metadata = {METADATA_KEY: json.dumps({"preset": preset, "embedding_dim": embedding_dim})}
    return write_safetensors(out, list(shapes.items()), dtype, make, metadata)


# --- SGM -> diffusers (loading) --------------------------------------------------------------------------


def _read(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        names = [key for key in list(f.keys()) if key.startswith(prefix)]  # safe_open handles are not dicts
        return {key: f.get_tensor(key) for key in names}


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            keys, metadata = set(f.keys()), f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {path} as a .safetensors checkpoint: {exc}") from exc
    required = {UNET + "label_emb.0.0.weight", VAE + "decoder.conv_in.weight", BIG_G + "text_projection",
                CLIP_L + "text_model.embeddings.token_embedding.weight"}  # fmt: skip
    if not required <= keys:
        kind = "an SD 1.x/2.x checkpoint" if any(k.startswith("cond_stage_model.") for k in keys) else "not SDXL"
        raise CheckpointError(
            f"{path} is {kind}: it lacks {sorted(required - keys)[:2]}; InstantID needs an SDXL base (the original "
            "single-file layout, e.g. sd_xl_base_1.0.safetensors) or a diffusers SDXL folder"
        )
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {"preset": "full", "embedding_dim": 512}


def _big_g_state(sgm: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in sgm.items():
        short = name.removeprefix(BIG_G)
        if short == "text_projection":
            state["text_projection.weight"] = tensor.T.contiguous()
        elif short == "token_embedding.weight":
            state["text_model.embeddings.token_embedding.weight"] = tensor
        elif short == "positional_embedding":
            state["text_model.embeddings.position_embedding.weight"] = tensor
        elif short.startswith("ln_final."):
            state["text_model.final_layer_norm." + short.rsplit(".", 1)[1]] = tensor
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", short):
            for index, part in enumerate("qkv"):  # fused rows split by the model width (not the projection's)
                state[f"text_model.encoder.layers.{match[1]}.self_attn.{part}_proj.{match[2]}"] = tensor[
                    index * hidden : (index + 1) * hidden
                ]
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.*)\.(weight|bias)", short):
            inverse = {v: k for k, v in _BIG_G_LAYER.items()}
            state[f"text_model.encoder.layers.{match[1]}.{inverse[match[2]]}.{match[3]}"] = tensor
        # logit_scale and other OpenCLIP extras have no place in the text encoder
    return state


def _mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """One line naming how a checkpoint's tensors differ from a model's (the first few of each kind)."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    reshaped = [f"{key} is {list(state[key].shape)}, expected {list(expected[key].shape)}"
                for key in sorted(set(expected) & set(state)) if state[key].shape != expected[key].shape]  # fmt: skip
    kinds = (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
    return "; ".join(
        f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for kind, names in kinds
        if names
    )


def _build(cls, config: dict, state: dict, dtype: torch.dtype, path: Path, part: str):
    from accelerate import init_empty_weights

    # Parameters on the meta device (no memory, no random init); buffers stay real, since non-persistent
    # ones such as CLIP's position_ids are in no checkpoint.
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    expected = model.state_dict()
    if not set(expected) & set(state):  # transformers 5 flattens CLIPTextModel: no `text_model.` level
        state = {key.removeprefix("text_model."): value for key, value in state.items()}
    if problems := _mismatch(expected, state):  # torch's own message spans many lines, one per key
        raise CheckpointError(f"{path}: the {part} tensors do not match the SDXL architecture: {problems}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


class SingleFileSDXL:
    """The SDXL components of a single-file checkpoint, each converted to its diffusers/transformers model
    when asked for."""

    def __init__(self, path: Path, tokenizer_dir: Path | None = None):
        from .standin import default_tokenizer_source

        self.path = Path(path)
        described = _metadata(self.path)
        self.architecture = architecture(described["preset"], described["embedding_dim"])
        beside = self.path.parent if (self.path.parent / "tokenizer_2").is_dir() else None
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else beside or default_tokenizer_source()
        if self.tokenizer_dir is None or not (self.tokenizer_dir / "tokenizer_2").is_dir():
            raise CheckpointError(
                f"{self.path.name} carries no tokenizers: put the SDXL tokenizer/ and tokenizer_2/ folders (from "
                "stabilityai/stable-diffusion-xl-base-1.0) beside it, or use a diffusers SDXL folder"
            )
        self.scheduler_config = dict(SDXL_SCHEDULER)

    def config(self, part: str):
        from transformers import CLIPTextConfig

        config = getattr(self.architecture, part)
        return CLIPTextConfig(**config) if part.startswith("text_encoder") else config

    def component(self, part: str, dtype: torch.dtype):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        arch, path = self.architecture, self.path
        if part == "unet":
            return _build(UNet2DConditionModel, arch.unet, convert_ldm_unet_checkpoint(_read(path, UNET), arch.unet),
                          dtype, path, "UNet")  # fmt: skip
        if part == "vae":
            return _build(
                AutoencoderKL, arch.vae, convert_ldm_vae_checkpoint(_read(path, VAE), arch.vae), dtype, path, "VAE"
            )
        if part == "text_encoder":
            state = {k.removeprefix(CLIP_L): v for k, v in _read(path, CLIP_L).items()}
            state.pop("text_model.embeddings.position_ids", None)
            return _build(CLIPTextModel, self.config(part), state, dtype, path, "CLIP-L")
        state = _big_g_state(_read(path, BIG_G), arch.text_encoder_2["hidden_size"])
        return _build(CLIPTextModelWithProjection, self.config(part), state, dtype, path, "OpenCLIP bigG")

    def tokenizers(self):
        from transformers import CLIPTokenizer

        return tuple(CLIPTokenizer.from_pretrained(self.tokenizer_dir / name) for name in ("tokenizer", "tokenizer_2"))
