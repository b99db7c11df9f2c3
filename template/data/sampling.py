"""Which windows a miner trains on and a validator holds out: pure functions of public values, drawn from
:class:`DeterministicRNG` (SHA-256 in counter mode, identical on every machine)."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from template.data.checks import as_bytes, check_int
from template.wire.dataset import DatasetError, DatasetManifest, ShardInfo

# --------------------------------------------------------------------------- sampling


class DeterministicRNG:
    """SHA-256 in counter mode: the same stream for the same key on every machine, forever.

    Block ``i`` is ``sha256(sha256(key) || i as 8 bytes big-endian)``; each block yields four
    big-endian uint64s. ``key`` is the canonical JSON (sorted keys, no whitespace, ASCII) of
    ``[domain, *parts]``, with parts restricted to ints and strings so the encoding is unambiguous.
    :meth:`below` maps draws to ``[0, n)`` by rejection sampling, so it is exactly uniform.
    """

    def __init__(self, domain: str, *parts: int | str):
        for part in (domain, *parts):
            if isinstance(part, bool) or not isinstance(part, (int, str)):
                raise DatasetError(f"RNG key parts must be ints or strings, got {part!r}")
        key = json.dumps([domain, *parts], separators=(",", ":"), ensure_ascii=True).encode("ascii")
        self._key = hashlib.sha256(key).digest()
        self._counter = 0
        self._buffer: list[int] = []

    def uint64(self) -> int:
        if not self._buffer:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            # Reversed so pop() hands them out in block order.
            self._buffer = [int.from_bytes(block[i : i + 8], "big") for i in (24, 16, 8, 0)]
        return self._buffer.pop()

    def below(self, n: int) -> int:
        if n < 1 or n > 2**64:
            raise DatasetError(f"cannot draw below {n}")
        limit = 2**64 - (2**64 % n)  # largest multiple of n that fits: no modulo bias
        while True:
            x = self.uint64()
            if x < limit:
                return x % n


# token width in bytes -> its little-endian numpy dtype
TOKEN_DTYPES = {1: np.dtype(np.uint8), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def _draw_windows(
    rng: DeterministicRNG, shards: Sequence[ShardInfo], count: int, seq_len: int, what: str, unit: int = 1
) -> list[tuple[int, int]]:
    # Uniform over every window of seq_len+1 tokens (``unit`` bytes each) that lies inside one shard: each
    # eligible shard of t tokens offers t - seq_len start offsets; draw one position in their concatenation.
    # Offsets are in bytes; with unit 1 (bytes) this is the draw byte datasets always had.
    window = seq_len + 1
    eligible = [s for s in shards if s.size // unit >= window]
    if not eligible:
        largest = max((s.size // unit for s in shards), default=0)
        raise DatasetError(
            f"no {what} shard holds a window of seq_len+1 = {window} tokens (the largest holds {largest}): "
            f"use a smaller seq_len or build the dataset with bigger shards (--shard-size-kb)"
        )
    ends: list[int] = []
    total = 0
    for s in eligible:
        total += s.size // unit - seq_len
        ends.append(total)
    out: list[tuple[int, int]] = []
    for _ in range(count):
        u = rng.below(total)
        k = bisect.bisect_right(ends, u)
        start = ends[k - 1] if k else 0
        out.append((eligible[k].index, (u - start) * unit))
    return out


def batch_offsets(
    manifest: DatasetManifest,
    *,
    seed: int,
    round: int,
    hotkey: str,
    step: int,
    batch_size: int,
    seq_len: int,
) -> list[tuple[int, int]]:
    """``(shard_index, byte_offset)`` of each sequence of a miner's batch, from training shards only.

    A pure function of its arguments, so a validator recomputes exactly what miner ``hotkey`` trained
    on at inner step ``step`` of round ``round``. Each window of ``seq_len + 1`` bytes (inputs plus the
    shifted targets) lies wholly inside one shard; shards shorter than that are skipped. Windows are
    uniform over all such windows of the training range; sequence ``j`` is the ``j``-th draw, so a
    bigger batch extends a smaller one.
    """
    check_int(seed, "seed")
    check_int(round, "round", minimum=0)
    check_int(step, "step", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(seq_len, "seq_len", minimum=1)
    if not isinstance(hotkey, str) or not hotkey:
        raise DatasetError(f"hotkey must be a non-empty string, got {hotkey!r}")
    rng = DeterministicRNG("tensorswarm/batch/v1", seed, round, hotkey, step)
    return _draw_windows(rng, manifest.train_shards, batch_size, seq_len, "training", manifest.token_bytes)


def heldout_offsets(
    manifest: DatasetManifest, *, seed: int, round: int, count: int, seq_len: int
) -> list[tuple[int, int]]:
    """``count`` validation windows of ``seq_len + 1`` bytes for round ``round``, from held-out shards only."""
    check_int(seed, "seed")
    check_int(round, "round", minimum=0)
    check_int(count, "count", minimum=1)
    check_int(seq_len, "seq_len", minimum=1)
    rng = DeterministicRNG("tensorswarm/heldout/v1", seed, round)
    return _draw_windows(rng, manifest.heldout_shards, count, seq_len, "held-out", manifest.token_bytes)


def windows_to_tensor(
    shards: Callable[[int], bytes],
    offsets: Sequence[tuple[int, int]],
    seq_len: int,
    token_bytes: int = 1,
    vocab_size: int = 256,
) -> torch.Tensor:
    """The windows as a ``LongTensor`` of shape ``(len(offsets), seq_len + 1)``, one token per entry
    (``token_bytes`` little-endian bytes each: a manifest's ``token_bytes``; every token must be below
    ``vocab_size``, or :class:`DatasetError`).

    ``shards(index)`` returns a shard's bytes (e.g. :meth:`ShardCache.reader`); each shard is asked for
    once per call. Use ``x[:, :-1]`` as inputs and ``x[:, 1:]`` as targets.
    """
    seq_len = check_int(seq_len, "seq_len", minimum=1)
    if token_bytes not in TOKEN_DTYPES:
        raise DatasetError(f"token_bytes must be 1, 2 or 4, got {token_bytes!r}")
    dtype = TOKEN_DTYPES[token_bytes]
    window = seq_len + 1
    rows = np.empty((len(offsets), window), dtype=dtype)
    loaded: dict[int, bytes] = {}
    for row, (index, offset) in enumerate(offsets):
        if index not in loaded:
            loaded[index] = as_bytes(shards(index), f"shard {index}")
        data = loaded[index]
        if (
            isinstance(offset, bool)
            or not isinstance(offset, (int, np.integer))
            or offset < 0
            or offset % token_bytes
            or offset + window * token_bytes > len(data)
        ):
            raise DatasetError(
                f"window at offset {offset!r} of {window} tokens does not fit in shard {index} ({len(data)} bytes)"
            )
        rows[row] = np.frombuffer(data, dtype=dtype, count=window, offset=int(offset))
    if rows.size and int(rows.max()) >= vocab_size:
        raise DatasetError(f"a token {int(rows.max())} is outside the vocabulary of {vocab_size}")
    return torch.from_numpy(rows.astype(np.int64))
