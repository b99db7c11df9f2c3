"""Scores from audits: pure functions, no I/O (the validator neuron persists and sets weights).

Pipeline per audited round: :func:`update_evidence` (each miner's evidence of work — its specificity
to its own batches, accumulated over rounds — kept in the validator's state) → :func:`round_scores`
(audits + evidence + the miners' reported loss streams → a score in [0, 1] per audited hotkey: 0 for
any failed check or below the evidence gate, else the work it did relative to the round's median) →
:func:`update_ema` (per-hotkey exponential moving average, with participation) → :func:`to_weights`
(normalized weights by uid for ``SetWeights``). :func:`proven_cheats` says whose EMA and evidence are
reset.

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
from template.validator.checks.usefulness import skew_problem

__all__ = [
    "MAD_SCALE",
    "LOW_Z",
    "LOW_P",
    "MIN_TEST_POSITIONS",
    "MIN_SHARE",
    "FULL_SHARE",
    "EVIDENCE_DECAY",
    "EVIDENCE_Z",
    "EVIDENCE_Z_MIN",
    "evidence_weight",
    "update_evidence",
    "evidence_z",
    "HARM_MARGIN",
    "HARM_SE",
    "heldout_floor",
    "robust_z",
    "stream_below_peers",
    "implausibly_low",
    "usefulness",
    "round_scores",
    "skewed",
    "proven_cheats",
    "update_ema",
    "to_weights",
]

MAD_SCALE = 1.4826  # 1/Φ⁻¹(3/4): MAD × 1.4826 estimates σ for normal data
LOW_Z = -3.0  # a reported mean loss this many robust σ below the peers' median is suspicious
LOW_P = 1e-3  # …or a stream below its peers' at the same positions with this one-sided p-value
MIN_TEST_POSITIONS = 10  # below this many aligned positions the signed-rank test is not used


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


# Held-out loss differences from one audit are noisy: only a contribution clearly worse than its
# peers' — by HARM_MARGIN nats, 3 robust sigmas across the gated miners, or HARM_SE standard errors of a
# miner's per-window gain against its peers' on the same windows — counts as harmful. The last is needed
# because a round has few gated miners and their MAD is itself noisy: in a real swarm
# (test_adversaries_e2e: 3 honest miners, 16 windows) one round's gains +0.035, +0.027 and −0.080 gave a
# MAD-based floor of −0.009 and the third, honest, miner scored 0. Measured over 3 runs of that test
# (30 audited rounds): the round's median window se 0.015–0.036 and honest gains up to 3.6 se below
# their median (−0.164 against −0.048; that one ≈ 4.3), with the se of a miner against the median of
# the *others*; against the median of all (what is used: see _paired_se) the se of three miners is
# ≈ 0.73 of that (simulated), so ≈ 4.9 and 5.9 — Δs trained on different batches generalize
# differently, on top of the windows' noise; the MAD-based floor alone zeroed an honest miner in 2 of
# the 3 runs. HARM_SE is 8. One Δ with per-window gains ±10 nats among three moves the floor by < 0.02.
HARM_MARGIN = 0.02
HARM_SE = 8.0
# What a miner is paid for is training on its own assigned batches. Its proof is specificity
# (checks/usefulness.py): calibrated on a real in-process tiny swarm (tests/unit/test_audit_scores.py:
# 6 honest ranks, one that trains only on the batches of steps {0, H/2, H−1}, int8, trimmed mean;
# colluders serving crafted updates), honest specificity per round is 0.005–0.03 nats in the first two
# rounds and 0.04–0.09 afterwards, with a per-batch spread of ≈ 0.02 (its standard error with 4 gain
# steps ≈ 0.01–0.016); updates not trained on the miner's batches sit at 0 — over all 18 candidate
# steps ALIE (honest mean − 1·σ) and IPM (−0.5 × mean) within ±0.004, a copy of another miner's update
# with 20 % noise −0.007–+0.005. One audit's specificity is too noisy to pay by directly (paying each
# round in proportion to it left honest miners' EMAs 2× apart within 6 rounds, and whole rounds of a
# real swarm with H = 6 and 4-window batches within noise). So specificity is evidence, accumulated
# over rounds: S ← (1 − EVIDENCE_DECAY)·S + specificity, V ← (1 − EVIDENCE_DECAY)²·V + se² per hotkey,
# z = S/√V. For work done every round z settles at (specificity/se)·√((2 − β)/β) = 4.4× one round's
# (β = 0.1); for updates not trained on the miner's batches z stays a standard normal. The pay rises
# from 0 at z = EVIDENCE_Z_MIN to full at EVIDENCE_Z (a standard normal earns 0.8 % of full pay on
# average), times a ramp on the miner's *work* — the gain of its Δ on the reference batches (the same
# secret windows for every miner, so miners compare pairwise) plus its specificity, i.e. an estimate of
# what it gains on its own batches — from 0 at MIN_SHARE to 1 at FULL_SHARE of the gated miners'
# median. Above that, pay is flat: once a miner has shown its work, how much its Δ helps in one audit is
# noise more than merit (paying min(share, 1) left two validators' weights of the same 3 honest miners
# at cosine 0.83 in tests/integration/test_validators_e2e.py).
# Measured over 6 rounds (test_audit_scores.py): honest z 1.0–4.5 after the first round, 2.8–6.6 after
# the second, 4.5–10 from then on; ALIE and IPM within ±0.6, the noisy copy −2.5–+0.8, the
# steps-{0, H/2, H−1} miner −6–+0.5: every crafted update and that miner earned 0.
# 0.1, not 0.2: in real swarms with few gain steps and small batches (H = 6–8, 4–8 windows, a sample of
# 2 of 3 members) one audit's specificity/se is 0–5 for honest miners, and with 0.2 (z settling at 3×
# one round's) an honest miner sat at z = 2.3 after 12 audits, paid a third. The price: a miner that
# stops working keeps its evidence ≈ 7 audits (z falls as 0.9ⁿ) instead of ≈ 2.
EVIDENCE_DECAY = 0.1
EVIDENCE_Z_MIN = 2.0
EVIDENCE_Z = 3.0
MIN_SHARE = 0.25
FULL_SHARE = 0.5


def _paired_se(own: Sequence[float], rows: Sequence[Sequence[float]]) -> Optional[float]:
    """Standard error of the mean of ``own`` minus the median of ``rows`` (every miner's, ``own``
    included), window by window. Included, so that with three miners the median stays between the two
    others' values: against the median of the *others* (their mean, for two) one Δ with wild per-window
    gains would move every honest miner's differences, and so the floor, at will."""
    d = [o - statistics.median(col) for o, col in zip(own, zip(*rows))]
    if len(d) < 2 or not all(math.isfinite(x) for x in d):
        return None
    return statistics.stdev(d) / math.sqrt(len(d))


