"""Prompt -> SDXL text embeddings: both encoders' penultimate hidden states and the projected pooled vector.

Encodings are cached per prompt, so a kiosk that reuses its prompts pays for the text encoders once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import PackageError, check_finite
from .package import ModelPackage
from .tokenizer import ClipTokenizer


@dataclass(frozen=True)
class TextEmbeddings:
    """What the prompts give the denoiser; batched [negative, prompt] with CFG, else the prompt alone."""

    hidden: np.ndarray  # [B, text_length, cross_attention_dim]: both encoders' penultimate states, concatenated
    pooled: np.ndarray  # [B, pooled_dim]: text_encoder_2's projected pooled embedding


class TextEncoder:
    def __init__(self, package: ModelPackage, cache_size: int = 16):
        self.package, self.cache_size = package, cache_size
        self.tokenizers = tuple(ClipTokenizer.from_folder(folder) for folder in package.manifest.tokenizer_folders)
        length = package.manifest.architecture.text_length
        for folder, tokenizer in zip(package.manifest.tokenizer_folders, self.tokenizers, strict=True):
            if tokenizer.model_max_length != length:
                raise PackageError(
                    f"tokenizer {folder} pads to {tokenizer.model_max_length} tokens but the text encoders take "
                    f"{length}; the package mixes exports, re-export it"
                )
        self._cache: OrderedDict[str, TextEmbeddings] = OrderedDict()

    def encode(self, prompt: str) -> TextEmbeddings:
        """One prompt's embeddings (batch 1), from the cache when it was encoded lately."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        ids_1, ids_2 = (tokenizer.encode(prompt)[None] for tokenizer in self.tokenizers)
        hidden_1 = self.package.session("text_encoder").run({"input_ids": ids_1})["hidden_states"]
        second = self.package.session("text_encoder_2").run({"input_ids": ids_2})
        check_finite("text_encoder", hidden_1)
        check_finite("text_encoder_2", second["hidden_states"])
        result = TextEmbeddings(
            np.concatenate([hidden_1, second["hidden_states"]], axis=-1),
            check_finite("text_encoder_2", second["text_embeds"]),
        )
        self._cache[prompt] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def embed(self, prompt: str, negative: str | None, cfg: bool) -> TextEmbeddings:
        """Batch 2 ([negative, prompt]) with CFG, else 1. No negative prompt: zero embeddings, as SDXL does."""
        embeddings = self.encode(prompt)
        if not cfg:
            return embeddings
        if negative is None and self.package.manifest.architecture.force_zeros_for_empty_prompt:
            uncond = TextEmbeddings(np.zeros_like(embeddings.hidden), np.zeros_like(embeddings.pooled))
        else:
            uncond = self.encode(negative or "")
        return TextEmbeddings(
            np.concatenate([uncond.hidden, embeddings.hidden]), np.concatenate([uncond.pooled, embeddings.pooled])
        )

    def clear_cache(self) -> None:
        """Forget cached encodings (a benchmark times the encoders, not the cache)."""
        self._cache.clear()
