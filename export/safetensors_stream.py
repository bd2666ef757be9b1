"""Write a .safetensors file one tensor at a time, so a 5 GB checkpoint never sits in memory at once.

The format is an 8-byte little-endian header length, a JSON header of names, dtypes, shapes and byte
offsets, then the raw little-endian tensor bytes in header order.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16"}


def safetensors_header(
    specs: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, metadata: dict[str, str] | None
) -> tuple[bytes, int]:
    """(the padded JSON header, the data byte count) for tensors laid out in the order of `specs`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    header, offset = {}, 0
    for name, shape in specs:
        size = math.prod(shape) * itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata is not None:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % 8), offset


def write_safetensors(
    path: Path,
    specs: Iterable[tuple[str, tuple[int, ...]]],
    dtype: torch.dtype,
    make: Callable[[str, tuple[int, ...]], torch.Tensor],
    metadata: dict[str, str] | None = None,
    with_format: bool = True,
) -> int:
    """Write tensors `make(name, shape)` (cast to `dtype`) in the order of `specs`; returns the byte size.

    The metadata is {"format": "pt", **metadata}, or exactly `metadata` (None: none) when not `with_format`.
    """
    specs = [(name, tuple(shape)) for name, shape in specs]
    encoded, data_bytes = safetensors_header(
        specs, dtype, {"format": "pt", **(metadata or {})} if with_format else metadata
    )
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape in specs:
            tensor = make(name, shape).to(dtype).contiguous()
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name}: made shape {tuple(tensor.shape)}, expected {shape}")
            f.write(tensor.numpy().tobytes())
    return 8 + len(encoded) + data_bytes
