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
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

import numpy as np
from scipy import stats

from template.validator.audit import Audit

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
    "proven_cheats",
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
    means = {hk: float(np.mean(v)) for hk, v in reported.items() if len(v) and all(math.isfinite(float(x)) for x in v)}
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


# Held-out loss differences from one audit are noisy (a few windows): only a contribution
# clearly worse than its peers' — by this many nats or 3 robust sigmas — counts as harmful.
HARM_MARGIN = 0.02
# A Δ must lower its own batches' loss by at least this share of its peers' median: a random
# update of honest norm helps one small audit batch by chance, but only a sliver (seen: 0.004
# nats against a median of 0.05–0.1), while honest gains sit at 0.5–1.5× the median.
MIN_SHARE = 0.25


def heldout_floor(gains: Sequence[float]) -> Optional[float]:
    """Held-out gain below which a contribution harms generalization relative to its peers:
    min(0, median − max(HARM_MARGIN, 3·1.4826·MAD)) — a Δ that lowers held-out loss is never
    harmful, however it compares. None without peers."""
    values = sorted(float(g) for g in gains if g is not None and math.isfinite(g))
    if not values:
        return None
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    return min(0.0, med - max(HARM_MARGIN, 3 * 1.4826 * mad))


def usefulness(heldout_gain: float, own_gain: float, median_own: Optional[float], floor: Optional[float]) -> float:
    """The work a miner is paid for is lowering the loss on its own assigned batches:
    score = clip(own_gain / median_own, 0, 1.5) / 1.5 (median_own: median of the positive own gains
    of the round's eligible miners; at the median a miner scores 2/3, the cap keeps an inflated Δ from
    taking more than its share), and 0 when own_gain < MIN_SHARE·median_own (free-rider: exactly 0;
    sign-flipped Δ: negative; noise: negative or a chance sliver) or when the Δ makes held-out data clearly worse than its peers' do
    (heldout_gain < floor). Held-out gain is a gate, not the score: once training plateaus an honest
    Δ's held-out gain in one audit is as often slightly negative as positive."""
    if own_gain is None or not median_own or own_gain < MIN_SHARE * median_own:
        return 0.0
    if floor is not None and heldout_gain is not None and heldout_gain < floor:
        return 0.0
    return min(max(own_gain / median_own, 0.0), GAIN_CAP) / GAIN_CAP


def round_scores(audits: Sequence[Audit], reported: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """A score in [0, 1] per audited hotkey.

    0 when anything failed: not served, bad receipt, bad contribution, a failed loss check, a copy
    (:attr:`Audit.passed`), or implausibly low reported losses (:func:`implausibly_low`). The others
    ("eligible") are scored by :func:`usefulness` against the eligible miners' medians.
    """
    low = implausibly_low(audits, reported)
    eligible = [a for a in audits if a.passed and a.hotkey not in low]
    m_o = _median_positive(a.own_gain for a in eligible)
    # The harm floor comes from miners whose Δ did help their own data (the honest reference),
    # so free-riders and noise cannot drag it toward themselves.
    floor = heldout_floor([a.heldout_gain for a in eligible if a.own_gain is not None and a.own_gain > 0])
    scores = {a.hotkey: 0.0 for a in audits}
    for a in eligible:
        scores[a.hotkey] = usefulness(a.heldout_gain, a.own_gain, m_o, floor)
    return scores


def proven_cheats(audits: Sequence[Audit]) -> dict[str, str]:
    """Audited hotkeys caught by evidence they signed themselves, with the reason: a loss claim that
    exact recomputation contradicts (step 0, or the last step beyond its margin), or a receipt for a
    contribution the validator already saw in an earlier round (a replay or a copy of older work).
    Their EMA is reset to 0, not just decayed: the evidence is not statistical, and a cheat that is
    honest now and then must not keep the weight of its honest rounds.

    Not here, deliberately: unserved evidence (a network fault looks the same), a same-round copy
    (attributed by rank, so the victim could be the one flagged) and :func:`implausibly_low`
    (a statistical test) — those score 0 for the round and decay."""
    out: dict[str, str] = {}
    for a in audits:
        if not a.receipt_ok:
            continue
        if a.loss_first_ok is False:
            out[a.hotkey] = "step-0 loss claim contradicted"
        elif a.loss_last_ok is False:
            out[a.hotkey] = "last-step loss claim contradicted"
        elif a.copied_from is not None and a.copied_round is not None and a.copied_round < a.round:
            out[a.hotkey] = f"replayed a contribution of round {a.copied_round}"
    return out


def update_ema(
    prev: Mapping[str, float],
    scores: Mapping[str, float],
    alpha: float,
    participants: set[str],
    reset: Iterable[str] = (),
) -> dict[str, float]:
    """ema ← (1 − α)·ema + α·score for every hotkey scored this round (a new hotkey starts from 0, so
    weight is earned over several rounds); hotkeys in ``participants`` that were not audited (not in
    the sample) keep their value; everyone else in ``prev`` — absent from the round — decays as if
    scored 0: ema ← (1 − α)·ema. Hotkeys in ``reset`` (:func:`proven_cheats`) go to 0."""
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
    for hk in reset:
        out[hk] = 0.0
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
    weights = {uid: v / total for uid, v in sorted(raw.items())}
    return {uid: w for uid, w in weights.items() if w > 0}  # a denormal EMA can normalize to 0