def heldout_floor(
    gains: Sequence[Optional[float]], windows: Optional[Sequence[Optional[Sequence[float]]]] = None
) -> Optional[float]:
    """Held-out gain below which a contribution harms generalization relative to its peers:
    min(0, median − max(HARM_MARGIN, 3·1.4826·MAD, HARM_SE·se)) — a Δ that lowers held-out loss is never
    harmful, however it compares. ``windows``: each miner's per-window gains, aligned with ``gains``; se
    is the median over the miners of the standard error of a miner's per-window gain minus the miners'
    median on the same windows (medians: one Δ crafted for a wide spread cannot widen the margin).
    None without peers."""
    values = sorted(float(g) for g in gains if g is not None and math.isfinite(g))
    if not values:
        return None
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    rows = [list(w) for w in (windows or []) if w is not None and len(w) > 0]
    if rows:  # one validator draws one count of windows; a row of another length is left out
        length = statistics.mode(len(r) for r in rows)
        rows = [r for r in rows if len(r) == length]
    errors = [se for r in rows if len(rows) > 1 and (se := _paired_se(r, rows)) is not None]
    se = statistics.median(errors) if errors else 0.0
    return min(0.0, med - max(HARM_MARGIN, 3 * MAD_SCALE * mad, HARM_SE * se))


