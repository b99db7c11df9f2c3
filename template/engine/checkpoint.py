"""Canonical, deterministic serialization of a model state (name → tensor) plus small JSON metadata.

``torch.save`` writes a zip whose bytes depend on more than the tensors (pickle protocol details,
storage sharing), so two ranks holding identical weights could produce different files. Here the
bytes are a function of the tensors alone, so every rank computes the same :func:`state_hash` and the
hash can name the global state in receipts, votes and content-addressed storage.

Layout (version 1), all integers little-endian::

    b"TSWSTATE"                       8 bytes, magic
    header_len                        u64
    header                            header_len bytes of canonical JSON (sorted keys, no spaces,
                                      ASCII only): {"format", "version", "meta",
                                      "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}]}
    data                              each tensor's raw little-endian C-contiguous bytes, back to back,
                                      in sorted name order (offset = sum of the previous nbytes)
    checksum                          32 bytes, SHA-256 of everything above

Exactly one encoding is accepted per state: :func:`loads` re-derives the header and the layout and
refuses anything that :func:`dumps` would not have written (so ``dumps(loads(b)) == b``). It parses
untrusted bytes: every failure is a :class:`CheckpointError` with a reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from template.files import atomic_write

__all__ = [
    "CheckpointError",
    "DTYPES",
    "dumps",
    "loads",
    "state_hash",
    "hash_state",
    "save",
    "load",
    "read_meta",
]

MAGIC = b"TSWSTATE"
FORMAT = "tensorswarm.state"
VERSION = 1
MAX_HEADER_BYTES = 64 * 1024 * 1024  # a header is ~100 bytes per tensor; this is far above any model
MAX_NDIM = 32
_PREFIX = len(MAGIC) + 8
_DIGEST = 32

# Wire name → dtype. Only plain numeric dtypes whose raw bytes mean the same thing everywhere.
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CheckpointError(ValueError):
    """The bytes are not a valid state (truncated, corrupted, non-canonical, wrong hash, …)."""


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return b""
    raw = flat.view(torch.uint8).numpy()  # reinterpret (works for bfloat16, which numpy lacks)
    if sys.byteorder == "big" and t.element_size() > 1:  # the wire is little-endian
        raw = raw.reshape(-1, t.element_size())[:, ::-1]
    return raw.tobytes()


def _tensor_from_bytes(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if len(raw) == 0:
        return torch.empty(shape, dtype=dtype)
    arr = np.frombuffer(raw, dtype=np.uint8)
    size = torch.empty((), dtype=dtype).element_size()
    if sys.byteorder == "big" and size > 1:
        arr = arr.reshape(-1, size)[:, ::-1]
    # Copy into memory torch owns (frombuffer on read-only bytes would alias them).
    u8 = torch.from_numpy(np.ascontiguousarray(arr).copy())
    return u8.view(dtype).reshape(shape)


def _prepare(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"state must be a mapping name -> tensor, not {type(state_dict).__name__}")
    items = []
    for name, t in state_dict.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{name}: expected a tensor, got {type(t).__name__}")
        if t.layout != torch.strided or t.is_quantized:
            raise CheckpointError(f"{name}: only dense tensors can be stored (layout {t.layout})")
        if t.dtype not in _DTYPE_NAMES:
            raise CheckpointError(f"{name}: unsupported dtype {t.dtype}; supported: {', '.join(DTYPES)}")
        if t.dim() > MAX_NDIM:
            raise CheckpointError(f"{name}: {t.dim()} dimensions (at most {MAX_NDIM})")
        t = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        items.append((name, t))
    items.sort(key=lambda kv: kv[0])
    return items


def dumps(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> bytes:
    """The canonical bytes of ``state_dict`` (any order, any device) and optional JSON ``meta``.

    ``meta`` must be a JSON object of plain values (no NaN/Infinity); it is stored with sorted keys.
    Identical tensors and meta give identical bytes on every machine.
    """
    items = _prepare(state_dict)
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise CheckpointError("meta must be a JSON object (a mapping)")
    entries, chunks, offset = [], [], 0
    for name, t in items:
        raw = _tensor_bytes(t)
        entries.append(
            {"name": name, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "offset": offset, "nbytes": len(raw)}
        )
        chunks.append(raw)
        offset += len(raw)
    try:
        header = _canonical_json({"format": FORMAT, "version": VERSION, "meta": dict(meta), "tensors": entries})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"meta is not plain JSON: {e}") from None
    body = b"".join([MAGIC, len(header).to_bytes(8, "little"), header, *chunks])
    return body + hashlib.sha256(body).digest()


def state_hash(data: bytes) -> str:
    """SHA-256 hex of serialized state bytes: the name of a state."""
    return hashlib.sha256(data).hexdigest()


def hash_state(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """``state_hash(dumps(state_dict, meta))``."""
    return state_hash(dumps(state_dict, meta))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_header(header_bytes: bytes) -> dict:
    def no_constants(name: str) -> Any:
        raise CheckpointError(f"header contains {name}")

    try:
        header = json.loads(header_bytes.decode("ascii"), parse_constant=no_constants)
    except CheckpointError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or set(header) != {"format", "version", "meta", "tensors"}:
        raise CheckpointError("header must be an object with exactly format, version, meta, tensors")
    if header["format"] != FORMAT:
        raise CheckpointError(f"not a tensorswarm state (format {header['format']!r})")
    if header["version"] != VERSION or not _is_int(header["version"]):
        raise CheckpointError(f"unsupported state version {header['version']!r} (this reader knows {VERSION})")
    if not isinstance(header["meta"], dict):
        raise CheckpointError("meta must be an object")
    if not isinstance(header["tensors"], list):
        raise CheckpointError("tensors must be a list")
    try:
        canonical = _canonical_json(header)
    except (ValueError, RecursionError) as e:  # e.g. a number like 1e999 parsed as inf
        raise CheckpointError(f"header cannot be re-encoded: {e}") from None
    if canonical != header_bytes:
        raise CheckpointError("header is not in canonical form")
    return header


def loads(
    data: bytes | bytearray | memoryview,
    expected_sha256: str | None = None,
    *,
    require_finite: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse bytes written by :func:`dumps` → ``(state_dict, meta)`` (tensors on CPU, sorted names).

    Refuses with :class:`CheckpointError`: a SHA-256 other than ``expected_sha256`` (when given), a
    bad magic, a truncated or corrupted body (checksum), a non-canonical header or layout, unknown
    dtypes, bool bytes other than 0/1, and — with ``require_finite`` — NaN or ±Inf in float tensors.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if expected_sha256 is not None:
        got = state_hash(data)
        if got != str(expected_sha256).lower():
            raise CheckpointError(f"sha256 mismatch: expected {expected_sha256}, got {got}")
    if len(data) < _PREFIX + _DIGEST:
        raise CheckpointError(f"truncated: {len(data)} bytes is shorter than any state")
    if data[: len(MAGIC)] != MAGIC:
        raise CheckpointError("not a tensorswarm state (bad magic)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError("corrupted or truncated: checksum mismatch")
    header_len = int.from_bytes(data[len(MAGIC) : _PREFIX], "little")
    if header_len > MAX_HEADER_BYTES or _PREFIX + header_len > len(body):
        raise CheckpointError(f"header length {header_len} does not fit in {len(body)} bytes")
    header = _parse_header(body[_PREFIX : _PREFIX + header_len])
    payload = memoryview(body)[_PREFIX + header_len :]

    state: dict[str, torch.Tensor] = {}
    offset, previous = 0, None
    for i, e in enumerate(header["tensors"]):
        if not isinstance(e, dict) or set(e) != {"name", "dtype", "shape", "offset", "nbytes"}:
            raise CheckpointError(f"tensor entry {i} must have exactly name, dtype, shape, offset, nbytes")
        name, dtype_name, shape = e["name"], e["dtype"], e["shape"]
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"tensor entry {i}: name must be a non-empty string")
        if previous is not None and not name > previous:
            raise CheckpointError(f"tensor names must be unique and sorted ({previous!r} then {name!r})")
        previous = name
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise CheckpointError(f"{name}: unknown dtype {dtype_name!r}")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(s) and s >= 0 for s in shape):
            raise CheckpointError(f"{name}: shape must be a list of at most {MAX_NDIM} non-negative ints")
        dtype = DTYPES[dtype_name]
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if e["nbytes"] != nbytes or not _is_int(e["nbytes"]):
            raise CheckpointError(f"{name}: nbytes {e['nbytes']!r} does not match shape {shape} of {dtype_name}")
        if e["offset"] != offset or not _is_int(e["offset"]):
            raise CheckpointError(f"{name}: offset {e['offset']!r}, expected {offset}")
        if offset + nbytes > len(payload):
            raise CheckpointError(f"{name}: data runs past the end ({offset + nbytes} > {len(payload)} bytes)")
        t = _tensor_from_bytes(bytes(payload[offset : offset + nbytes]), dtype, tuple(shape))
        if dtype == torch.bool and t.numel() and int(t.view(torch.uint8).max()) > 1:
            raise CheckpointError(f"{name}: bool tensor holds bytes other than 0 and 1")
        if require_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{name}: contains NaN or Inf")
        state[name] = t
        offset += nbytes
    if offset != len(payload):
        raise CheckpointError(f"{len(payload) - offset} unexpected bytes after the last tensor")
    return state, header["meta"]


def save(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """Write ``dumps(state_dict, meta)`` atomically (temp file, fsync, rename); returns its sha256."""
    data = dumps(state_dict, meta)
    atomic_write(path, data)
    return state_hash(data)


def load(
    path: str | os.PathLike, expected_sha256: str | None = None, *, require_finite: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`loads` of a file written by :func:`save`."""
    return loads(Path(path).read_bytes(), expected_sha256, require_finite=require_finite)


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The meta of the state file at ``path`` from its header alone (no checksum, no tensors: for
    picking a file cheaply, before :func:`load` checks it whole), or None when it is not a readable state."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX)
            if len(prefix) != _PREFIX or prefix[: len(MAGIC)] != MAGIC:
                return None
            header_len = int.from_bytes(prefix[len(MAGIC) :], "little")
            if header_len > MAX_HEADER_BYTES:
                return None
            header = _parse_header(f.read(header_len))
    except (OSError, CheckpointError):
        return None
    return header["meta"]
