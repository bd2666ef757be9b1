"""Prompt -> SDXL text conditioning: both encoders' penultimate hidden states and the projected pooled vector.

Encodings are cached per prompt, so a kiosk that reuses its prompts pays for the text encoders once.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .errors import NumericalError
from .package import ModelPackage
from .tokenizer import ClipTokenizer


def check_finite(stage: str, array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise NumericalError(
            f"{stage} produced {bad} NaN/infinite values out of {array.size}; the package may be corrupt "
            "(check it with `instantid-edge inspect`) or quantized too aggressively"
        )
    return array


class TextEncoder:
    def __init__(self, package: ModelPackage, cache_size: int = 16):
        self.package, self.cache_size = package, cache_size
        self.tokenizers = (
            ClipTokenizer.from_folder(package.tokenizer_folder("tokenizer")),
            ClipTokenizer.from_folder(package.tokenizer_folder("tokenizer_2")),
        )
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """(hidden [1, 77, cross], pooled [1, pooled_dim]) for one prompt."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        ids_1, ids_2 = (tokenizer.encode(prompt)[None] for tokenizer in self.tokenizers)
        hidden_1 = self.package.session("text_encoder").run({"input_ids": ids_1})["hidden_states"]
        second = self.package.session("text_encoder_2").run({"input_ids": ids_2})
        check_finite("text_encoder", hidden_1)
        check_finite("text_encoder_2", second["hidden_states"])
        result = (
            np.concatenate([hidden_1, second["hidden_states"]], axis=-1),
            check_finite("text_encoder_2", second["text_embeds"]),
        )
        self._cache[prompt] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def conditioning(self, prompt: str, negative: str | None, cfg: bool) -> tuple[np.ndarray, np.ndarray]:
        """(text [B, 77, cross], pooled [B, pooled_dim]), B = 2 ([uncond, cond]) with CFG, else 1."""
        hidden, pooled = self.encode(prompt)
        if not cfg:
            return hidden, pooled
        if negative is None and self.package.architecture["force_zeros_for_empty_prompt"]:
            negative_hidden, negative_pooled = np.zeros_like(hidden), np.zeros_like(pooled)
        else:
            negative_hidden, negative_pooled = self.encode(negative or "")
        return np.concatenate([negative_hidden, hidden]), np.concatenate([negative_pooled, pooled])
