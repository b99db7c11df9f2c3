"""Scores from audits: pure functions, no I/O (the validator neuron persists and sets weights).

Pipeline per audited round: :func:`round_scores` (audits + the miners' reported loss streams → a score
in [0, 1] per audited hotkey) → :func:`update_ema` (per-hotkey exponential moving average, with
participation) → :func:`to_weights` (normalized weights by uid for ``SetWeights``).

Statistics across miners are robust: median/MAD z-scores (:func:`robust_z`), so one or a few
adversaries cannot move the reference they are compared with, and a one-sided Wilcoxon signed-rank
test (:func:`stream_below_peers`) for a loss stream that sits systematically below its peers'.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from template.audit import Audit

__all__ = [
    "MAD_SCALE",
    "LOW_Z",
    "LOW_P",
    "MIN_TEST_POSITIONS",
    "GAIN_CAP",
    "robust_z",
    "stream_below_peers",
    "implausibly_low",
    "usefulness",
    "round_scores",
    "update_ema",
    "to_weights",
]

MAD_SCALE = 1.4826  # 1/Φ⁻¹(3/4): MAD × 1.4826 estimates σ for normal data
LOW_Z = -3.0  # a reported mean loss this many robust σ below the peers' median is suspicious
LOW_P = 1e-3  # …or a stream below its peers' at the same positions with this one-sided p-value
MIN_TEST_POSITIONS = 10  # below this many aligned positions the signed-rank test is not used
GAIN_CAP = 1.5  # a gain above 1.5× the honest median earns no more (caps scaled or lucky Δs)


def robust_z(values: Mapping[str, float]) -> dict[str, float]:
    """(x − median) / (1.4826 · MAD) per key; all zeros when the MAD is 0 (no spread to measure
    against) or there are no values. Raises ``ValueError`` for a non-finite value."""
    if not values:
        return {}
    keys = list(values)
    x = np.array([float(values[k]) for k in keys], dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("robust_z needs finite values")
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    if mad == 0.0:
        return {k: 0.0 for k in keys}
    scale = MAD_SCALE * mad
    return {k: float((v - med) / scale) for k, v in zip(keys, x)}


def stream_below_peers(stream: Sequence[float], peers: Iterable[Sequence[float]]) -> float:
    """One-sided p-value that ``stream`` is systematically *below* its peers at the same positions.

    Positions are aligned by index (inner steps of one round, or rounds of a window). At each position
    the peers' median is the reference; the differences stream[i] − median_i go into a Wilcoxon
    signed-rank test with ``alternative="less"`` (H0: differences symmetric about 0). Distribution-free
    and paired, so it needs no assumption about how losses are distributed, and the per-position median
    absorbs what all miners share (the round's state, the schedule). Returns 1.0 when there is nothing
    to test (no peers, or every difference is 0).
    """
    peers = [list(p) for p in peers]
    diffs = []
    for i, v in enumerate(stream):
        column = [p[i] for p in peers if i < len(p)]
        if column:
            diffs.append(float(v) - float(np.median(column)))
    d = np.array(diffs, dtype=np.float64)
    if d.size == 0 or not np.isfinite(d).all() or not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="less").pvalue)


def _eval_level(a: Audit) -> float | None:
    if a.loss_first_recomputed is None or a.loss_last_evaluated is None:
        return None
    return 0.5 * (a.loss_first_recomputed + a.loss_last_evaluated)


def implausibly_low(audits: Sequence[Audit], reported: Mapping[str, Sequence[float]]) -> dict[str, str]:
    """Audited hotkeys whose reported losses are implausibly low, with the reason.

    ``reported[hotkey]``: that miner's reported loss stream, aligned across miners (e.g. this round's
    receipt losses, or per-round mean losses over a window); peers that were not audited help as
    reference. A hotkey is flagged when its reported mean is a low outlier among the peers — robust z
    < ``LOW_Z``, or (with ≥ ``MIN_TEST_POSITIONS`` positions) :func:`stream_below_peers` p < ``LOW_P``
    — **and** the validator's own evaluation does not confirm it: the gap between the reported mean
    and the evaluated level (mean of the exact step-0 loss and the loss at θ_r − Δ on the last batch)
    is itself a low outlier (robust z < ``LOW_Z``). A miner whose batches were genuinely easy has a low
    evaluated level too and is not flagged.
    """
    means = {
        hk: float(np.mean(v))
        for hk, v in reported.items()
        if len(v) and all(math.isfinite(float(x)) for x in v)
    }
    z_reported = robust_z(means)
    gaps = {}
    for a in audits:
        level = _eval_level(a)
        if a.hotkey in means and level is not None:
            gaps[a.hotkey] = means[a.hotkey] - level
    z_gap = robust_z(gaps)
    flagged = {}
    for hk, zg in z_gap.items():
        if zg >= LOW_Z:
            continue
        stream = reported[hk]
        if z_reported[hk] < LOW_Z:
            flagged[hk] = f"reported mean loss z = {z_reported[hk]:.1f} vs peers, unconfirmed (gap z = {zg:.1f})"
            continue
        if len(stream) >= MIN_TEST_POSITIONS:
            p = stream_below_peers(stream, [v for k, v in reported.items() if k != hk and k in means])
            if p < LOW_P:
                flagged[hk] = f"reported losses below peers' (signed-rank p = {p:.2g}), unconfirmed (gap z = {zg:.1f})"
    return flagged


def _median_positive(xs: Iterable[float]) -> float | None:
    pos = [x for x in xs if x is not None and x > 0]
    return float(np.median(pos)) if pos else None


def usefulness(heldout_gain: float, own_gain: float, median_heldout: float | None, median_own: float | None) -> float:
    """score = 0 if heldout_gain ≤ 0, else (clip(h / m_h, 0, 1.5) + clip(o / m_o, 0, 1.5)) / 3,
    with m_h, m_o the medians of the positive gains among the round's eligible miners whose held-out
    gain is positive (a component whose median is undefined contributes 0). In [0, 1]; a miner at the median scores 2/3."""
    if heldout_gain <= 0 or median_heldout is None:
        return 0.0
    h = min(max(heldout_gain / median_heldout, 0.0), GAIN_CAP)
    o = min(max(own_gain / median_own, 0.0), GAIN_CAP) if median_own else 0.0
    return (h + o) / (2 * GAIN_CAP)


def round_scores(audits: Sequence[Audit], reported: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """A score in [0, 1] per audited hotkey.

    0 when anything failed: not served, bad receipt, bad contribution, a failed loss check, a copy
    (:attr:`Audit.passed`), or implausibly low reported losses (:func:`implausibly_low`). The others
    ("eligible") are scored by :func:`usefulness` relative to the medians of the eligible miners'
    positive gains: a free-rider's zero gain and a noise or sign-flipped Δ's negative held-out gain
    score 0, and honest miners with similar gains score similarly (at the median: 2/3; the cap at
    1.5× the median keeps a lucky or inflated Δ from taking more than its share).
    """
    low = implausibly_low(audits, reported)
    eligible = [a for a in audits if a.passed and a.hotkey not in low]
    useful = [a for a in eligible if a.heldout_gain > 0]  # the reference: miners whose Δ helps held-out data
    m_h = _median_positive(a.heldout_gain for a in useful)
    m_o = _median_positive(a.own_gain for a in useful)
    scores = {a.hotkey: 0.0 for a in audits}
    for a in eligible:
        scores[a.hotkey] = usefulness(a.heldout_gain, a.own_gain, m_h, m_o)
    return scores


def update_ema(
    prev: Mapping[str, float], scores: Mapping[str, float], alpha: float, participants: set[str]
) -> dict[str, float]:
    """ema ← (1 − α)·ema + α·score for every hotkey scored this round (a new hotkey starts from 0, so
    weight is earned over several rounds); hotkeys in ``participants`` that were not audited (not in
    the sample) keep their value; everyone else in ``prev`` — absent from the round — decays as if
    scored 0: ema ← (1 − α)·ema."""
    if not (0 < alpha <= 1):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    out: dict[str, float] = {}
    for hk, value in prev.items():
        out[hk] = float(value) if hk in participants else (1 - alpha) * float(value)
    for hk, score in scores.items():
        s = float(score)
        if not math.isfinite(s):
            s = 0.0
        s = min(max(s, 0.0), 1.0)
        out[hk] = (1 - alpha) * float(prev.get(hk, 0.0)) + alpha * s
    return out


def to_weights(ema: Mapping[str, float], uids: Mapping[str, int]) -> dict[int, float]:
    """Normalized weights by uid: ema / Σ ema over hotkeys registered in ``uids`` (unregistered hotkeys
    are dropped; negative or non-finite values count as 0). All zero → {} (set no weights)."""
    raw: dict[int, float] = {}
    for hk, value in ema.items():
        if hk not in uids:
            continue
        v = float(value)
        if math.isfinite(v) and v > 0:
            raw[int(uids[hk])] = raw.get(int(uids[hk]), 0.0) + v
    total = sum(raw.values())
    if total <= 0:
        return {}
    return {uid: v / total for uid, v in sorted(raw.items())}
