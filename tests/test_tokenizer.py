"""The torch-free CLIP tokenizer gives, id for id, what transformers' CLIPTokenizer gives the reference pipeline."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from instantid_edge.runtime.errors import PackageError
from instantid_edge.runtime.tokenizer import ClipTokenizer

NAMES = ("tokenizer", "tokenizer_2")
BOS, EOS = 49406, 49407
PAD = {"tokenizer": EOS, "tokenizer_2": 0}  # OpenCLIP bigG pads with "!"
PROMPT = (
    "analog film photo of a man. faded film, desaturated, 35mm photo, grainy, vignette, vintage, Kodachrome, "
    "Lomography, stained, highly detailed, found footage, masterpiece, best quality"
)
NEGATIVE = (
    "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, painting, drawing, illustration, glitch, "
    "deformed, mutated, cross-eyed, ugly, disfigured"
)
PROMPTS = [
    "",
    " ",
    "a photo of a man",
    "A PHOTO OF A MAN",
    "a Photo Of a WoMaN, Portrait",
    "Hello!! world",
    "!!!",
    "!",
    "wow! ! !!a!b",
    "a,b;c",
    "a.b:c?d-e_f/g\\h|i~j`k@l#m$n%o^p&q*r(s)t[u]v{w}x<y>z",
    "it's, we're, they've, I'm, you'll, he'd, don't, 'quoted', \"double\"",
    "1234567890 3.14159 1,000,000 2024-01-01 35mm 8k 4K",
    "café naïve résumé Ångström façade Straße ĲSSELMEER",
    "e\u0301 vs \u00e9, \u212b vs \u00c5 (NFC)",
    "İstanbul ǅ ß ẞ Σίσυφος ΣΑΣ",
    "日本語のプロンプト 中文提示词 한국어",
    "emoji 😀🎉👩‍👩‍👧 ❤️ 🇫🇷",
    "Привет мир, مرحبا بالعالم, שלום, नमस्ते",
    "zero\u200bwidth\ufeffjoin nbsp\u00a0ideographic\u3000space",
    "  leading and trailing   ",
    "multi\n\nline\ttabbed\r\ncarriage \x0b\x0c",
    "<|startoftext|>a cat<|endoftext|> a dog <|STARTOFTEXT|> <|EndOfText|>",
    "<|endoftext|>",
    "(masterpiece:1.2), [bad hands], {best quality}, <lora:foo:0.8>",
    PROMPT,
    NEGATIVE,
    "a photo of a man " * 30,
    "a " * 74 + "b",
    "a " * 75 + "b",
    "a " * 76 + "b",
    "!" * 80,
    "supercalifragilisticexpialidocious " * 20,
    PROMPT + ", " + NEGATIVE + ", " + PROMPT,
]
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 !!!!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ "
    "\t\n\r\u00a0\u3000 éÉèàüÖñçßİıǅΣς \u0301\u0308 日本語中文한국 😀🎉👍🏽\u200d❤️ \u200b\ufeff 'sllvetre<|>"
)
WORDS = ["<|endoftext|>", "<|startoftext|>", "'s", "'ll", "!!", "photo", "Kodachrome", "35mm", "1.2", "e\u0301"]


def fuzz_prompts(count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        pieces = [
            rng.choice(WORDS) if rng.random() < 0.1 else rng.choice(ALPHABET) for _ in range(rng.randrange(0, 160))
        ]
        prompts.append("".join(pieces))
    return prompts


def folder(assets: Path, name: str) -> Path:
    return assets / "configs" / "sdxl-base" / name


def reference_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids


def legacy_copy(source: Path, target: Path, pad_token: str, as_dicts: bool = False) -> Path:
    """An older folder layout: no added_tokens_decoder, special tokens from special_tokens_map.json."""
    target.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source / name, target / name)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token}
    special["unk_token"] = "<|endoftext|>"
    if as_dicts:  # the AddedToken dicts of older hub files
        flags = {"lstrip": False, "rstrip": False, "single_word": False, "normalized": True}
        special = {key: {"__type": "AddedToken", "content": value, **flags} for key, value in special.items()}
    (target / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


# --- torch-free ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_known_ids(assets, name):
    tokenizer = ClipTokenizer.from_folder(folder(assets, name))
    pad = PAD[name]
    assert tokenizer.model_max_length == 77 and tokenizer.pad_token_id == pad
    ids = tokenizer.encode("a photo of a man")
    assert ids.dtype == np.int64 and ids.shape == (77,)
    assert ids.tolist() == [BOS, 320, 1125, 539, 320, 786, EOS] + [pad] * 70
    bang = [748] if name == "tokenizer" else [0, 0]  # "!!" is one BPE token, but "!" is an added token in _2
    expected = [BOS, 3306, *bang, 1002, EOS]
    assert tokenizer.encode("Hello!! world").tolist() == expected + [pad] * (77 - len(expected))
    assert tokenizer.encode("").tolist() == [BOS, EOS] + [pad] * 75
    long = tokenizer.encode("a photo of a man " * 30)
    assert long[0] == BOS and long[-1] == EOS and (long[1:-1] != pad).all()
    batch = tokenizer.encode_batch(["a photo of a man", "", PROMPT])
    assert batch.shape == (3, 77) and batch.dtype == np.int64
    assert (batch[0] == ids).all() and (batch[2] == tokenizer.encode(PROMPT)).all()
    assert tokenizer.encode_batch([]).shape == (0, 77)


def test_missing_files_raise_package_error(tmp_path):
    with pytest.raises(PackageError, match="lacks vocab.json, merges.txt, tokenizer_config.json"):
        ClipTokenizer.from_folder(tmp_path)
    with pytest.raises(PackageError, match="lacks"):
        ClipTokenizer.from_folder(tmp_path / "absent")


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("tokenizer_config.json", "{not json", "cannot be read"),
        ("tokenizer_config.json", "[1, 2]", "JSON object"),
        ("tokenizer_config.json", '{"added_tokens_decoder": {"0": 5}}', "malformed"),
        ("tokenizer_config.json", '{"model_max_length": 1e30}', "model_max_length"),
        ("tokenizer_config.json", '{"bos_token": "<|nowhere|>", "added_tokens_decoder": {}}', r"<\|nowhere\|>"),
        ("vocab.json", "{broken", "malformed"),
        ("merges.txt", "#version: 0.2\nzz qq\n", "malformed"),
    ],
)
def test_malformed_files_raise_package_error(assets, tmp_path, file, text, message):
    broken = tmp_path / "tokenizer"
    shutil.copytree(folder(assets, "tokenizer"), broken)
    (broken / file).write_text(text)
    with pytest.raises(PackageError, match=message):
        ClipTokenizer.from_folder(broken)


# --- against transformers -------------------------------------------------------------------------------------


def compare(reference, ours: ClipTokenizer, prompts: list[str]) -> None:
    mismatches = [(p, reference_ids(reference, p), ours.encode(p).tolist()) for p in prompts]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} of {len(prompts)} prompts differ, first: {mismatches[0]}"
    batch = ours.encode_batch(prompts)
    assert batch.shape == (len(prompts), 77)
    assert batch.tolist() == reference(prompts, padding="max_length", max_length=77, truncation=True).input_ids


@pytest.mark.torch
@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers(assets, name):
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(folder(assets, name))
    ours = ClipTokenizer.from_folder(folder(assets, name))
    assert (ours.pad_token_id, ours.model_max_length) == (reference.pad_token_id, reference.model_max_length)
    # the same tokenizers pipeline: vocab, every merge, added tokens and their flags, normalizer, pre-tokenizer
    theirs, mine = json.loads(reference.backend_tokenizer.to_str()), json.loads(ours.tokenizer.to_str())
    for key in ("model", "added_tokens", "normalizer", "pre_tokenizer", "post_processor"):
        assert mine[key] == theirs[key], key
    compare(reference, ours, PROMPTS + fuzz_prompts())


@pytest.mark.torch
@pytest.mark.parametrize("pad_token, as_dicts", [("<|endoftext|>", False), ("!", False), ("!", True)])
def test_matches_transformers_on_older_layouts(assets, tmp_path, pad_token, as_dicts):
    """Folders without added_tokens_decoder (as `standin` writes when the source has no tokenizer_config.json)."""
    from transformers import CLIPTokenizer

    legacy = legacy_copy(folder(assets, "tokenizer"), tmp_path / "legacy", pad_token, as_dicts)
    reference, ours = CLIPTokenizer.from_pretrained(legacy), ClipTokenizer.from_folder(legacy)
    assert ours.pad_token_id == reference.pad_token_id
    compare(reference, ours, PROMPTS + fuzz_prompts(100, seed=1))
