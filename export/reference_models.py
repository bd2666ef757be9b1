"""Load an InstantID checkpoint into PyTorch modules, one component at a time when asked.

`CheckpointLoader` loads each component on demand (export holds one large model at a time); LoRAs are fused
into the UNet and the text encoders as they load. `load_reference_models` loads everything for the
reference pipeline.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..runtime.errors import CheckpointError
from .architecture import latent_shape, vae_scale_factor
from .checkpoint import CheckpointPaths, weight_variant
from .ip_attention import IPScale, install_ip_attention, load_ip_weights
from .lora import LoraSpec, fuse_loras
from .resampler import Resampler, resampler_config_from_state_dict


def quiet_loaders() -> None:
    """Loading progress bars and advice from diffusers/transformers would drown the CLI's own output."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _load(component: str, path: Path, load):
    try:
        return load()
    except CheckpointError:
        raise
    except Exception as exc:  # library errors of every kind become one message naming the file
        raise CheckpointError(f"cannot load {component} from {path}: {type(exc).__name__}: {exc}") from exc


def load_ip_adapter(path: Path) -> dict:
    """The two state dicts of ip-adapter.bin, checked for the released structure."""

    def read():
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)

    state = _load("the image-prompt adapter", path, read)
    if not isinstance(state, dict) or not {"image_proj", "ip_adapter"} <= set(state):
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an InstantID ip-adapter.bin: expected keys image_proj and ip_adapter, found {keys}"
        )
    return state