def usefulness(
    heldout_gain: Optional[float], work: Optional[float], median: Optional[float], floor: Optional[float]
) -> float:
    """How much of a full pay a miner whose evidence of work passed the gate earns for this round's
    ``work`` (see the constants above): clip((s − MIN_SHARE) / (FULL_SHARE − MIN_SHARE), 0, 1) for s =
    work / ``median`` (the median work of the round's gated miners — an honest majority among them is
    assumed, as for every statistic here): 0 below MIN_SHARE, 1 from FULL_SHARE up. 0 as well when the
    Δ makes held-out data clearly worse than its peers' do (heldout_gain < floor). Held-out gain is a
    gate, not the pay: once training plateaus an honest Δ's held-out gain in one audit is as often
    slightly negative as positive, and a crafted mean-like update generalizes *better* than any honest
    one (measured: ALIE's held-out gain above every honest miner's)."""
    if work is None or not median or median <= 0:
        return 0.0
    if floor is not None and heldout_gain is not None and heldout_gain < floor:
        return 0.0
    return min(max((work / median - MIN_SHARE) / (FULL_SHARE - MIN_SHARE), 0.0), 1.0)


def evidence_weight(z: float) -> float:
    """The share of pay the evidence ``z`` earns: 0 up to EVIDENCE_Z_MIN, 1 from EVIDENCE_Z, linear between."""
    return min(max((z - EVIDENCE_Z_MIN) / (EVIDENCE_Z - EVIDENCE_Z_MIN), 0.0), 1.0)


def _measured(a: Audit) -> bool:
    # Passed every check and its peers attest the served bytes (unverifiable: nothing proves the Δ is
    # what the round aggregated, so it proves no work either).
    return a.passed and a.attested is True and a.specificity is not None


def update_evidence(prev: Mapping[str, Sequence[float]], audits: Sequence[Audit]) -> dict[str, list[float]]:
    """The per-hotkey evidence of work, [S, V], after this round's audits (see the constants above):
    every measured audit adds its specificity to S and its squared standard error, floored at the
    round's median one, to V, both decayed
    by EVIDENCE_DECAY; others keep theirs. Pure."""
    measured = [a for a in audits if _measured(a)]
    errors = [a.specificity_se for a in measured if a.specificity_se is not None and math.isfinite(a.specificity_se)]
    floor = statistics.median(errors) if errors else 0.0
    keep = 1.0 - EVIDENCE_DECAY
    out = {hk: [float(v[0]), float(v[1])] for hk, v in prev.items()}
    for a in measured:
        if not math.isfinite(a.specificity):
            continue
        # The miner's own error, floored at the round's median: a Δ crafted for a tiny spread cannot
        # shrink its own, and colluders serving zero or tiny Δs (error 0) cannot shrink everyone's.
        se = a.specificity_se if a.specificity_se is not None and math.isfinite(a.specificity_se) else 0.0
        s, v = out.get(a.hotkey, (0.0, 0.0))
        out[a.hotkey] = [keep * s + float(a.specificity), keep * keep * v + max(se, floor) ** 2]
    return out


def evidence_z(entry: Sequence[float]) -> float:
    """S/√V; without a noise estimate (V = 0: a single gain step) the sign of S, as ±inf or 0."""
    s, v = float(entry[0]), float(entry[1])
    if v > 0:
        return s / math.sqrt(v)
    return math.inf if s > 0 else (-math.inf if s < 0 else 0.0)


