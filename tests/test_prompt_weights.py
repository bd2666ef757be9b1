"""Weighted prompts: the parser, the tokens and the chunks, as InstantID's full pipeline has them.

The expected parses below are what upstream's `LongPromptWeight.parse_prompt_attention`
(instantX-research/InstantID, pipeline_stable_diffusion_xl_instantid_full.py) returns for each prompt: the first
six are the examples of its docstring, the others were checked by running upstream's function on them (it is not
shipped in any package we can install, so its results are tabled here). The chunk lengths were checked the same
way against its `group_tokens_and_weights`.
"""

from __future__ import annotations

import numpy as np
import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.prompt_weights import (
    apply_weights,
    chunks,
    matched_pair,
    parse_weights,
    weighted_tokens,
)

UPSTREAM_PARSES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.573),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641),
            (".", 1.1),
        ],
    ),  # fmt: skip
    ("", [("", 1.0)]),
    (
        "[[low]] (high:1.5) [mixed (both)]",
        [("low", 1 / 1.21), (" ", 1.0), ("high", 1.5), (" ", 1.0), ("mixed ", 1 / 1.1), ("both", 1.0)],
    ),  # fmt: skip
    ("back\\\\slash \\ lone", [("back\\slash  lone", 1.0)]),  # "\\" is a backslash, a lone "\" vanishes
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),  # upstream keeps BREAK as a word of weight -1
    ("unmatched ) and ] closers", [("unmatched ) and ] closers", 1.0)]),
    ("colon: not a weight", [("colon: not a weight", 1.0)]),
    ("(neg:-0.5) (x:+2)", [("neg", -0.5), (" ", 1.0), ("x", 2.0)]),
    ("((a:1.2) b:0.5)", [("a", 0.6), (" b", 0.5)]),
    ("[a:1.2]", [("a:1.2", 1 / 1.1)]),  # an explicit weight only closes a round bracket
    ("nested [(deep)]", [("nested deep", 1.0)]),  # 1.1 / 1.1 merges with its neighbour
    ("trailing (open [both", [("trailing ", 1.0), ("open ", 1.1), ("both", 1.0)]),
    ("(:1.5)", [("", 1.0)]),
    (r"\\(escaped backslash then paren)", [("\\", 1.0), ("escaped backslash then paren", 1.1)]),
]


@pytest.mark.parametrize("prompt, expected", UPSTREAM_PARSES)
def test_the_parser_reads_prompts_as_upstream(prompt, expected):
    parsed = parse_weights(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    np.testing.assert_allclose([w for _, w in parsed], [w for _, w in expected], rtol=1e-12)


def test_a_weight_that_is_not_a_number_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"weight '1\.2\.3' .* is not a number; write e\.g\. \(word:1\.2\)"):
        parse_weights("(a:1.2.3)")


def _fake_tokenize(text: str) -> list[int]:
    return [100 + len(word) for word in text.split()]  # one token per word: lengths are easy to reason about


@pytest.mark.parametrize("words, lengths", [(0, [2]), (1, [3]), (74, [76]), (75, [77, 2]), (120, [77, 47]),
                                           (150, [77, 77, 2])])  # fmt: skip
def test_long_prompts_are_cut_into_unpadded_chunks_of_75_tokens(words, lengths):
    tokens = weighted_tokens("word " * words, _fake_tokenize)
    cut = chunks(tokens, 75, 1, 2)
    assert [len(chunk.ids) for chunk in cut] == lengths
    assert all(chunk.ids[0] == 1 and chunk.ids[-1] == 2 for chunk in cut)
    assert [i for chunk in cut for i in chunk.ids[1:-1]] == list(tokens.ids)
    assert all(chunk.weights[0] == chunk.weights[-1] == 1.0 for chunk in cut)


def test_each_piece_is_tokenized_alone_and_its_tokens_take_its_weight():
    tokens = weighted_tokens("a (big red:1.5) [cat]", _fake_tokenize)
    assert tokens.ids == (101, 103, 103, 103)
    np.testing.assert_allclose(tokens.weights, [1.0, 1.5, 1.5, 1 / 1.1])


def test_prompt_and_negative_are_padded_with_end_tokens_to_the_same_length():
    prompt, negative = weighted_tokens("one two three", _fake_tokenize), weighted_tokens("(x:2)", _fake_tokenize)
    padded_prompt, padded_negative = matched_pair(prompt, negative, 9)
    assert padded_prompt == prompt
    assert padded_negative.ids == (101, 9, 9) and padded_negative.weights == (2.0, 1.0, 1.0)


def test_weights_scale_each_token_away_from_the_chunks_end_token_in_float16():
    hidden = np.arange(12, dtype=np.float32).reshape(4, 3)
    weighted = apply_weights(hidden, (1.0, 1.5, 1.1, 1.0))
    end = hidden[-1]
    np.testing.assert_array_equal(weighted[[0, 3]], hidden[[0, 3]])
    np.testing.assert_allclose(weighted[1], end + (hidden[1] - end) * 1.5, rtol=1e-6)
    np.testing.assert_allclose(weighted[2], end + (hidden[2] - end) * float(np.float16(1.1)), rtol=1e-6)
    assert float(np.float16(1.1)) != 1.1  # the rounding is real, so the line above checks it


def test_real_tokenizer_tokens_are_transformers_tokens_without_start_and_end(assets):
    transformers = pytest.importorskip("transformers", reason="the comparison needs transformers (export extra)")
    from instantid_edge.runtime.tokenizer import ClipTokenizer

    folder = assets / "configs" / "sdxl-base" / "tokenizer"
    ours, theirs = ClipTokenizer.from_folder(folder), transformers.CLIPTokenizer.from_pretrained(folder)
    prompt = "(masterpiece:1.2), [blurry] photo!!! of a!! person, " * 5 + "a (red:1.5) cat " * 40
    tokens = weighted_tokens(prompt, ours.tokens)
    expected = [i for text, _ in parse_weights(prompt) for i in theirs(text, truncation=False).input_ids[1:-1]]
    assert list(tokens.ids) == expected and len(expected) > 150
    full, rest = divmod(len(expected), 75)
    assert [len(c.ids) for c in chunks(tokens, 75, ours.bos_id, ours.eos_id)] == [77] * full + [rest + 2]
