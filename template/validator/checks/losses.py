"""Loss checks: are the losses a receipt reports the ones the miner's training produced?

step-0 loss (exact)
    The inner AdamW state persists across rounds on each rank, so of the H losses a miner reports only
    the first is a pure function of public data: loss(θ_r, batch(hotkey, step 0)). The validator
    recomputes it and compares with the claim (:func:`first_loss_tolerance`).

last-step loss (approximate)
    The claimed loss of step H−1 was taken at θ_{H−1} on the miner's last batch. The validator cannot
    rebuild θ_{H−1}; it evaluates the same batch at θ_r − Δ_sent, which is θ_H (one more AdamW step
    *on that very batch*) up to the compression error and the error-feedback residual. An honest claim
    is therefore usually *above* the evaluated value; loss-liars report *lower* losses, so only a claim
    implausibly below it fails the round (:func:`last_loss_margin`); only a claim far below it
    (:data:`LAST_LOSS_PROOF_FACTOR` × the margin) is taken as proof of a lie
    (:func:`last_step_contradicted`): the check is approximate, and an honest miner's one marginal miss
    must cost it one round, not its history.

:func:`mean_loss` is the one forward both use (and :mod:`.usefulness` too).
"""

from __future__ import annotations

from typing import Optional

import torch

from template.config.run import TrainingConfig

__all__ = [
    "FIRST_LOSS_ABS_TOL",
    "FIRST_LOSS_REL_TOL",
    "LAST_LOSS_ABS_TOL",
    "LAST_LOSS_PROGRESS_FACTOR",
    "LAST_LOSS_PROOF_FACTOR",
    "first_loss_tolerance",
    "last_loss_margin",
    "mean_loss",
    "step0_problem",
    "last_step_problem",
    "last_step_contradicted",
]

# Step-0 loss: |claimed − recomputed| ≤ max(FIRST_LOSS_ABS_TOL, FIRST_LOSS_REL_TOL·|recomputed|).
# The recomputation is the same deterministic float32 forward the miner ran (dropout is 0, so train
# and eval mode compute the same function). On one machine it reproduces the claim bit for bit; across
# CPU/GPU, BLAS libraries and thread counts float32 reductions differ by ~1e-6..1e-5 relative (measured
# here: |float32 − float64| ≤ 3e-7 on the tiny preset), i.e. ≤ 6e-5 absolute for a mean cross-entropy
# of ~1–6 nats. 1e-3 leaves a ≥ 15× margin for that (the Trainer leaves TF32 off, torch's default),
# while a liar can shave off at most ~0.1% of a loss — far below the batch-to-batch spread of honest
# losses (~0.05 nats), so a lie small enough to pass buys nothing.
FIRST_LOSS_ABS_TOL = 1e-3
FIRST_LOSS_REL_TOL = 1e-3

# Last-step loss: the claim fails when claimed < evaluated − margin on the last batch b, with
#   D      = loss(θ_r, b) − loss(θ_r − Δ_sent, b)       (the progress the sent Δ realises on b)
#   margin = max(LAST_LOSS_ABS_TOL, (f − 1) · max(0, D)),  f = LAST_LOSS_PROGRESS_FACTOR (none/int8)
#                                                          f = LAST_LOSS_PROGRESS_FACTOR / fraction (top-k)
# i.e. the miner may claim up to f× the progress its Δ shows on that batch (plus 0.1 nats). Derived
# from the data of the round (D), with factors set from measurements on the tiny preset
# (tests/unit/test_audit.py): with dense compression (none, int8: |error| ≤ absmax/254 per chunk, and an
# equally small error-feedback residual) θ_r − Δ_sent is θ_H almost exactly, one AdamW step past the
# claimed θ_{H−1} *on b itself*, so honest claims sit 0.02–0.05 nats *above* the evaluated loss
# (claimed progress 0.87–0.99 × D); f = 1.25 and the 0.1 floor leave room for a last step that did
# not help (an honest miner of a swarm that had memorized a 16 KB corpus, loss 0.52, claimed 0.050 below
# the evaluated loss: the old 0.05 floor called it a liar). The loss-liars this catches lie by tenths
# of a nat or more; smaller lies are left to the cross-miner statistics. Top-k sends only a fraction δ of the coordinates of Δ + residual: the sent Δ realises less
# than the miner's progress (measured: claimed progress up to 3.8× D at δ = 0.1, 12× at δ = 0.01,
# shrinking as error feedback catches up), hence the 1/δ scaling. Under top-k this check only
# catches gross lies; the exact step-0 check and the cross-miner statistics of template.validator.scoring
# (reported-minus-evaluated gap as a robust z-score) cover the rest, as they do in early rounds where
# D, and so the margin, is large.
LAST_LOSS_ABS_TOL = 0.1
LAST_LOSS_PROGRESS_FACTOR = 1.25
# A miss of the margin scores the round 0 (evidence: a liar that shaves a little off every claim misses
# every round and earns nothing); a claim more than this many margins below the evaluated loss is proof,
# and resets the miner's score (template.validator.scoring.proven_cheats). Honest claims sit above the
# evaluated loss or, on a plateau, a few hundredths below it; the loss-liars this is for claim tenths of
# a nat or more below it (the simulated one: 30 % of the loss).
LAST_LOSS_PROOF_FACTOR = 3.0


