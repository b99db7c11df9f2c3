"""I32F32-faithful matrix helpers for the Yuma epoch (upstream ``epoch/math.rs``), and u16 storage forms.

Upstream computes in ``I32F32`` and each multiply and divide truncates toward
−∞; every helper here keeps its values on that 2⁻³² grid through :func:`_fx`
(see "Fixed-point fidelity" in :mod:`utils.localnet.yuma`). The names keep
upstream's function names in their docstrings so the port can be checked
line by line; :mod:`utils.localnet.yuma` re-exports the public ones.
"""

from __future__ import annotations

import numpy as np

U16_MAX = 65535
# I32F32 has 32 fractional bits; every product/quotient is truncated onto this grid.
_FRAC = float(2**32)


# ----------------------------------------------------------------------------
# I32F32-faithful helpers (math.rs). Values stay on the 2^-32 grid.
# ----------------------------------------------------------------------------


def _fx(x):
    """Truncate toward −∞ onto the I32F32 grid (what every fixed mul/div does)."""
    return np.floor(np.asarray(x, dtype=np.float64) * _FRAC) / _FRAC


def _div(a: np.ndarray, b) -> np.ndarray:
    """``a.safe_div(b)``: truncated quotient, 0 where the divisor is 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.broadcast_to(np.asarray(b, dtype=np.float64), a.shape)
    out = np.zeros_like(a)
    nz = b != 0
    out[nz] = _fx(a[nz] / b[nz])
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    """``inplace_normalize``: sum to 1, left unchanged when the sum is 0."""
    total = x.sum()
    if total == 0:
        return x.copy()
    return _fx(x / total)


def _row_normalize(m: np.ndarray) -> np.ndarray:
    """``inplace_row_normalize_sparse``: only rows with a positive sum."""
    sums = m.sum(axis=1, keepdims=True)
    return np.where(sums > 0, _div(m, np.where(sums > 0, sums, 1.0)), m)


def _col_normalize(m: np.ndarray) -> np.ndarray:
    """``inplace_col_normalize_sparse``: only columns with a non-zero sum."""
    sums = m.sum(axis=0, keepdims=True)
    return np.where(sums != 0, _div(m, np.where(sums != 0, sums, 1.0)), m)


def _col_max_upscale(m: np.ndarray) -> np.ndarray:
    """``inplace_col_max_upscale_sparse``: column max becomes 1."""
    maxes = np.maximum(m.max(axis=0, keepdims=True), 0.0) if m.size else m
    return np.where(maxes != 0, _div(m, np.where(maxes != 0, maxes, 1.0)), m)


def _matmul(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``matmul_sparse``: r_j = Σ_i trunc(v_i · m_ij); sums of grid values are exact."""
    return _fx(v[:, None] * m).sum(axis=0)


def _topk_nonzero(stake: np.ndarray, k: int) -> np.ndarray:
    """``is_topk_nonzero``: ascending *stable* sort, the first n−k lose; zero stake never wins."""
    n = stake.shape[0]
    result = stake != 0
    if n < k:
        return result
    order = np.argsort(stake, kind="stable")
    result[order[: max(n - k, 0)]] = False
    return result


def _weighted_median_cols(stake: np.ndarray, score: np.ndarray, kappa: float) -> np.ndarray:
    """``weighted_median_col_sparse`` for all columns at once.

    Upstream bisects with a middle pivot. It returns the value v whose stake
    strictly below v is ≤ minority while the stake up to and including v is
    greater. That is the first sorted score whose cumulative stake exceeds
    ``minority = Σstake − κ``, or the largest score if none does. Only rows
    with positive stake vote, and their stake is normalized again.
    """
    n_cols = score.shape[1]
    voters = stake > 0
    if not voters.any():
        return np.zeros(n_cols)
    use_stake = _normalize(stake[voters])
    minority = use_stake.sum() - kappa
    s = score[voters]
    order = np.argsort(s, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(s, order, axis=0)
    cum = np.cumsum(use_stake[order], axis=0)
    above = cum > minority
    first = np.where(above.any(axis=0), above.argmax(axis=0), s.shape[0] - 1)
    return sorted_scores[first, np.arange(n_cols)]


# ----------------------------------------------------------------------------
# Storage conversions.
# ----------------------------------------------------------------------------


def to_u16(x: np.ndarray) -> np.ndarray:
    """``fixed_proportion_to_u16``: ``floor(x · 65535)``, saturating to [0, 65535].

    Upstream stores rank, trust, consensus, incentive, dividends,
    validator_trust and stake weight this way. There is no max-upscaling, so
    1.0 maps to 65535.
    """
    v = np.floor(np.asarray(x, dtype=np.float64) * U16_MAX)
    return np.clip(np.nan_to_num(v), 0, U16_MAX).astype(np.uint16)


def max_upscale_to_u16(x: np.ndarray) -> np.ndarray:
    """``vec_max_upscale_to_u16``, the pruning-score storage.

    Values are rounded after scaling so that the max becomes 65535; when the
    max is 0 they are truncated instead.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0, dtype=np.uint16)
    top = x.max()
    if top == 0:
        v = np.floor(x * U16_MAX)
    elif top > 32768:
        v = np.floor(x * _fx(U16_MAX / top) + 0.5)
    else:
        v = np.floor(_div(x * U16_MAX, top) + 0.5)  # I32F32::round: half away from zero
    return np.clip(v, 0, U16_MAX).astype(np.uint16)
