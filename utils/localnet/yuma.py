"""Yuma consensus for one epoch of one subnet: a pure numpy port of subtensor's epoch.

This is the epoch the embedded local chain runs in place of a subtensor node. It
follows the production (sparse) epoch of ``opentensor/subtensor`` step by step.
That epoch is ``epoch_mechanism`` in ``pallets/subtensor/src/epoch/epoch.rs``;
older releases keep it in ``epoch/run_epoch.rs``. The matrix helpers it calls
live in ``pallets/subtensor/src/epoch/math.rs``. The steps are:

1. Activity: ``active = last_update + activity_cutoff >= current_block``.
2. Stake: stake below ``stake_threshold`` is zeroed (the subnet owner is
   exempt), then stake is normalized. This is ``inplace_normalize_64`` and
   then truncation to I32F32.
3. Validator permits. The *stored* permits from the previous epoch mask this
   epoch. The new permits (``is_topk_nonzero``: the top-k non-zero stake, with
   ties going to the higher uid) are returned for storage. The owner uid
   always holds a permit, both stored and new.
4. Active stake: stake with inactive uids and uids without a permit zeroed,
   then normalized.
5. Weights:
   - Rows without a permit are zeroed (``mask_rows_sparse``).
   - The diagonal is zeroed except the owner's self-weight
     (``mask_diag_sparse_except_index``).
   - Weights set at or before the target's registration block are zeroed,
     because they are outdated (``vec_mask_sparse_matrix`` with
     ``updated <= registered``).
   - With commit-reveal, weights whose commit block is before the target's
     registration block are zeroed as well.
   - Finally each row is normalized (``inplace_row_normalize_sparse``).
6. Consensus is the stake-weighted κ-quantile of each column
   (``weighted_median_col_sparse``). Weights are then clipped at consensus
   (``col_clip_sparse``). ``validator_trust`` is the row sum of the clipped
   weights.
7. ``rank = incentive = normalize(clippedᵀ · active_stake)``. ``trust`` is
   rank before normalization divided by rank from the unclipped weights.
8. Weights for bonds: ``W + bonds_penalty · (clipped − W)``
   (``interpolate_sparse``).
9. Bonds.
   - Yuma3 (``yuma3=True``): the EMA of the weights for bonds, per validator,
     with ``alpha = 1 − bonds_moving_average/1e6`` (``mat_ema_sparse``).
     Bond columns of uids registered since the last epoch are cleared first.
     Dividends are ``normalize((col_normalize(EMA) · incentive) ∘ active_stake)``.
     The raw EMA is stored as ``floor(b · 65535)`` and read back as ``u16/65535``.
   - Original Yuma (``yuma3=False``): stored bonds are column-normalized. The
     update ``ΔB = W ∘ S`` is also column-normalized, and the EMA of the two is
     column-normalized again. Dividends are ``normalize(EMA · incentive)``.
     The EMA is stored column max-upscaled as ``floor(b · 65535)``.
   - In both cases a row is written only for a uid holding a new permit. The
     row is cleared for a uid that lost its permit, and left untouched
     otherwise, as upstream does.
10. Emission shares: ``incentive/Σ`` and ``dividends/Σ`` with
    ``Σ = Σ(incentive + dividends)``. If Σ is 0, the validator share falls
    back to active stake (or to stake, if no stake is active).

Fixed-point fidelity. Upstream computes in ``I32F32``, and each multiply and
divide truncates toward −∞. Every value here is kept on that 2⁻³² grid: each
product and quotient goes through :func:`_fx`. Sums and differences of grid
values are exact in float64 while they stay below 2²¹, so the results match
upstream bit for bit except in freak cases, where a float64 rounding lands
across a grid point, roughly 1e-7 per operation. This matters because bonds
are stored as u16 between epochs and upstream's truncation shows up in them.
For example, idle original-Yuma bonds lose one LSB per epoch; that is
reproduced here.

Bonds format (input and output). An ``(n, n)`` float array of stored u16
values divided by 65535, with rows for validators. This is the form the
epoch pallet (:mod:`utils.localnet.pallets.epoch`) keeps. Inputs are snapped
back to the u16 grid with ``round(b · 65535)``, so the round trip through
storage is exact.

Not implemented:
- Liquid alpha. It is upstream's opt-in per-subnet mode and is off by default
  (``LiquidAlphaOn`` false), so the EMA uses the single alpha above.
- Emission rounding to rao. The emission shares are returned as fractions.
- The pruning score. It equals ``server_emission + validator_emission``;
  :func:`max_upscale_to_u16` gives its stored u16 form.

Newest upstream no longer computes rank and trust. They are computed here as
in the previous release, because the SDK metagraph still has those columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .yuma_math import (
    U16_MAX,
    _col_max_upscale,
    _col_normalize,
    _div,
    _fx,
    _matmul,
    _normalize,
    _row_normalize,
    _topk_nonzero,
    _weighted_median_cols,
    max_upscale_to_u16,
    to_u16,
)

# Upstream default kappa (u16 32767 / 65535).
DEFAULT_KAPPA = 32767 / 65535


@dataclass(frozen=True)
class EpochInputs:
    """Everything one epoch reads from chain state.

    ``stake`` is total stake per uid, in any unit. ``weights`` are raw stored
    weights with rows as setters; u16 values are fine. ``bonds`` are stored
    bonds as u16/65535 (see the module docstring). All-zero bonds mean none
    are stored yet.

    Options beyond the core interface:

    - ``tempo`` and ``last_mechanism_step_block`` choose which bond columns
      count as "registered since the last epoch". Upstream uses
      ``LastMechansimStepBlock + 1`` when that is non-zero, and
      ``current_block − tempo`` otherwise.
    - ``stake_threshold`` is upstream ``StakeThreshold``, in the unit of
      ``stake``.
    - ``commit_block`` is the earliest unexpired commit block per uid, used
      when commit-reveal is on; ``None`` turns that mask off.
    """

    stake: np.ndarray
    weights: np.ndarray
    last_update: np.ndarray
    block_at_registration: np.ndarray
    validator_permit: np.ndarray
    bonds: np.ndarray
    current_block: int
    activity_cutoff: int
    kappa: float = DEFAULT_KAPPA
    bonds_moving_average: int = 900_000
    bonds_penalty: float = 1.0  # u16/65535
    max_allowed_validators: int = 64
    owner_uid: int | None = None
    yuma3: bool = True
    tempo: int = 360
    last_mechanism_step_block: int = 0
    stake_threshold: float = 0.0
    commit_block: Optional[np.ndarray] = None


@dataclass(frozen=True)
class EpochResult:
    """One epoch's output.

    Every vector except ``active`` and ``validator_permit`` is a normalized
    float. Use :func:`to_u16` for the chain's u16 storage form. ``bonds`` is
    the bond matrix to store for the next epoch, as u16/65535; store
    ``round(b · 65535)``.

    ``server_emission`` and ``validator_emission`` are each uid's fraction of
    the epoch emission; together they sum to 1.
    """

    active: np.ndarray
    validator_permit: np.ndarray
    consensus: np.ndarray
    incentive: np.ndarray
    dividends: np.ndarray
    trust: np.ndarray
    rank: np.ndarray
    validator_trust: np.ndarray
    bonds: np.ndarray
    server_emission: Optional[np.ndarray] = None
    validator_emission: Optional[np.ndarray] = None


# ----------------------------------------------------------------------------
# The epoch.
# ----------------------------------------------------------------------------


def epoch(inp: EpochInputs) -> EpochResult:
    """Run one Yuma epoch; pure (inputs are not modified) and deterministic."""
    stake_raw = np.asarray(inp.stake, dtype=np.float64).reshape(-1)
    n = stake_raw.shape[0]
    weights_raw = np.asarray(inp.weights, dtype=np.float64).reshape(n, n)
    bonds_in = np.asarray(inp.bonds, dtype=np.float64).reshape(n, n)
    # Back to the stored u16 integers; all of upstream's bond math starts from them.
    bonds_u16 = np.rint(np.clip(bonds_in, 0.0, 1.0) * U16_MAX)
    last_update = np.asarray(inp.last_update, dtype=np.int64).reshape(n)
    registered = np.asarray(inp.block_at_registration, dtype=np.int64).reshape(n)
    stored_permit = np.asarray(inp.validator_permit, dtype=bool).reshape(n).copy()
    current_block = int(inp.current_block)
    owner = inp.owner_uid if inp.owner_uid is not None and 0 <= inp.owner_uid < n else None
    # Stored weights are u16, so never negative; clamp so bad input cannot flip signs.
    weights_raw = np.maximum(weights_raw, 0.0)

    # == Active (run_epoch: inactive = updated + cutoff < current_block) ==
    active = last_update + int(inp.activity_cutoff) >= current_block

    # == Stake: threshold filter (owner exempt), normalize in I64F64, truncate to I32F32 ==
    below = stake_raw < inp.stake_threshold
    if owner is not None:
        below[owner] = False
    filtered = np.where(below, 0.0, np.maximum(stake_raw, 0.0))
    total = filtered.sum()
    stake = _fx(filtered / total) if total > 0 else filtered

    # == Permits: stored ones mask this epoch, new ones are returned ==
    if owner is not None:
        stored_permit[owner] = True
    new_permit = _topk_nonzero(stake, int(inp.max_allowed_validators))
    if owner is not None:
        new_permit[owner] = True

    # == Active stake ==
    active_stake = _normalize(np.where(active & stored_permit, stake, 0.0))

    # == Weights: permit rows, diagonal (owner kept), outdated, commit-reveal ==
    w = weights_raw.copy()
    w[~stored_permit, :] = 0.0
    diag = np.arange(n)
    if owner is not None:
        diag = diag[diag != owner]
    w[diag, diag] = 0.0
    # Outdated: weights set at or before the target (re)registered.
    w[last_update[:, None] <= registered[None, :]] = 0.0
    if inp.commit_block is not None:
        commit = np.asarray(inp.commit_block, dtype=np.float64).reshape(n)
        w[commit[:, None] < registered[None, :].astype(np.float64)] = 0.0
    w = _row_normalize(w)

    # == Consensus, clipping, validator trust ==
    kappa = float(_fx(inp.kappa))
    consensus = _weighted_median_cols(active_stake, w, kappa)
    clipped = np.minimum(w, consensus[None, :])
    validator_trust = clipped.sum(axis=1)

    # == Ranks, trust, incentive ==
    preranks = _matmul(w, active_stake)
    ranks = _matmul(clipped, active_stake)
    trust = _div(ranks, preranks)
    incentive = _normalize(ranks)
    rank = incentive.copy()  # upstream stores the normalized ranks

    # == Bonds penalty: interpolate between raw and clipped weights ==
    penalty = float(_fx(inp.bonds_penalty))
    if penalty == 0.0:
        w_bonds = w
    elif penalty == 1.0:
        w_bonds = clipped
    else:
        w_bonds = w + _fx(penalty * (clipped - w))
        w_bonds = np.where(w_bonds > 0, w_bonds, 0.0)

    # Bond columns of uids registered since the last epoch start from zero.
    lms = int(inp.last_mechanism_step_block)
    last_tempo = lms + 1 if lms != 0 else max(current_block - int(inp.tempo), 0)
    recent = last_tempo <= registered

    # alpha = 1 - I32F32(bonds_moving_average / 1e6)
    alpha = 1.0 - float(_fx(inp.bonds_moving_average / 1_000_000))

    if inp.yuma3:
        bonds = _div(bonds_u16, U16_MAX)  # get_bonds_sparse_fixed_proportion
        bonds[:, recent] = 0.0
        ema = _fx(alpha * w_bonds) + _fx((1.0 - alpha) * bonds)  # mat_ema_sparse
        ema_norm = _col_normalize(ema)
        per_validator = _fx(ema_norm * incentive[None, :]).sum(axis=1)
        dividends = _normalize(_fx(per_validator * active_stake))
        to_store = ema
    else:
        bonds = bonds_u16.copy()  # get_bonds_sparse: raw u16, scale-free after col-normalize
        bonds[:, recent] = 0.0
        bonds = _col_normalize(bonds)
        delta = _col_normalize(_fx(w_bonds * active_stake[:, None]))
        ema = _col_normalize(_fx(alpha * delta) + _fx((1.0 - alpha) * bonds))
        dividends = _normalize(_fx(ema * incentive[None, :]).sum(axis=1))
        to_store = _col_max_upscale(ema)

    # Storage: new permit -> write row; lost permit -> clear row; else untouched.
    stored_rows = np.floor(np.clip(to_store * U16_MAX, 0, U16_MAX))
    bonds_out = bonds_in.copy()
    bonds_out[new_permit] = stored_rows[new_permit] / U16_MAX
    bonds_out[~new_permit & stored_permit] = 0.0

    # == Emission shares ==
    emission_sum = float((incentive + dividends).sum())
    if emission_sum != 0:
        server_emission = _div(incentive, emission_sum)
        validator_emission = _div(dividends, emission_sum)
    else:
        server_emission = incentive.copy()
        validator_emission = (stake if active_stake.sum() == 0 else active_stake).copy()

    return EpochResult(
        active=active,
        validator_permit=new_permit,
        consensus=consensus,
        incentive=incentive,
        dividends=dividends,
        trust=trust,
        rank=rank,
        validator_trust=validator_trust,
        bonds=bonds_out,
        server_emission=server_emission,
        validator_emission=validator_emission,
    )


__all__ = [
    "DEFAULT_KAPPA",
    "U16_MAX",
    "EpochInputs",
    "EpochResult",
    "epoch",
    "max_upscale_to_u16",
    "to_u16",
]