def first_loss_tolerance(recomputed: float) -> float:
    return max(FIRST_LOSS_ABS_TOL, FIRST_LOSS_REL_TOL * abs(recomputed))


def last_loss_margin(loss_at_start: float, loss_evaluated: float, training: TrainingConfig) -> float:
    """How far below the evaluated last-step loss an honest claim may lie (see the constants)."""
    factor = LAST_LOSS_PROGRESS_FACTOR
    if training.compression in ("topk", "topk_int8"):
        factor /= training.topk_fraction
    return max(LAST_LOSS_ABS_TOL, (factor - 1.0) * max(0.0, loss_at_start - loss_evaluated))


@torch.no_grad()
def mean_loss(model: torch.nn.Module, xy: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-byte cross-entropy over the rows of ``xy``, exactly as the Trainer computes it for one
    batch (``model(x, y)``), in chunks of ``batch_size`` rows weighted by their row counts."""
    total, rows = 0.0, xy.shape[0]
    for start in range(0, rows, batch_size):
        chunk = xy[start : start + batch_size].to(device)
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        total += float(loss) * chunk.shape[0]
    return total / rows


@torch.no_grad()
def row_losses(model: torch.nn.Module, xy: torch.Tensor, batch_size: int, device: torch.device) -> list[float]:
    """Mean next-byte cross-entropy of each row of ``xy`` (their mean is :func:`mean_loss` for rows of
    one length), in chunks of ``batch_size`` rows."""
    out: list[float] = []
    for start in range(0, xy.shape[0], batch_size):
        chunk = xy[start : start + batch_size].to(device)
        logits, _ = model(chunk[:, :-1])
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
        out.extend(float(x) for x in ce.mean(dim=1))
    return out


def step0_problem(claimed: float, recomputed: float) -> Optional[str]:
    """Why the step-0 claim fails the exact replay, or None when it passes."""
    if abs(claimed - recomputed) <= first_loss_tolerance(recomputed):
        return None
    return f"step-0 loss: claimed {claimed:.6f}, recomputed {recomputed:.6f}"


def last_step_problem(claimed: float, at_start: float, evaluated: float, training: TrainingConfig) -> Optional[str]:
    """Why the last-step claim is implausibly low, or None when it passes. ``at_start``: loss(θ_r) on
    the last batch; ``evaluated``: loss(θ_r − Δ) on it."""
    margin = last_loss_margin(at_start, evaluated, training)
    if claimed >= evaluated - margin:
        return None
    return (
        f"last-step loss: claimed {claimed:.4f} is implausibly below {evaluated:.4f} at θ_r − Δ (margin {margin:.4f})"
    )


def last_step_contradicted(claimed: float, at_start: float, evaluated: float, training: TrainingConfig) -> bool:
    """Whether the last-step claim lies so far below the evaluated loss that it is proof of a lie, not a marginal
    miss: beyond the margin plus :data:`LAST_LOSS_PROOF_FACTOR` − 1 more dense-compression margins (so 3 margins
    under none/int8; under top-k the margin's 1/fraction scaling is not multiplied, or no claim would reach it)."""
    dense = training.model_copy(update={"compression": "int8"})
    extra = (LAST_LOSS_PROOF_FACTOR - 1.0) * last_loss_margin(at_start, evaluated, dense)
    return claimed < evaluated - last_loss_margin(at_start, evaluated, training) - extra