class CheckpointLoader:
    """Components of one checkpoint, each loaded (in `dtype`, LoRAs fused) when first asked for."""

    def __init__(
        self,
        paths: CheckpointPaths,
        dtype: torch.dtype = torch.float32,
        loras: list[LoraSpec] = (),
        tokenizer_dir: Path | None = None,
    ):
        quiet_loaders()
        self.paths, self.dtype, self.loras, self.tokenizer_dir = paths, dtype, list(loras), tokenizer_dir

    @functools.cached_property
    def single_file(self):
        from .single_file import SingleFileSDXL

        return SingleFileSDXL(self.paths.base, self.tokenizer_dir)

    def _sdxl_model(self, part: str):
        if self.paths.base_is_single_file:
            return self.single_file.component(part, self.dtype)
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "text_encoder_2": CLIPTextModelWithProjection}[part]  # fmt: skip
        folder = self.paths.base / part
        return _load(
            part, folder, lambda: cls.from_pretrained(folder, torch_dtype=self.dtype, variant=weight_variant(folder))
        )

    @functools.cached_property
    def unet_config(self):
        if self.paths.base_is_single_file:
            return self.single_file.config("unet")
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.load_config(self.paths.base / "unet")

    @functools.cached_property
    def vae_config(self):
        if self.paths.base_is_single_file:
            return self.single_file.config("vae")
        from diffusers import AutoencoderKL

        return AutoencoderKL.load_config(self.paths.base / "vae")

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return latent_shape(self.unet_config, self.vae_config, height, width)

    @functools.cached_property
    def index(self) -> dict:
        if self.paths.base_is_single_file:
            return {"force_zeros_for_empty_prompt": True}
        return json.loads((self.paths.base / "model_index.json").read_text())

    @functools.cached_property
    def scheduler_config(self) -> dict:
        if self.paths.base_is_single_file:
            return self.single_file.scheduler_config
        return json.loads((self.paths.base / "scheduler" / "scheduler_config.json").read_text())

    @functools.cached_property
    def ip_state(self) -> dict:
        return load_ip_adapter(self.paths.ip_adapter)

    @property
    def standin(self) -> dict | None:
        marker = self.paths.standin_marker
        return json.loads(marker.read_text()) if marker.is_file() else None

    def tokenizer_folders(self) -> tuple[Path, Path]:
        folder = self.single_file.tokenizer_dir if self.paths.base_is_single_file else self.paths.base
        return folder / "tokenizer", folder / "tokenizer_2"

    def tokenizers(self):
        if self.paths.base_is_single_file:
            return self.single_file.tokenizers()
        from transformers import CLIPTokenizer

        return tuple(
            _load(name, self.paths.base / name, lambda name=name: CLIPTokenizer.from_pretrained(self.paths.base / name))
            for name in ("tokenizer", "tokenizer_2")
        )

    def text_encoder(self, which: str = "text_encoder"):
        model = self._sdxl_model(which).eval()
        fuse_loras(model, which, self.loras)
        return model

    def text_models(self) -> TextModels:
        return TextModels(self.tokenizers(), (self.text_encoder("text_encoder"), self.text_encoder("text_encoder_2")))

    def vae(self):
        return self._sdxl_model("vae").eval()

    def resampler(self) -> Resampler:
        state = self.ip_state["image_proj"]
        try:
            resampler = Resampler(**resampler_config_from_state_dict(state))
            resampler.load_state_dict(state, strict=True)
        except (KeyError, IndexError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.paths.ip_adapter}: image_proj does not match the InstantID Resampler: {exc}"
            ) from exc
        return resampler.to(self.dtype).eval()

    def identitynet(self):
        return self.controlnet(self.paths.identitynet, "IdentityNet")

    def controlnet(self, folder: Path, what: str):
        """An SDXL ControlNet in diffusers' layout (config.json + diffusion_pytorch_model weights)."""
        from diffusers import ControlNetModel

        return _load(what, folder, lambda: ControlNetModel.from_pretrained(
            folder, torch_dtype=self.dtype, variant=weight_variant(folder)).eval())  # fmt: skip

    def unet(self, num_image_tokens: int) -> tuple[torch.nn.Module, IPScale]:
        """The UNet with LoRAs fused and IP attention installed; its IP scale holder."""
        unet = self._sdxl_model("unet").eval()
        fuse_loras(unet, "unet", self.loras)
        scale = IPScale(1.0)
        installed = install_ip_attention(unet, num_image_tokens, scale)
        try:
            load_ip_weights(installed, self.ip_state["ip_adapter"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.paths.ip_adapter}: ip_adapter does not fit this UNet: {exc}") from exc
        return unet, scale


@dataclass(frozen=True)
class TextModels:
    """SDXL's two CLIP tokenizers (transformers') and text encoders, in order."""

    tokenizers: tuple
    encoders: tuple[torch.nn.Module, torch.nn.Module]


@dataclass
class ReferenceModels:
    unet: torch.nn.Module  # with IP attention installed
    identitynet: torch.nn.Module
    vae: torch.nn.Module
    text: TextModels
    scheduler_config: dict
    resampler: Resampler
    ip_scale: IPScale
    force_zeros_for_empty_prompt: bool
    standin: dict | None  # STANDIN.json when these are random stand-in weights
    tiny_decoder: torch.nn.Module | None = None  # TAESD-XL, when given
    controlnets: dict[str, tuple[torch.nn.Module, str]] = field(default_factory=dict)  # extra: (net, condition)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae.config)

    @property
    def embedding_dim(self) -> int:
        return self.resampler.proj_in.in_features

    @property
    def num_image_tokens(self) -> int:
        return self.resampler.latents.shape[1]

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return latent_shape(self.unet.config, self.vae.config, height, width)


def check_compatible(unet, identitynet, text: TextModels, resampler: Resampler, ip_file: Path) -> None:
    cross = unet.config.cross_attention_dim
    widths = sum(encoder.config.hidden_size for encoder in text.encoders)
    checks = [
        (widths == cross, f"the text encoders' widths sum to {widths}, the UNet cross-attention needs {cross}"),
        (resampler.proj_out.out_features == cross,
         f"{ip_file.name} makes {resampler.proj_out.out_features}-d face tokens, the UNet needs {cross}"),
        (identitynet.config.cross_attention_dim == cross,
         f"IdentityNet cross-attention is {identitynet.config.cross_attention_dim}-d, the UNet's is {cross}"),
        (identitynet.config.projection_class_embeddings_input_dim == unet.config.projection_class_embeddings_input_dim,
         "IdentityNet and UNet disagree on the added (pooled text + time ids) embedding width"),
    ]  # fmt: skip
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise CheckpointError(f"mismatched model files: {'; '.join(problems)}")


def check_controlnet(unet_config, net_config, name: str) -> None:
    """An extra ControlNet must fit the UNet: the same context width, added embedding and block channels."""
    problems = []
    if net_config["cross_attention_dim"] != unet_config["cross_attention_dim"]:
        problems.append(f"cross-attention {net_config['cross_attention_dim']}-d, the UNet's is "
                        f"{unet_config['cross_attention_dim']}-d")  # fmt: skip
    added = "projection_class_embeddings_input_dim"
    if net_config[added] != unet_config[added] or net_config["addition_embed_type"] != "text_time":
        problems.append("not SDXL's added (pooled text + time ids) embedding of the UNet's width")
    if list(net_config["block_out_channels"]) != list(unet_config["block_out_channels"]):
        problems.append(f"blocks of {list(net_config['block_out_channels'])} channels, the UNet's are "
                        f"{list(unet_config['block_out_channels'])}")  # fmt: skip
    if problems:
        raise CheckpointError(f"the {name} ControlNet does not fit this SDXL UNet: {'; '.join(problems)} "
                              "(it must be an SDXL ControlNet for the same base)")  # fmt: skip


def load_reference_models(
    paths: CheckpointPaths,
    dtype: torch.dtype = torch.float32,
    loras: list[LoraSpec] = (),
    tiny_decoder: Path | None = None,
    controlnets: dict[str, Path] | None = None,
) -> ReferenceModels:
    """`controlnets`: extra SDXL ControlNets by name (export --controlnet's NAME=DIR)."""
    from ..runtime.controlnets import condition_of
    from .taesd import load_tiny_decoder

    loader = CheckpointLoader(paths, dtype, loras)
    resampler = loader.resampler()
    identitynet = loader.identitynet()
    text = loader.text_models()
    unet, scale = loader.unet(resampler.latents.shape[1])
    check_compatible(unet, identitynet, text, resampler, paths.ip_adapter)
    extras = {}
    for name, folder in (controlnets or {}).items():
        net = loader.controlnet(Path(folder), f"the {name} ControlNet")
        check_controlnet(unet.config, net.config, name)
        extras[name] = (net, condition_of(name))
    return ReferenceModels(
        unet=unet,
        identitynet=identitynet,
        vae=loader.vae(),
        text=text,
        scheduler_config=loader.scheduler_config,
        resampler=resampler,
        ip_scale=scale,
        force_zeros_for_empty_prompt=bool(loader.index.get("force_zeros_for_empty_prompt", True)),
        standin=loader.standin,
        tiny_decoder=load_tiny_decoder(tiny_decoder) if tiny_decoder is not None else None,
        controlnets=extras,
    )
