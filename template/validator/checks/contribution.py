"""Contribution checks: are the served bytes the miner's signed, well-formed pseudo-gradient?

Their sha256 must be the one the receipt signs; they must parse strictly against the model's parameter
spec and the run's compression (:meth:`Compressed.from_bytes` with the honest size as the cap, the same
check the miners' exchange applies); the decompressed Δ must be finite; and its L2 norm must be the one
the receipt claims.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.engine.aggregation import vector_norm
from template.engine.compression import DEFAULT_CHUNK_SIZE, Compressed, CompressionError
from template.wire.receipts import Receipt

__all__ = ["NORM_REL_TOL", "contribution_problems"]

NORM_REL_TOL = 1e-6  # the receipt's norm is vector_norm() of the same bytes (bit-exact); JSON round-trips floats


def contribution_problems(
    receipt: Receipt,
    data: bytes,
    *,
    spec: Mapping[str, tuple[int, ...]],
    training: TrainingConfig,
    max_bytes: int,
) -> tuple[list[str], Optional[dict[str, torch.Tensor]], Optional[float]]:
    """(problems, Δ, its norm) for the bytes ``data`` served with ``receipt``. Δ and its norm are None
    when the bytes cannot be attributed or decoded; a norm that differs from the claim is a problem but
    still returns Δ (the bytes themselves are sound)."""
    if hashlib.sha256(data).hexdigest() != receipt.contribution_sha256:
        return ["contribution does not match the receipt's sha256"], None, None
    problems = []
    if len(data) != receipt.contribution_bytes:
        problems.append(f"contribution is {len(data)} bytes, the receipt says {receipt.contribution_bytes}")
    try:
        parsed = Compressed.from_bytes(
            data,
            spec,
            scheme=training.compression,
            fraction=training.topk_fraction,
            chunk_size=DEFAULT_CHUNK_SIZE,
            max_bytes=max_bytes,
        )
    except CompressionError as e:
        return problems + [f"malformed contribution: {e}"], None, None
    delta = parsed.decompress()
    if not all(bool(torch.isfinite(t).all()) for t in delta.values()):
        return problems + ["contribution is not finite"], None, None
    norm = vector_norm(delta)
    if not math.isfinite(norm):
        return problems + ["contribution norm is not finite"], None, None
    claimed = receipt.contribution_norm
    if claimed is not None and abs(claimed - norm) > NORM_REL_TOL * max(abs(norm), 1e-12):
        problems.append(f"receipt claims norm {claimed:.6g}, the contribution's is {norm:.6g}")
    return problems, delta, norm
