"""What the orchestrator checks in a global state's bytes without the engine: that a canonical state
(``template.engine.checkpoint``'s format, version 1) is readable and every floating-point tensor in it is
finite. The orchestrator trains nothing and imports no torch (import-linter), so this reads the layout
with the standard library and numpy, in bounded slabs.

The layout, as ``template/engine/checkpoint.py`` documents it (integers little-endian)::

    b"TSWSTATE" | header_len u64 | header (JSON: {"format", "version", "meta", "tensors": [{"name",
    "dtype", "shape", "offset", "nbytes"}]}) | tensor bytes back to back | sha256 of all the above

A value is NaN or ±Inf exactly when its exponent bits are all ones, so each float dtype is checked by
masking its raw little-endian words (bfloat16 included, which numpy lacks).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Optional

import numpy as np

__all__ = ["DTYPE_SIZES", "MAGIC", "is_state", "state_problem"]

MAGIC = b"TSWSTATE"
FORMAT = "tensorswarm.state"
VERSION = 1
MAX_HEADER_BYTES = 64 * 1024 * 1024  # the engine's cap
_PREFIX = len(MAGIC) + 8
_DIGEST = 32
SLAB = 1 << 22  # elements per finiteness check: bounds the temporary arrays at a few MiB

# Wire dtype name → bytes per element (the engine's DTYPES; a unit test keeps them equal).
DTYPE_SIZES = {
    "float64": 8,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
# Float dtype → (the raw word to read, the exponent mask: all ones means NaN or ±Inf).
_EXPONENT = {
    "float64": ("<u8", 0x7FF0000000000000),
    "float32": ("<u4", 0x7F800000),
    "bfloat16": ("<u2", 0x7F80),
    "float16": ("<u2", 0x7C00),
}


def is_state(data: bytes) -> bool:
    """Whether ``data`` claims to be a canonical state (starts with the format's magic)."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def _entries(header: Any, payload_len: int) -> list[tuple[str, str, int, int]]:
    """(name, dtype, offset, count) per tensor, after checking the layout; ValueError with the reason."""
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"not a version-{VERSION} {FORMAT} header")
    tensors = header.get("tensors")
    if not isinstance(tensors, list):
        raise ValueError("tensors must be a list")
    out, offset = [], 0
    for i, e in enumerate(tensors):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise ValueError(f"tensor entry {i} is malformed")
        name, dtype, shape = e["name"], e.get("dtype"), e.get("shape")
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{name}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise ValueError(f"{name}: bad shape {shape!r}")
        count = math.prod(shape)
        if e.get("nbytes") != count * DTYPE_SIZES[dtype] or e.get("offset") != offset:
            raise ValueError(f"{name}: offset or size does not match the layout")
        if offset + e["nbytes"] > payload_len:
            raise ValueError(f"{name}: data runs past the end")
        out.append((name, dtype, offset, count))
        offset += e["nbytes"]
    if offset != payload_len:
        raise ValueError(f"{payload_len - offset} unexpected bytes after the last tensor")
    return out


def _finite(payload: memoryview, dtype: str, offset: int, count: int) -> bool:
    word, mask = _EXPONENT[dtype]
    size = DTYPE_SIZES[dtype]
    for start in range(0, count, SLAB):
        n = min(SLAB, count - start)
        raw = np.frombuffer(payload, dtype=word, count=n, offset=offset + start * size)
        if bool(((raw & np.array(mask, dtype=word)) == mask).any()):
            return False
    return True


def state_problem(data: bytes) -> Optional[str]:
    """None if ``data`` is a readable canonical state whose floating-point tensors are all finite; else
    why not, in one line ("not a readable state: …" or "<tensor>: NaN or Inf")."""
    data = bytes(data)
    if len(data) < _PREFIX + _DIGEST or not is_state(data):
        return "not a readable state: no tensorswarm state magic"
    body = memoryview(data)[:-_DIGEST]
    if hashlib.sha256(body).digest() != data[-_DIGEST:]:
        return "not a readable state: checksum mismatch (corrupted or truncated)"
    header_len = int.from_bytes(data[len(MAGIC) : _PREFIX], "little")
    if header_len > MAX_HEADER_BYTES or _PREFIX + header_len > len(body):
        return f"not a readable state: header length {header_len} does not fit"
    try:
        header = json.loads(bytes(body[_PREFIX : _PREFIX + header_len]).decode("ascii"))
        payload = body[_PREFIX + header_len :]
        entries = _entries(header, len(payload))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return f"not a readable state: {error}"
    bad = [
        name
        for name, dtype, offset, count in entries
        if dtype in _EXPONENT and not _finite(payload, dtype, offset, count)
    ]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"{', '.join(bad[:3])}{more}: NaN or Inf"
    return None
