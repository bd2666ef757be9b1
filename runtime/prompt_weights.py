"""Weighted prompts as InstantID's full pipeline reads them: A1111-style emphasis and prompts of any length.

Semantics reproduced (our own code) from `LongPromptWeight` in instantX-research/InstantID
pipeline_stable_diffusion_xl_instantid_full.py, itself from diffusers' community `lpw_stable_diffusion_xl.py`:

- `(text)` multiplies the weight of `text` by 1.1, `[text]` by 1/1.1, `(text:1.3)` by 1.3; brackets nest and
  multiply; a bracket left open applies to the end of the prompt; a closing bracket with nothing open is
  text. `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters; a lone `\\` becomes nothing.
- `BREAK` (a whole word) is NOT a chunk break there: it becomes the word "break" with weight -1, as upstream
  (which then pushes that token's embedding away from the chunk's end token). We keep this for parity.
- Neighbouring pieces of equal weight are merged; an empty prompt is one empty piece.
- Each piece is tokenized on its own (no start/end tokens); prompt and negative prompt are padded with the end
  token to the same length; the tokens are cut into chunks of `text_length - 2` (75), each wrapped in the start
  and end tokens (the last chunk is NOT padded, so a prompt of n tokens gives n + 2 context tokens, and one of
  exactly 75 gives a 77-token chunk and a 2-token one).
- Weights act on the embeddings: token j of a chunk becomes `end + (token_j - end) * w`, `end` being the
  chunk's last (end-token) embedding, with `w` rounded to float16 and skipped where that rounds to 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

ROUND, SQUARE = 1.1, 1 / 1.1
_PIECES = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\     # escapes, and a lone backslash
    | \( | \[                                 # openings
    | :(?P<weight>[+-]?[.\d]+)\)              # an explicit weight closing a round bracket
    | \) | \]                                 # closings
    | [^\\()\[\]:]+ | :                       # text, and a colon that closes nothing
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
BREAK_WEIGHT = -1.0


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """`prompt` -> [(text, weight), ...], as upstream's `parse_prompt_attention`."""
    pieces: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _PIECES.finditer(prompt):
        text, weight = match.group(0), match.group("weight")
        if text.startswith("\\"):
            pieces.append([text[1:], 1.0])
        elif text == "(":
            rounds.append(len(pieces))
        elif text == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            scale_from(rounds.pop(), _number(weight, prompt))
        elif text == ")" and rounds:
            scale_from(rounds.pop(), ROUND)
        elif text == "]" and squares:
            scale_from(squares.pop(), SQUARE)
        else:
            for index, part in enumerate(_BREAK.split(text)):
                if index:
                    pieces.append(["BREAK", BREAK_WEIGHT])
                pieces.append([part, 1.0])
    for start in rounds:
        scale_from(start, ROUND)
    for start in squares:
        scale_from(start, SQUARE)
    if not pieces:
        pieces = [["", 1.0]]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(text, weight) for text, weight in merged]


def _number(text: str, prompt: str) -> float:
    try:
        return float(text)
    except ValueError:  # upstream fails here with a bare ValueError
        raise ConfigError(
            f"the weight {text!r} in the prompt {prompt!r} is not a number; write e.g. (word:1.2)"
        ) from None


@dataclass(frozen=True)
class WeightedTokens:
    """A prompt's tokens (no start/end tokens) and each token's weight."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]

    def padded(self, length: int, end_id: int) -> WeightedTokens:
        """Padded with end tokens of weight 1 to `length` (never shortened)."""
        extra = max(length - len(self.ids), 0)
        return WeightedTokens(self.ids + (end_id,) * extra, self.weights + (1.0,) * extra)


def weighted_tokens(prompt: str, tokenize: Callable[[str], list[int]]) -> WeightedTokens:
    """Each parsed piece tokenized on its own by `tokenize` (text -> ids without start/end tokens)."""
    ids, weights = [], []
    for text, weight in parse_weights(prompt):
        piece = tokenize(text)
        ids += piece
        weights += [weight] * len(piece)
    return WeightedTokens(tuple(ids), tuple(weights))


def matched_pair(prompt: WeightedTokens, negative: WeightedTokens, end_id: int) -> tuple[WeightedTokens, ...]:
    """Prompt and negative prompt padded with end tokens to the longer one's length, as upstream does."""
    length = max(len(prompt.ids), len(negative.ids))
    return prompt.padded(length, end_id), negative.padded(length, end_id)


@dataclass(frozen=True)
class Chunk:
    ids: tuple[int, ...]  # start token, up to chunk_size tokens, end token
    weights: tuple[float, ...]  # 1.0 for the start and end tokens


def chunks(tokens: WeightedTokens, chunk_size: int, start_id: int, end_id: int) -> list[Chunk]:
    """Full chunks of `chunk_size` tokens, then the rest (possibly none) as a last, unpadded chunk."""
    result = []
    ids, weights = list(tokens.ids), list(tokens.weights)
    while len(ids) >= chunk_size:
        head, ids = ids[:chunk_size], ids[chunk_size:]
        head_weights, weights = weights[:chunk_size], weights[chunk_size:]
        result.append(Chunk((start_id, *head, end_id), (1.0, *head_weights, 1.0)))
    result.append(Chunk((start_id, *ids, end_id), (1.0, *weights, 1.0)))
    return result


def apply_weights(hidden: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """One chunk's embeddings [tokens, width] with its weights applied (float16 weights, as upstream)."""
    out = np.array(hidden, dtype=np.float32, copy=True)
    end = out[-1].copy()
    for index, weight in enumerate(weights):
        rounded = np.float16(weight)
        if rounded != 1.0:
            out[index] = end + (out[index] - end) * np.float32(rounded)
    return out
