"""Prompt -> SDXL text embeddings: both encoders' penultimate hidden states and the projected pooled vector.

Plain prompts are one chunk of `text_length` tokens per encoder, each encoder with its own tokenizer (SDXL's
pipeline). Weighted prompts (`weighted=True`) follow InstantID's full pipeline (prompt_weights.py): chunks of
any number, unpadded, both encoders fed the FIRST tokenizer's ids (upstream's choice: tokenizer_2 treats runs of
"!" differently), weights applied to the concatenated embeddings, the pooled vector from the last chunk. Each
chunk runs through the fixed-length encoder graphs padded with end tokens, and only its own positions are
kept: CLIP's attention is causal, so later positions cannot change earlier ones.

Encodings are cached by token ids (the parsed prompt), so a kiosk that reuses its prompts pays for the text
encoders once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import PackageError, check_finite
from .package import ModelPackage
from .prompt_weights import WeightedTokens, apply_weights, chunks, matched_pair, weighted_tokens
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
        self.text_length = length
        self._cache: OrderedDict[bytes, TextEmbeddings] = OrderedDict()

    def encode_ids(self, ids_1: np.ndarray, ids_2: np.ndarray) -> TextEmbeddings:
        """Embeddings (batch 1) of one chunk of `text_length` ids per encoder, cached by the ids."""
        key = ids_1.astype(np.int64).tobytes() + b"|" + ids_2.astype(np.int64).tobytes()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        hidden_1 = self.package.session("text_encoder").run({"input_ids": ids_1[None]})["hidden_states"]
        second = self.package.session("text_encoder_2").run({"input_ids": ids_2[None]})
        check_finite("text_encoder", hidden_1)
        check_finite("text_encoder_2", second["hidden_states"])
        result = TextEmbeddings(
            np.concatenate([hidden_1, second["hidden_states"]], axis=-1),
            check_finite("text_encoder_2", second["text_embeds"]),
        )
        self._cache[key] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def encode(self, prompt: str) -> TextEmbeddings:
        """One plain prompt's embeddings (batch 1): each tokenizer pads or truncates it to `text_length`."""
        return self.encode_ids(*(tokenizer.encode(prompt) for tokenizer in self.tokenizers))

    def embed(self, prompt: str, negative: str | None, cfg: bool, weighted: bool = False) -> TextEmbeddings:
        """Batch 2 ([negative, prompt]) with CFG, else 1. No negative prompt: zero embeddings, as SDXL does.
        `weighted`: the prompts' emphasis syntax and any length, as InstantID's full pipeline reads them."""
        if weighted:
            tokenizer = self.tokenizers[0]
            # upstream pads prompt and negative prompt to the same number of tokens, with or without CFG
            prompt_tokens, negative_tokens = matched_pair(weighted_tokens(prompt, tokenizer.tokens),
                                                          weighted_tokens(negative or "", tokenizer.tokens),
                                                          tokenizer.eos_id)  # fmt: skip
            embeddings = self._chunked(prompt_tokens, tokenizer)
        else:
            embeddings = self.encode(prompt)
        if not cfg:
            return embeddings
        # the full pipeline always encodes the negative prompt ("" when none); zeros are the base pipeline's rule
        if negative is None and not weighted and self.package.manifest.architecture.force_zeros_for_empty_prompt:
            uncond = TextEmbeddings(np.zeros_like(embeddings.hidden), np.zeros_like(embeddings.pooled))
        else:
            uncond = self._chunked(negative_tokens, tokenizer) if weighted else self.encode(negative or "")
        return TextEmbeddings(
            np.concatenate([uncond.hidden, embeddings.hidden]), np.concatenate([uncond.pooled, embeddings.pooled])
        )

    def _chunked(self, tokens: WeightedTokens, tokenizer: ClipTokenizer) -> TextEmbeddings:
        """The chunks' weighted embeddings one after the other; the pooled vector of the last chunk."""
        hidden, pooled = [], None
        for chunk in chunks(tokens, self.text_length - 2, tokenizer.bos_id, tokenizer.eos_id):
            ids = np.full(self.text_length, tokenizer.eos_id, np.int64)
            ids[: len(chunk.ids)] = chunk.ids
            encoded = self.encode_ids(ids, ids)
            hidden.append(apply_weights(encoded.hidden[0, : len(chunk.ids)], chunk.weights))
            pooled = encoded.pooled
        return TextEmbeddings(np.concatenate(hidden)[None], pooled)

    def clear_cache(self) -> None:
        """Forget cached encodings (a benchmark times the encoders, not the cache)."""
        self._cache.clear()