def skewed(audits: Sequence[Audit], balances: Optional[Mapping[str, Sequence[float]]] = None) -> dict[str, str]:
    """Audited hotkeys whose updates are skewed against their peers, with the reason
    (:func:`~template.validator.checks.usefulness.skew_problem` over ``balances``: hotkey → its recent
    balances *including* this round's; None: this round's alone)."""
    out = {}
    for a in audits:
        history = balances.get(a.hotkey, []) if balances is not None else [a.balance]
        problem = skew_problem([x for x in history if x is not None])
        if problem:
            out[a.hotkey] = problem
    return out


def round_scores(
    audits: Sequence[Audit],
    reported: Mapping[str, Sequence[float]],
    evidence: Optional[Mapping[str, Sequence[float]]] = None,
    balances: Optional[Mapping[str, Sequence[float]]] = None,
) -> dict[str, float]:
    """A score in [0, 1] per audited hotkey.

    0 when anything failed: not served, bad receipt, bad contribution, a failed loss check, a copy
    (:attr:`Audit.passed`), an attestation that failed or could not be verified, implausibly low
    reported losses (:func:`implausibly_low`), or updates skewed against the peers' (:func:`skewed`,
    over ``balances``); 0 too while the miner's evidence of work is below the gate (``evidence``:
    :func:`update_evidence` *including* this round; None: this round alone). The others earn
    :func:`evidence_weight` × :func:`usefulness` of their work (``ref_gain + specificity``) against the
    median work of the gated miners."""
    low = implausibly_low(audits, reported)
    skew = skewed(audits, balances)
    evidence = update_evidence({}, audits) if evidence is None else evidence
    weight = {
        a.hotkey: evidence_weight(evidence_z(evidence[a.hotkey]))
        for a in audits
        if _measured(a)
        and a.ref_gain is not None
        and a.hotkey not in low
        and a.hotkey not in skew
        and a.hotkey in evidence
    }
    gated = [a for a in audits if weight.get(a.hotkey, 0.0) > 0]
    work = {a.hotkey: a.ref_gain + a.specificity for a in gated}
    median = _median_positive(work.values())
    # The harm floor comes from the gated miners (the honest reference), so crafted updates cannot drag
    # it toward themselves.
    floor = heldout_floor([a.heldout_gain for a in gated], [a.heldout_gains for a in gated])
    scores = {a.hotkey: 0.0 for a in audits}
    for a in gated:
        scores[a.hotkey] = weight[a.hotkey] * usefulness(a.heldout_gain, work[a.hotkey], median, floor)
    return scores


def proven_cheats(audits: Sequence[Audit]) -> dict[str, str]:
    """Audited hotkeys caught by evidence they signed themselves, with the reason: a loss claim that
    recomputation contradicts (step 0 exactly; the last step far beyond its margin:
    :func:`~template.validator.checks.losses.last_step_contradicted`), or a receipt for the
    very bytes the validator already saw in an earlier round (a replay or a copy of older work).
    Their EMA is reset to 0, not just decayed: the evidence is not statistical, and a cheat that is
    honest now and then must not keep the weight of its honest rounds.

    Not here, deliberately: unserved evidence (a network fault looks the same), a same-round copy
    (attributed by rank, so the victim could be the one flagged), a near-replay (a cosine, however
    high, is not a signature over the same bytes), an unverifiable attestation, a last-step claim just
    below its margin (the check is approximate: an honest miner's bad last batch can miss it once) and
    :func:`implausibly_low` (a statistical test) — those score 0 for the round and decay."""
    out: dict[str, str] = {}
    for a in audits:
        if not a.receipt_ok:
            continue
        if a.loss_first_ok is False:
            out[a.hotkey] = "step-0 loss claim contradicted"
        elif a.loss_last_contradicted:
            out[a.hotkey] = "last-step loss claim contradicted"
        elif (
            a.copied_from is not None
            and a.copied_round is not None
            and a.copied_round < a.round
            and a.copy_cosine is None
        ):
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
