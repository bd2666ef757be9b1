"""Weighted prompts in PyTorch, as InstantID's full pipeline encodes them: the oracle for the runtime's.

Follows `LongPromptWeight.get_weighted_text_embeddings_sdxl` (instantX-research/InstantID,
pipeline_stable_diffusion_xl_instantid_full.py) point by point, with transformers' tokenizer and the torch text
encoders: each parsed piece tokenized on its own with the FIRST tokenizer (for both encoders, as upstream);
prompt and negative prompt padded with the end token to the same length; unpadded chunks of at most 75 tokens
between start and end tokens, each run through both encoders at its own length; float16 weights applied to
the concatenated hidden states relative to the chunk's last token; the pooled vector of the last chunk. The
parser and the chunking are the runtime's pure functions (runtime/prompt_weights.py), which
tests/test_prompt_weights.py holds to upstream's parser.
"""

from __future__ import annotations

import torch

from ..runtime.prompt_weights import Chunk, chunks, matched_pair, weighted_tokens
from .reference_models import TextModels


def _encode_chunk(text: TextModels, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
    """([tokens, width] weighted hidden states of both encoders, [1, pooled]) for one chunk."""
    ids = torch.tensor([chunk.ids], dtype=torch.long)
    first = text.encoders[0](ids, output_hidden_states=True)
    second = text.encoders[1](ids, output_hidden_states=True)
    embedding = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1).squeeze(0)
    weights = torch.tensor(chunk.weights, dtype=torch.float16)
    for index in range(len(weights)):
        if weights[index] != 1.0:
            embedding[index] = embedding[-1] + (embedding[index] - embedding[-1]) * weights[index]
    return embedding, second.text_embeds


def weighted_text_embeddings(text: TextModels, prompt: str, negative: str) -> tuple[torch.Tensor, ...]:
    """(prompt hidden [1, n, width], negative hidden [1, n, width], prompt pooled, negative pooled)."""
    tokenizer = text.tokenizers[0]

    def tokenize(piece: str) -> list[int]:
        return tokenizer(piece, truncation=False).input_ids[1:-1]

    pair = matched_pair(weighted_tokens(prompt, tokenize), weighted_tokens(negative, tokenize),
                        tokenizer.eos_token_id)  # fmt: skip
    results = []
    for tokens in pair:
        encoded = [_encode_chunk(text, chunk) for chunk in chunks(tokens, 75, tokenizer.bos_token_id,
                                                                  tokenizer.eos_token_id)]  # fmt: skip
        results.append((torch.cat([hidden for hidden, _ in encoded])[None], encoded[-1][1]))
    (hidden, pooled), (negative_hidden, negative_pooled) = results
    return hidden, negative_hidden, pooled, negative_pooled
