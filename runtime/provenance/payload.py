"""The watermark's message: 32 bits (format version, generator id, operator tag), a CRC-16 and a convolutional code.

Coding, all textbook and all numpy:
- CRC-16/CCITT (polynomial x^16 + x^12 + x^5 + 1, initial value 0xFFFF; ITU-T V.41) over the 32 message bits, so
  that a decoded message is accepted only when it is self-consistent (a random one passes with p = 2^-16).
- A rate-1/3, constraint-length-7 convolutional code with the generators 133, 171, 165 (octal; the code of
  3GPP TS 36.212, 5.1.3.1), terminated with six zero tail bits: 48 + 6 input bits -> 162 coded bits.
- Soft-decision Viterbi decoding (A. J. Viterbi, "Error bounds for convolutional codes and an asymptotically
  optimum decoding algorithm", IEEE Trans. Inf. Theory 13(2), 1967): the correlations the detector measures
  for each coded bit are used as they are, not rounded to bits first, which is worth about 2 dB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MESSAGE_BITS = 32
CRC_BITS = 16
CONSTRAINT = 7
GENERATORS = (0o133, 0o171, 0o165)
TAIL = CONSTRAINT - 1
CODED_BITS = (MESSAGE_BITS + CRC_BITS + TAIL) * len(GENERATORS)  # 162

FORMAT_VERSION = 1

# Who made the image: one 12-bit id per output path. Unknown names map to 0.
GENERATOR_IDS = {"unknown": 0, "runtime": 1, "reference": 2, "demo": 3, "mark": 4, "server": 5}
GENERATOR_NAMES = {number: name for name, number in GENERATOR_IDS.items()}


@dataclass(frozen=True)
class Payload:
    """What the watermark carries. `tag` is free for the operator (a deployment or site number), default 0."""

    generator: int = 0
    version: int = FORMAT_VERSION
    tag: int = 0

    def __post_init__(self):
        for name, value, bits in (
            ("version", self.version, 4),
            ("generator", self.generator, 12),
            ("tag", self.tag, 16),
        ):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"payload {name} must fit in {bits} bits, got {value}")

    @classmethod
    def for_generator(cls, name: str, tag: int = 0) -> Payload:
        """`name` as written in an output record ("runtime (openvino)", "reference (PyTorch)", ...)."""
        first = re.match(r"\s*([a-z]*)", name.lower() if name else "")
        return cls(generator=GENERATOR_IDS.get(first.group(1), 0), tag=tag)

    @property
    def generator_name(self) -> str:
        return GENERATOR_NAMES.get(self.generator, f"id {self.generator}")

    def to_int(self) -> int:
        return (self.version << 28) | (self.generator << 16) | self.tag

    @classmethod
    def from_int(cls, value: int) -> Payload:
        return cls(version=value >> 28, generator=(value >> 16) & 0xFFF, tag=value & 0xFFFF)

    def to_dict(self) -> dict:
        return {"version": self.version, "generator": self.generator_name, "generator_id": self.generator,
                "tag": self.tag}  # fmt: skip


def _bits(value: int, count: int) -> np.ndarray:
    return np.array([(value >> (count - 1 - i)) & 1 for i in range(count)], dtype=np.uint8)


def _value(bits: np.ndarray) -> int:
    return int("".join(str(int(b)) for b in bits), 2) if len(bits) else 0


def crc16(bits: np.ndarray) -> int:
    register = 0xFFFF
    for bit in bits:
        top = (register >> 15) & 1
        register = (register << 1) & 0xFFFF
        if top ^ int(bit):
            register ^= 0x1021
    return register


def _trellis() -> tuple[np.ndarray, np.ndarray]:
    """next_state[state, bit] and outputs[state, bit, generator] of the encoder (state = the last 6 input bits)."""
    states = 1 << TAIL
    next_state = np.zeros((states, 2), dtype=np.int64)
    outputs = np.zeros((states, 2, len(GENERATORS)), dtype=np.uint8)
    for state in range(states):
        for bit in (0, 1):
            register = (bit << TAIL) | state  # newest bit in the most significant place
            next_state[state, bit] = register >> 1
            for g, generator in enumerate(GENERATORS):
                # octal generators name the newest tap as their most significant bit, as the register does
                outputs[state, bit, g] = bin(register & generator).count("1") & 1
    return next_state, outputs


NEXT_STATE, OUTPUTS = _trellis()


def encode(payload: Payload) -> np.ndarray:
    """The 162 coded bits (0/1) of a payload."""
    message = _bits(payload.to_int(), MESSAGE_BITS)
    data = np.concatenate([message, _bits(crc16(message), CRC_BITS), np.zeros(TAIL, np.uint8)])
    state, coded = 0, []
    for bit in data:
        coded.append(OUTPUTS[state, bit])
        state = NEXT_STATE[state, bit]
    return np.concatenate(coded)


def viterbi(soft: np.ndarray) -> np.ndarray:
    """Most likely input bits for soft values (positive = coded bit 1), the tail included."""
    steps = len(soft) // len(GENERATORS)
    received = soft[: steps * len(GENERATORS)].reshape(steps, len(GENERATORS))
    signs = OUTPUTS.astype(np.float64) * 2 - 1  # [state, bit, generator] as -1/+1
    half = NEXT_STATE.shape[0] // 2
    pairs = np.arange(half)
    metric = np.full(2 * half, -np.inf)
    metric[0] = 0.0
    survivors = np.zeros((steps, 2 * half), dtype=np.int64)
    for t in range(steps):
        branch = metric[:, None] + signs @ received[t]  # [state, bit]
        for bit in (0, 1):
            # states 2m and 2m+1 both lead to (bit << 5) | m with this input bit: keep the better path
            pair = branch[:, bit].reshape(half, 2)
            choice = pair.argmax(axis=1)
            targets = (bit * half) + pairs
            metric_next = pair[pairs, choice]
            survivors[t, targets] = 2 * pairs + choice
            if bit == 0:
                new_metric = np.empty_like(metric)
            new_metric[targets] = metric_next
        metric = new_metric
    state, bits = 0, np.zeros(steps, dtype=np.uint8)  # the tail brings the encoder back to state 0
    for t in range(steps - 1, -1, -1):
        bits[t] = state // half
        state = survivors[t, state]
    return bits


@dataclass(frozen=True)
class Decoded:
    payload: Payload | None  # None when the CRC does not match
    bit_errors: int  # coded bits whose measured sign disagrees with the decoded payload re-encoded


def decode(soft: np.ndarray) -> Decoded:
    bits = viterbi(soft)
    message, check = bits[:MESSAGE_BITS], bits[MESSAGE_BITS : MESSAGE_BITS + CRC_BITS]
    try:
        payload = Payload.from_int(_value(message)) if crc16(message) == _value(check) else None
    except ValueError:
        payload = None
    if payload is None:
        return Decoded(None, len(soft))
    return Decoded(payload, int(np.sum((soft > 0) != encode(payload).astype(bool))))
