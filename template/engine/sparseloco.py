"""The ``sparseloco`` compression scheme's codec (see :mod:`template.engine.compression` for the wire
format it lives in): chunked top-k with 2-bit values, offsets packed in the fewest bits a chunk needs.
``encode`` and ``decode`` are each other's inverse up to the 2-bit rounding; ``problem`` checks parts
from an untrusted peer (exact lengths, canonical packing, offsets inside and increasing within their
chunk, magnitudes 0 ≤ lo ≤ hi)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def topk_count(numel: int, fraction: float) -> int:
    """How many values top-k keeps: ``clamp(round(fraction·numel), 1, numel)`` (0 for an empty tensor)."""
    if numel == 0:
        return 0
    return min(numel, max(1, round(fraction * numel)))


def _pack_bits(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Non-negative ints < 2**width, each in ``width`` bits, least significant first, into uint8 bytes
    (the last byte zero-padded)."""
    bits = (codes.to(torch.int64)[:, None] >> torch.arange(width)) & 1
    flat = bits.reshape(-1)
    flat = F.pad(flat, (0, -flat.numel() % 8)).view(-1, 8)
    return (flat << torch.arange(8)).sum(dim=1).to(torch.uint8)


def _unpack_bits(packed: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """The ``count`` ``width``-bit ints :func:`_pack_bits` packed (int64)."""
    bits = (packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1
    flat = bits.reshape(-1)[: count * width].view(count, width)
    return (flat << torch.arange(width)).sum(dim=1)


def _chunk_layout(n: int, chunk_size: int, fraction: float) -> tuple[int, list[int], list[int]]:
    """sparseloco's layout of an n-value tensor: (offset width in bits, each chunk's length, each
    chunk's kept count)."""
    lengths = [min(chunk_size, n - start) for start in range(0, n, chunk_size)]
    width = max(1, (min(chunk_size, n) - 1).bit_length()) if n else 1
    return width, lengths, [topk_count(length, fraction) for length in lengths]


def _packed_len(count: int, width: int) -> int:
    return -(-count * width // 8)


def encode(x: torch.Tensor, fraction: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed 2-bit codes, packed chunk offsets, (lo, hi) per chunk) of the flat float32 ``x``."""
    n = x.numel()
    width, lengths, kept = _chunk_layout(n, chunk_size, fraction)
    offsets, codes, scales = [], [], []
    start = 0
    # Chunks of one length (all but possibly the last) are done together, row by row.
    for length, k, rows in _runs(lengths, kept):
        block = x[start : start + rows * length].view(rows, length)
        start += rows * length
        idx = torch.topk(block.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
        vals = block.gather(1, idx)
        mags = vals.abs()
        order = mags.argsort(dim=1, stable=True)
        half = k // 2
        upper = torch.zeros_like(idx, dtype=torch.bool)
        upper.scatter_(1, order[:, half:], True)
        sorted_mags = mags.gather(1, order)
        hi = sorted_mags[:, half:].mean(dim=1)
        lo = sorted_mags[:, :half].mean(dim=1) if half else hi
        offsets.append(idx.reshape(-1))
        codes.append(((vals < 0).to(torch.int64) | (upper.to(torch.int64) << 1)).reshape(-1))
        scales.append(torch.stack([lo, hi], dim=1).reshape(-1))
    cat = lambda parts, dtype: torch.cat(parts) if parts else torch.empty(0, dtype=dtype)
    return (
        _pack_bits(cat(codes, torch.int64), 2),
        _pack_bits(cat(offsets, torch.int64), width),
        cat(scales, torch.float32).to(torch.float32),
    )


def _runs(lengths: list[int], kept: list[int]):
    """(length, k, how many consecutive chunks) for runs of equal chunks."""
    out: list[list[int]] = []
    for length, k in zip(lengths, kept):
        if out and out[-1][0] == length and out[-1][1] == k:
            out[-1][2] += 1
        else:
            out.append([length, k, 1])
    return [tuple(run) for run in out]


def decode(n: int, values, indices, scales, chunk_size: int, fraction: float) -> torch.Tensor:
    """The dense float32 tensor (n values) that :func:`encode`'s parts stand for."""
    width, lengths, kept = _chunk_layout(n, chunk_size, fraction)
    total = sum(kept)
    offsets = _unpack_bits(indices, width, total)
    codes = _unpack_bits(values, 2, total)
    starts = torch.repeat_interleave(
        torch.tensor([i * chunk_size for i in range(len(lengths))], dtype=torch.int64),
        torch.tensor(kept, dtype=torch.int64),
    )
    chunk_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(kept, dtype=torch.int64))
    scales = scales.view(-1, 2)
    mags = torch.where((codes >> 1) == 1, scales[chunk_of, 1], scales[chunk_of, 0])
    dense = torch.zeros(n, dtype=torch.float32)
    dense[starts + offsets] = torch.where((codes & 1) == 1, -mags, mags)
    return dense


def problem(n: int, parts: dict, chunk_size: int, fraction: float, max_scale: float) -> Optional[str]:
    """One sparseloco tensor from an untrusted peer: exact lengths, dtypes, canonical packing (zero
    padding bits: one encoding per contribution), offsets strictly increasing within each chunk and
    inside it, magnitudes finite with 0 ≤ lo ≤ hi."""
    width, lengths, kept = _chunk_layout(n, chunk_size, fraction)
    total = sum(kept)
    indices, scales, values = parts["indices"], parts["scales"], parts["values"]
    for part, t, dtype, count in (
        ("indices", indices, torch.uint8, _packed_len(total, width)),
        ("values", values, torch.uint8, _packed_len(total, 2)),
        ("scales", scales, torch.float32, 2 * len(lengths)),
    ):
        if t.dtype != dtype:
            return f"{part} are {t.dtype}, expected {dtype}"
        if t.numel() != count:
            return f"{t.numel()} {part}, expected {count}"
    offsets = _unpack_bits(indices, width, total)
    if not torch.equal(_pack_bits(offsets, width), indices) or not torch.equal(
        _pack_bits(_unpack_bits(values, 2, total), 2), values
    ):
        return "nonzero padding bits"
    if total:
        chunk_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(kept, dtype=torch.int64))
        if bool((offsets >= torch.tensor(lengths, dtype=torch.int64)[chunk_of]).any()):
            return "offset beyond its chunk"
        same = chunk_of[1:] == chunk_of[:-1]
        if bool(((offsets[1:] <= offsets[:-1]) & same).any()):
            return "offsets must be strictly increasing within a chunk"
    pairs = scales.double().view(-1, 2)
    if pairs.numel() and not bool(
        ((pairs[:, 0] >= 0) & (pairs[:, 0] <= pairs[:, 1]) & (pairs[:, 1] <= max_scale)).all()
    ):
        return f"magnitudes must satisfy 0 <= lo <= hi <= {max_scale:.3g}"
    return None
