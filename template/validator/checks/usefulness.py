"""Usefulness: did the miner's Δ come from training on *its own* batches, and does it do no harm?

A plausible update can be made without the work: the honest miners' mean shifted by a few σ per
coordinate (ALIE), a scaled-down negative mean (inner-product manipulation), someone else's update with
noise, an old update replayed, the consensus direction scaled up or down. All of them lower the loss
about as much on any window as on the miner's own. An honest Δ_i does not: its H inner steps trained on
exactly the miner's assigned batches, so it lowers their loss *more* than the loss of other windows of
the same distribution. That preference is the evidence of work a validator accumulates before it pays
anything (:mod:`template.validator.scoring`):

``specificity`` = median over the gain steps s of [L_ref(b_i,s) − L_i(b_i,s)]
                 − mean over the reference batches r of [L_ref(r) − L_i(r)]

where L_i(b) = loss(θ_r − Δ_i, b) and L_ref(b) = loss(θ_r − a_i·Δ_ref, b); b_i,s is the miner's batch of
inner step s for the validator's secret gain steps (:meth:`template.validator.draw.AuditDraw.gain_steps`);
r are batches of training windows no member was assigned, drawn under a secret name
(:meth:`~template.validator.draw.AuditDraw.reference_hotkey`), one per gain step; Δ_ref is the
coordinate-wise median of the round's other audited contributions (:func:`reference_update`) and a_i =
⟨Δ_i, Δ_ref⟩ / ‖Δ_ref‖² how much of it Δ_i contains (:func:`projection`).

Why this shape (measured on the tiny preset, tests/unit/test_audit_scores.py):

- own minus reference batches alone is dominated by how easy the miner's particular windows happen to be
  for *any* update: a crafted ALIE update scored +0.7× the honest median in one round that way. Comparing
  with the consensus update on the very same windows (paired) cancels that;
- the consensus update is scaled to Δ_i's share of it (a_i) and evaluated at that scale, so a Δ that is
  just the consensus direction, larger or smaller, or with noise added, or zero, or its negative, gains
  what the reference gains — specificity ≈ 0 (measured with 0.05× and 0.3× the honest mean: within
  ±0.07× the honest median) — where an unscaled reference paid a tiny update the reference's own
  window-to-window noise (±1.5× the honest median). Evaluating at the scale, rather than scaling the
  reference's gains, also holds where the loss is not linear in the step (updates larger than it);
- the reference batches cancel what Δ_i does beyond the consensus on *any* window (an update that
  generalizes better is not more specific);
- a median over the gain steps, not a mean: a miner that trains only on a few of its batches, many
  times over, is hugely specific to those and to nothing else. Measured with the batches of steps
  {0, H/2, H−1} (what the old audit read): whenever H/2 was a gain step, a mean paid it the cap, and in
  some draws it out-earned the weakest honest miner; the median pays it only for most of its batches;
- Δ_ref is a median, so one or a few audited attackers cannot move it, and it is made of contributions:
  a few AdamW steps of the validator's own correlated far worse with honest miners' per-window gains
  (honest scores spread several times wider). It is the median of the *other* audited contributions,
  leaving out Δ_i itself and any near-duplicate of it (sketch cosine ≥ :data:`DUPLICATE_COSINE`): with
  Δ_i inside, its own specificity leaks into the reference, and a copier that serves Δ_i plus noise would
  pull the median toward Δ_i and erase the victim's specificity (measured: 0.001 against honest peers'
  0.008–0.020). With no other audited contribution there is no reference (L_ref = loss(θ_r)).

Reported too: ``ref_gain`` (mean of loss(θ_r) − L_i over the reference batches: the same secret windows
for every miner, so miners compare pairwise; with the specificity it makes the work a miner is paid
for), ``own_gain`` (loss(θ_r) − L_i on the miner's last batch, which the last-step check evaluates
anyway) and ``heldout_gain`` (over held-out windows drawn with the validator's secret: the harm gate).
A free-rider's zero Δ gains exactly 0 everywhere; noise or a sign-flipped Δ of honest norm loses.

:class:`Probe` holds θ_r, one working copy that becomes θ_r − Δ for one miner at a time, and one that
becomes θ_r − a·Δ_ref, so a round costs two parameter copies however many miners are audited.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Optional

import torch

from template.validator.checks.losses import mean_loss, row_losses

__all__ = [
    "BALANCE_TOLERANCE",
    "DUPLICATE_COSINE",
    "MEDIAN_SE",
    "Probe",
    "balance",
    "balance_problem",
    "BALANCE_WINDOW",
    "skew_problem",
    "projection",
    "reference_update",
    "specificity",
]

# Contributions this close to Δ_i are left out of its reference: honest updates of one round sit at
# cosines 0.70–0.85 with each other on the tiny preset, a copy with 10–30% noise at ≥ 0.95.
DUPLICATE_COSINE = 0.95
# The standard error of a median of k normal values, in units of the mean's (√(π/2) ≈ 1.25 for large k,
# ≈ 1.09 for k = 4): 1.2, on the safe side for the few gain steps an audit reads.
MEDIAN_SE = 1.2


# An honest Δ_i lies above another honest Δ_j on about half of the coordinates where they differ. "A
# little is enough" shifts every coordinate the same way, inside the honest spread: built from two
# colluders' own honest Δs (mean − 1·σ: their coordinate-wise min) it is above honest Δs on about a third
# of them; from the honest mean and σ, on 5 % (tests/unit/test_audit_scores.py). Its :func:`balance` is
# the median over the round's other attested contributions of that pairwise share — a median of pairwise
# shares, not the share against a median Δ: colluders sending extreme values move a median Δ; they move
# the median share only where they are half of the others. And that happens in small samples (two
# colluders among three others: ~26 % of audits with a sample of 4 at f = 1/3), so the verdict is not one
# round's: a miner is skewed when the median of its last BALANCE_WINDOW balances is outside 0.5 ±
# BALANCE_TOLERANCE (:func:`skew_problem`). ALIE is skewed every round, so it is caught by its third
# audit — before its evidence of work (what ALIE from the colluders' own work carries) can pay; an honest
# miner framed in a few rounds is not. A Δ skewed one way against its peers is what no honest training
# makes, whatever work it also carries. A shift small enough to pass is small enough for the trimmed
# mean to absorb (scripts/bench/aggregators.py).
BALANCE_TOLERANCE = 0.08
BALANCE_WINDOW = 5


def _share_above(delta: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> Optional[float]:
    above = differ = 0
    for name, o in other.items():
        d = delta[name].reshape(-1).to(torch.float32) - o.reshape(-1).to(torch.float32)
        above += int((d > 0).sum())
        differ += int((d != 0).sum())
    return above / differ if differ else None


def balance(delta: Mapping[str, torch.Tensor], others: Sequence[Mapping[str, torch.Tensor]]) -> Optional[float]:
    """The median over ``others`` of the share of coordinates where ``delta`` exceeds that other Δ, among
    those where they differ (None without another Δ that differs)."""
    shares = [x for x in (_share_above(delta, o) for o in others) if x is not None]
    return statistics.median(shares) if shares else None


def balance_problem(share: Optional[float]) -> Optional[str]:
    """Why a :func:`balance` of ``share`` is outside the honest range, or None."""
    if share is None or abs(share - 0.5) <= BALANCE_TOLERANCE:
        return None
    return (
        f"update skewed against the round's others: above them on {share:.1%} of the coordinates where "
        f"they differ (honest updates: 50 ± {BALANCE_TOLERANCE:.0%})"
    )


def skew_problem(shares: Sequence[float]) -> Optional[str]:
    """Why a miner whose recent balances are ``shares`` (oldest first) is skewed: the median of the
    last :data:`BALANCE_WINDOW` is outside the honest range. None otherwise, or without any."""
    recent = [float(x) for x in list(shares)[-BALANCE_WINDOW:] if x is not None and math.isfinite(x)]
    if not recent:
        return None
    problem = balance_problem(statistics.median(recent))
    return f"{problem} (median of its last {len(recent)} audits)" if problem else None


def reference_update(deltas: Sequence[Mapping[str, torch.Tensor]]) -> Optional[dict[str, torch.Tensor]]:
    """The coordinate-wise median of ``deltas`` (the mean of the two middle values for an even count),
    or None when there are none. Pass each distinct contribution once (identical bytes twice would
    double one miner's vote)."""
    if not deltas:
        return None
    out = {}
    k = len(deltas)
    for name in deltas[0]:
        stacked = torch.stack([d[name].to(torch.float32) for d in deltas]).sort(dim=0).values
        out[name] = stacked[(k - 1) // 2] if k % 2 else 0.5 * (stacked[k // 2 - 1] + stacked[k // 2])
    return out


def projection(delta: Mapping[str, torch.Tensor], reference: Optional[Mapping[str, torch.Tensor]]) -> float:
    """⟨delta, reference⟩ / ‖reference‖² (0 without a reference or for a zero one)."""
    if reference is None:
        return 0.0
    dot = norm2 = 0.0
    for name, r in reference.items():
        r64 = r.reshape(-1).double()
        dot += float(torch.dot(delta[name].reshape(-1).double(), r64))
        norm2 += float(torch.dot(r64, r64))
    return dot / norm2 if norm2 > 0 else 0.0


def specificity(
    own: Sequence[float], own_ref: Sequence[float], other: Sequence[float], other_ref: Sequence[float]
) -> tuple[float, Optional[float]]:
    """(median(own_ref − own) − mean(other_ref − other), its standard error), from *losses*: at θ_r − Δ_i
    (``own``, ``other``) and at θ_r − a_i·Δ_ref (``own_ref``, ``other_ref``) on the miner's batches and on
    the reference batches, pairwise aligned.

    The reference differences carry no specificity for anyone, so their spread s is pure measurement
    noise, and the miner's own differences spread alike (measured: 0.019–0.022 against 0.018–0.020 per
    batch on the tiny preset): the standard error is s·√((MEDIAN_SE² + 1)/k) for k gain steps. None
    with a single reference batch (no spread to measure)."""
    if not own or len(own) != len(own_ref) or not other or len(other) != len(other_ref):
        raise ValueError("specificity needs aligned, non-empty losses")
    own_diff = [r - x for x, r in zip(own, own_ref)]
    other_diff = [r - x for x, r in zip(other, other_ref)]
    value = statistics.median(own_diff) - statistics.fmean(other_diff)
    if len(other_diff) < 2:
        return value, None
    spread = statistics.stdev(other_diff)
    return value, spread * math.sqrt((MEDIAN_SE**2 + 1) / len(own_diff))


class Probe:
    """θ_r (``model``, in eval mode), θ_r − Δ of the miner last :meth:`move`\\ d to, and θ_r − a·Δ_ref
    (:meth:`move_reference`), evaluated on batches of ``batch_size`` rows on ``device``."""

    def __init__(self, model: torch.nn.Module, heldout: torch.Tensor, batch_size: int, device: torch.device):
        self.base = model.eval()
        self.moved = copy.deepcopy(model).eval()
        self.reference: Optional[torch.nn.Module] = None
        self.theta = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.moved_params = dict(self.moved.named_parameters())
        self.heldout, self.batch_size, self.device = heldout, batch_size, device
        self._heldout_base: Optional[list[float]] = None  # loss(θ_r) per held-out window, once per round

    def at_start(self, xy: torch.Tensor) -> float:
        return mean_loss(self.base, xy, self.batch_size, self.device)

    def at_moved(self, xy: torch.Tensor) -> float:
        return mean_loss(self.moved, xy, self.batch_size, self.device)

    def at_reference(self, xy: torch.Tensor) -> float:
        """loss(θ_r − a·Δ_ref); loss(θ_r) when there is no reference."""
        model = self.reference if self.reference is not None else self.base
        return mean_loss(model, xy, self.batch_size, self.device)

    @staticmethod
    @torch.no_grad()
    def _set(params: Mapping[str, torch.nn.Parameter], theta, delta, device, scale: float = 1.0) -> None:
        for n, p in params.items():
            p.copy_(theta[n]).sub_(delta[n].to(device), alpha=scale)

    def move(self, delta: Mapping[str, torch.Tensor]) -> None:
        """Make the working copy θ_r − ``delta``."""
        self._set(self.moved_params, self.theta, delta, self.device)

    def move_reference(self, delta: Optional[Mapping[str, torch.Tensor]], scale: float = 1.0) -> None:
        """Make the reference copy θ_r − ``scale``·``delta`` (None: no reference)."""
        if delta is None:
            self.reference = None
            return
        if self.reference is None:
            self.reference = copy.deepcopy(self.base).eval()
        self._set(dict(self.reference.named_parameters()), self.theta, delta, self.device, scale)

    def heldout_gains(self) -> list[float]:
        """loss(θ_r) − loss(θ_r − Δ) on each held-out window."""
        if self._heldout_base is None:
            self._heldout_base = row_losses(self.base, self.heldout, self.batch_size, self.device)
        moved = row_losses(self.moved, self.heldout, self.batch_size, self.device)
        return [b - m for b, m in zip(self._heldout_base, moved)]
