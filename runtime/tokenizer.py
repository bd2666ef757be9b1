"""The CLIP BPE tokenizer of SDXL, torch-free: the same `tokenizers` pipeline transformers' CLIPTokenizer builds.

It reads the original tokenizer folder (vocab.json, merges.txt, tokenizer_config.json, and in older layouts
special_tokens_map.json / added_tokens.json) and reproduces, id for id,
`CLIPTokenizer.from_pretrained(folder)(prompt, padding="max_length", max_length=77, truncation=True).input_ids`.
Added tokens matter: SDXL's tokenizer_2 registers its pad token "!" as one, so "a!!" gives [..., 0, 0] there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from .errors import PackageError

REQUIRED_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
DEFAULTS["pad_token"] = DEFAULTS["eos_token"]
# transformers' CLIPTokenizer pre-tokenizer: CLIP's own regex, then the byte-level alphabet
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
TOKEN_FLAGS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackageError(f"tokenizer file {path} cannot be read ({error}); re-export the model package") from None
    if not isinstance(data, dict):
        raise PackageError(f"tokenizer file {path} should hold a JSON object; re-export the model package")
    return data


def _added_token(value, special: bool | None = None) -> AddedToken:
    """An AddedToken from a string or a serialized {"content": ..., "lstrip": ...} entry."""
    if isinstance(value, str):
        return AddedToken(value, special=True if special is None else special)
    if not isinstance(value, dict) or not isinstance(value.get("content"), str):
        raise ValueError(f"bad token entry {value!r}")
    flags = {k: bool(v) for k, v in value.items() if k in TOKEN_FLAGS[1:]}
    if special is not None:
        flags["special"] = special
    return AddedToken(value["content"], **flags)


def _special_tokens(folder: Path, config: dict) -> tuple[dict[str, AddedToken], list[AddedToken]]:
    """(named special tokens, added tokens in the order transformers adds them), resolved as transformers does."""
    named = {key: config.get(key, DEFAULTS[key]) for key in NAMED_TOKENS}
    if "added_tokens_decoder" in config:
        entries = sorted((int(i), entry) for i, entry in config["added_tokens_decoder"].items())
        added = [_added_token(entry) for _, entry in entries]
    else:  # older layout: special_tokens_map.json overrides the config; added_tokens.json lists the added tokens
        if (folder / "special_tokens_map.json").is_file():
            named |= {k: v for k, v in _read_json(folder / "special_tokens_map.json").items() if k in named}
        legacy = _read_json(folder / "added_tokens.json") if (folder / "added_tokens.json").is_file() else {}
        names = {_added_token(token).content for token in named.values() if token}
        ordered = sorted(legacy.items(), key=lambda item: int(item[1]))
        added = [AddedToken(token, special=token in names, normalized=token not in names) for token, _ in ordered]
    named = {key: _added_token(value or DEFAULTS[key], special=True) for key, value in named.items()}
    names = {token.content for token in named.values()}
    for token in added:
        token.special = token.special or token.content in names
    known = {token.content for token in added}
    return named, added + [token for token in named.values() if token.content not in known]


class ClipTokenizer:
    """prompt -> int64 ids [model_max_length]: BOS, the prompt's tokens (truncated), EOS, then padding.
    `tokens(text)`: the text's tokens alone, any number of them (weighted prompts chunk them themselves)."""

    def __init__(self, tokenizer: Tokenizer, pad_token_id: int, model_max_length: int, bos_id: int = 0,
                 eos_id: int = 0, unbounded: Tokenizer | None = None):  # fmt: skip
        self.tokenizer, self.pad_token_id, self.model_max_length = tokenizer, pad_token_id, model_max_length
        self.bos_id, self.eos_id, self._unbounded = bos_id, eos_id, unbounded

    @classmethod
    def from_folder(cls, folder: str | Path) -> ClipTokenizer:
        folder = Path(folder)
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise PackageError(
                f"tokenizer folder {folder} lacks {', '.join(missing)}; re-export the model package, or copy "
                "them from the tokenizer/ or tokenizer_2/ folder of the SDXL checkpoint"
            )
        config = _read_json(folder / "tokenizer_config.json")
        try:
            named, added = _special_tokens(folder, config)
            max_length = int(config.get("model_max_length", 77))
            files = str(folder / "vocab.json"), str(folder / "merges.txt")
            bpe = BPE.from_file(*files, unk_token=named["unk_token"].content, continuing_subword_prefix="",
                                end_of_word_suffix="</w>", fuse_unk=False)  # fmt: skip
        except PackageError:
            raise
        except Exception as error:  # tokenizers raises a plain Exception on unreadable vocab/merges
            raise PackageError(
                f"tokenizer folder {folder} is malformed ({error}); re-export the model package"
            ) from None
        ids = {key: bpe.token_to_id(token.content) for key, token in named.items()}
        absent = sorted({named[key].content for key, i in ids.items() if i is None})
        if absent or not 2 < max_length <= 4096:
            raise PackageError(
                f"tokenizer folder {folder} is malformed: special tokens {absent} missing from vocab.json or "
                f"model_max_length {max_length} out of range; re-export the model package"
            )
        tokenizer = Tokenizer(bpe)
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        split = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tokenizer.add_tokens(added)
        bos, eos, pad = named["bos_token"].content, named["eos_token"].content, named["pad_token"].content
        tokenizer.post_processor = processors.RobertaProcessing(
            (eos, ids["eos_token"]), (bos, ids["bos_token"]), False, False
        )
        unbounded = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
        tokenizer.enable_padding(length=max_length, pad_id=ids["pad_token"], pad_token=pad, direction="right")
        return cls(tokenizer, ids["pad_token"], max_length, ids["bos_token"], ids["eos_token"], unbounded)

    def tokens(self, text: str) -> list[int]:
        """`text`'s token ids without BOS/EOS, untruncated (what `tokenizer(text).input_ids[1:-1]` gives)."""
        return self._unbounded.encode(text, add_special_tokens=False).ids

    def encode(self, prompt: str) -> np.ndarray:
        return self.encode_batch([prompt])[0]

    def encode_batch(self, prompts: list[str] | tuple[str, ...]) -> np.ndarray:
        if isinstance(prompts, str):
            raise TypeError("encode_batch takes a list of prompts; use encode for one")
        encodings = self.tokenizer.encode_batch(list(prompts), add_special_tokens=True)
        return np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), self.model_max_length)
