"""Validator audits of one diloco round: what a validator can check about each miner's work from the
data it has already fetched (the round's start state, the miners' signed receipts and compressed
contributions, the dataset shards) and its own secret. Pure functions over that data: no networking, no
chain, no disk.

:func:`audit_round` runs the checks of :mod:`template.validator.checks` for every sampled miner, in this
order, and records the outcome in an :class:`Audit` (each module explains its check and thresholds):

1. receipt (:mod:`~template.validator.checks.receipt`): signed, about this miner, run, round and the
   agreed states — claims of a receipt that fails are not evaluated;
2. step-0 loss (:mod:`~template.validator.checks.losses`): replayed exactly at θ_r;
3. contribution (:mod:`~template.validator.checks.contribution`): the signed bytes, strictly parsed,
   finite, of the claimed norm;
4. peer attestation (:mod:`~template.validator.checks.attestation`): the peers received these bytes;
5. usefulness (:mod:`~template.validator.checks.usefulness`), once every miner's Δ is known: gains on
   the miner's batches of the secret gain steps, on secret reference windows and on held-out windows, at
   θ_r − Δ and at θ_r − a·Δ_ref (a·the median of the other contributions), and from them the Δ's
   specificity to its own batches;
6. last-step loss (:mod:`~template.validator.checks.losses`): not implausibly below loss(θ_r − Δ);
7. copies (:mod:`~template.validator.checks.copies`): identical bytes seen before, or a near-replay of
   an update audited in an earlier round.

Every random choice — the gain steps, the reference windows, the held-out windows, the sketch
coordinates — comes from the validator's secret (:class:`template.validator.draw.AuditDraw`).

Cost model. A miner's diloco round is H inner steps of forward + backward + AdamW on B = ``batch_size`` windows:
≈ 3·H·B window-forwards (backward ≈ 2 forwards), plus compression and signing. Auditing one miner is forward
passes only, under ``no_grad``, with k = 4 gain steps: its step-0 batch at θ_r; its last batch at θ_r and
θ_r − Δ; its k gain-step batches and the k reference batches at θ_r − Δ and θ_r − a·Δ_ref; the ``heldout_count``
held-out windows at θ_r − Δ — 3 + 4k = 19 batches + 16 windows with the validator's defaults — plus its Δ_ref (a
coordinate-wise median of the other K − 1 contributions), two parameter copies and one dot product over Δ. Once
per round, shared by the audited miners: building θ_r (init + strict parse), the reference and held-out windows
at θ_r, and the peer receipts' signature checks. That is 168 window-forwards per miner against the miner's ≈ 480
on the tiny preset (H = 20, B = 8) and 320 against ≈ 2400 on small (H = 50, B = 16); it does not grow with H.
The old audit (fixed steps {0, H/2, H−1}, no reference) read 6B + 16: 64 and 112.
``scripts/bench/audit_cost.py`` (CPU time, one thread, 3 miners per round sharing the fixed part; both versions
on one machine) measured 0.34 per miner-round on tiny (0.18 before) and 0.135 on small (0.052 before):
specificity costs about 2.5× the old audit. ``GAIN_STEPS`` (template.validator.draw) is the knob: 3 would bring
small to about 0.11, at the price measured in template.validator.scoring.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.data.sampling import batch_offsets, heldout_offsets, windows_to_tensor
from template.engine import checkpoint
from template.engine.compression import payload_bytes
from template.engine.state import StateFormat
from template.validator.checks.attestation import (
    MIN_ATTESTERS,
    agreed_problem,
    attestation_problem,
    attestations_of,
    attesters,
)
from template.validator.checks.contribution import NORM_REL_TOL, contribution_problems
from template.validator.checks.copies import (
    REPLAY_COSINE,
    REPLAY_MARGIN,
    SKETCH_COORDS,
    Candidate,
    Sketch,
    Trace,
    find_copies,
    remember,
)
from template.validator.checks.losses import (
    FIRST_LOSS_ABS_TOL,
    FIRST_LOSS_REL_TOL,
    LAST_LOSS_ABS_TOL,
    LAST_LOSS_PROGRESS_FACTOR,
    first_loss_tolerance,
    last_loss_margin,
    last_step_contradicted,
    last_step_problem,
    step0_problem,
)
from template.validator.checks.receipt import Expected, receipt_problems
from template.validator.checks.transition import TransitionCheck, transition_check
from template.validator.checks.usefulness import (
    DUPLICATE_COSINE,
    Probe,
    balance,
    projection,
    reference_update,
    specificity,
)
from template.validator.draw import AuditDraw, sketch_seed
from template.wire.dataset import DatasetManifest
from template.wire.orchestrator import RoundRecord
from template.wire.receipts import SignedReceipt

__all__ = [
    "Evidence",
    "Audit",
    "audit_round",
    "first_loss_tolerance",
    "last_loss_margin",
    "FIRST_LOSS_ABS_TOL",
    "FIRST_LOSS_REL_TOL",
    "LAST_LOSS_ABS_TOL",
    "LAST_LOSS_PROGRESS_FACTOR",
    "REPLAY_COSINE",
    "REPLAY_MARGIN",
    "MIN_ATTESTERS",
    "attestation_problem",
    "NORM_REL_TOL",
    "SKETCH_COORDS",
]


@dataclass(frozen=True)
class Evidence:
    """What a validator fetched from one miner for one round (None: not served)."""

    hotkey: str
    rank: int
    receipt: Optional[SignedReceipt]
    contribution: Optional[bytes]


@dataclass(frozen=True)
class Audit:
    """The outcome of auditing one miner in one round. ``None`` means "not evaluated" (an earlier check
    failed or the data was missing); ``reasons`` says what failed or could not be verified, in words."""

    hotkey: str
    round: int
    rank: int = -1
    served: bool = False  # a receipt and a contribution were obtained
    receipt_ok: bool = False
    contribution_ok: bool = False
    loss_first_claimed: Optional[float] = None
    loss_first_recomputed: Optional[float] = None
    loss_first_ok: Optional[bool] = None
    loss_last_claimed: Optional[float] = None
    loss_last_start: Optional[float] = None  # loss(θ_r) on the last batch: the base of the margin
    loss_last_evaluated: Optional[float] = None  # loss(θ_r − Δ) on the last batch
    loss_last_ok: Optional[bool] = None
    loss_last_contradicted: bool = False  # …so far below (or the Δ breaks the model) that it is proof
    own_gain: Optional[float] = None  # loss(θ_r) − loss(θ_r − Δ) on the miner's last batch
    ref_gain: Optional[float] = None  # …mean over the reference batches (the same secret windows for all)
    specificity: Optional[float] = None  # the gain specific to its own batches (checks/usefulness.py)
    specificity_se: Optional[float] = None  # its standard error, from the spread on the reference batches
    heldout_gains: Optional[tuple[float, ...]] = None  # loss(θ_r) − loss(θ_r − Δ) per held-out window
    heldout_gain: Optional[float] = None  # their mean
    norm: Optional[float] = None
    copied_from: Optional[str] = None
    copied_round: Optional[int] = None  # the round of the original (< round: a replay of evidence already seen)
    copy_cosine: Optional[float] = None  # None: identical bytes (signed proof); else a near-replay's cosine
    balance: Optional[float] = None  # median share of coordinates above the others (checks/usefulness.py)
    attested: Optional[bool] = None  # peers confirm (True) / contradict (False) the served bytes; None: unverifiable
    # False: the round's agreed state is not what its agreed contributions produce (checks/transition.py,
    # run by the validator loop when it holds every included contribution); None: not checked.
    transition_ok: Optional[bool] = None
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """No check failed (usefulness is scored separately, in template.validator.scoring, and an
        unverifiable attestation — ``attested is None`` — scores 0 there without failing here)."""
        return (
            self.served
            and self.receipt_ok
            and self.contribution_ok
            and self.loss_first_ok is True
            and self.loss_last_ok is True
            and self.copied_from is None
            and self.attested is not False
            and self.transition_ok is not False
            and self.own_gain is not None
            and self.specificity is not None
            and self.heldout_gain is not None
        )


def _check_inputs(
    training: TrainingConfig, evidence: list[Evidence], heldout_count: int, gain_steps: Optional[Sequence[int]]
):
    if training.strategy != "diloco":
        raise ValueError(f"audits need diloco contributions; this run's strategy is {training.strategy!r}")
    H = training.inner_steps
    if gain_steps is not None:
        if not gain_steps:
            raise ValueError("gain_steps must name at least one inner step")
        for s in gain_steps:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < H:
                raise ValueError(f"gain_steps must be inner steps in [0, {H}), got {s!r}")
    if heldout_count < 1:
        raise ValueError(f"heldout_count must be >= 1, got {heldout_count}")
    if len({e.hotkey for e in evidence}) != len(evidence) or len({e.rank for e in evidence}) != len(evidence):
        raise ValueError("evidence must name each hotkey and each rank at most once")


def _start(fmt: StateFormat, start_state: Optional[bytes], agreed_start: Optional[str], round: int):
    """θ_r's parsed state (strictly, as every miner parses it) and the start hashes a receipt may name."""
    data = fmt.initial() if start_state is None else bytes(start_state)
    state = fmt.parse(data)
    loaded = checkpoint.state_hash(data)
    if start_state is not None:
        if agreed_start is None or loaded != agreed_start:
            raise ValueError(f"start_state hashes to {loaded}, not to the agreed start {agreed_start}")
        starts = frozenset({agreed_start})
    else:
        if agreed_start not in (None, loaded):
            raise ValueError(f"agreed_start {agreed_start} is not the seed init {loaded}; pass its bytes")
        starts = frozenset({None, loaded})
    if state.round != round:
        raise ValueError(f"the start state is at round {state.round}, not {round}")
    return state, starts


def audit_round(
    *,
    training: TrainingConfig,
    manifest: DatasetManifest,
    read_shard: Callable[[int], bytes],
    start_state: Optional[bytes],
    agreed_start: Optional[str],
    agreed_end: str,
    run_id: str,
    generation: int,
    round: int,
    evidence: list[Evidence],
    heldout_count: int,
    secret: bytes,
    seen_contributions: dict[str, tuple[str, int]],
    history: Optional[list[Trace]] = None,
    members: Sequence[str] = (),
    peer_receipts: Sequence[SignedReceipt] = (),
    gain_steps: Optional[Sequence[int]] = None,
    included: Optional[Sequence[Optional[str]]] = None,
    device: str = "cpu",
    start_round: Optional[int] = None,
) -> list[Audit]:
    """Audit the miners in ``evidence`` for ``round`` (see the module docstring for the checks).

    ``start_round``: the round whose agreed state the inner steps started from (default ``round``; on an
    overlapped run ``round − 1`` after a generation's first round, see ``TrainingConfig.overlap``): θ_r below
    is that state.

    ``start_state``: the canonical bytes of θ_r (hash-verified against ``agreed_start`` here), or
    None for the seed init (round 0; rebuilt exactly as :meth:`StateFormat.initial` makes it for every
    miner, and then ``agreed_start`` must be None or that state's hash). ``agreed_end``: the state the
    round produced. ``read_shard``: shard index → bytes (e.g. :func:`template.data.store.shard_reader`).
    ``secret``: the validator's 32-byte audit secret; the gain steps, reference and held-out windows and
    sketch coordinates are drawn from it (:class:`~template.validator.draw.AuditDraw`). ``gain_steps``
    overrides the drawn gain steps (tests).

    ``seen_contributions`` maps a contribution's sha256 to the (hotkey, round) that first served it;
    it is read for the copy check and **updated in place** with this round's attributable
    contributions (signed receipt and valid bytes). ``history`` holds sketches of updates audited in
    earlier rounds, for the near-replay check, and is **updated in place** with this round's (bounded:
    :func:`template.validator.checks.copies.remember`). The caller must persist both across rounds and
    restarts, or a replay of an old round's contribution goes unnoticed. ``seen`` entries may be pruned
    for rounds older than anything a miner could still replay (a miner keeps 200 rounds of receipts).

    ``members``: the round's hotkeys in rank order; ``peer_receipts``: receipts of members outside the
    sample. Together with the sampled miners' receipts they are the attesters for the peer-attestation
    check (a receipt counts only if it passes the same receipt checks, for the hotkey at its rank).
    ``included``: the round record's agreed contribution hash per rank (``RoundRecord.included``, decided
    by a strict majority of the members' reports). When given it settles attestation instead of the
    receipts — a receipt's list of what its rank received is a claim, and colluding attesters could list
    bogus hashes to fail an honest miner where they are most of the attesters: the served bytes are
    attested when they are the agreed ones and fail when the round agreed other bytes from that rank.
    Where it agreed none (not aggregated: the miner equivocated, or sent most members bytes that fail its
    signature — every rank receives a block straight from its sender, so that is the sender's doing) the
    Δ is unverifiable: no work of it entered the model, so it earns nothing that round.

    Holds every audited miner's decompressed Δ at once (for the median Δ_ref): memory grows with the
    sample size. Returns one :class:`Audit` per evidence entry, in the order given. Raises
    ``ValueError`` for inconsistent inputs from the caller (a start state that does not hash to
    ``agreed_start`` or is not at ``round``, a strategy without contributions, bad ``gain_steps``,
    duplicate hotkeys or ranks, a secret that is not 32 bytes).
    """
    _check_inputs(training, evidence, heldout_count, gain_steps)
    draw = AuditDraw(secret, round)
    H = training.inner_steps
    last = H - 1
    steps = sorted(set(gain_steps)) if gain_steps is not None else draw.gain_steps(H)
    history = [] if history is None else history

    # θ_r, built once, exactly as every miner builds it; the contribution cap is an honest one's size.
    fmt = StateFormat(training)
    state, starts = _start(fmt, start_state, agreed_start, round if start_round is None else start_round)
    dev = torch.device(device)
    max_bytes = payload_bytes(fmt.spec, training.compression, fraction=training.topk_fraction)
    expected = Expected(training, run_id, generation, round, starts, agreed_end)
    B, T = training.batch_size, training.seq_len

    def batch(hotkey: str, step: int) -> torch.Tensor:
        offsets = batch_offsets(
            manifest, seed=training.seed, round=round, hotkey=hotkey, step=step, batch_size=B, seq_len=T
        )
        return windows_to_tensor(read_shard, offsets, T, manifest.token_bytes, manifest.vocab_size)

    at = heldout_offsets(manifest, seed=draw.heldout_seed(), round=round, count=heldout_count, seq_len=T)
    heldout = windows_to_tensor(read_shard, at, T, manifest.token_bytes, manifest.vocab_size)
    probe = Probe(fmt.model(state, dev), heldout, B, dev)
    attesting = attesters([*(e.receipt for e in evidence if e.receipt is not None), *peer_receipts], members, expected)
    sketch = Sketch(fmt.names, fmt.spec, sketch_seed(secret))

    results: dict[str, dict] = {}
    candidates: list[Candidate] = []  # attributable contributions, for the copy check
    deltas: dict[str, tuple[str, dict[str, torch.Tensor], float]] = {}  # hotkey -> (sha256, Δ, step-0 loss)
    for ev in evidence:
        a: dict = {"hotkey": ev.hotkey, "round": round, "rank": ev.rank}
        reasons: list[str] = []
        a["served"] = ev.receipt is not None and ev.contribution is not None
        if ev.receipt is None:
            reasons.append("not served: no receipt")
        if ev.contribution is None:
            reasons.append("not served: no contribution")
        results[ev.hotkey] = a
        a["reasons"] = reasons
        if ev.receipt is None:
            continue
        problems = receipt_problems(ev.receipt, ev.hotkey, ev.rank, expected)
        reasons.extend(problems)
        a["receipt_ok"] = not problems
        if problems:
            continue  # claims that are not attributable (or not about this round) are not evaluated
        receipt = ev.receipt.receipt

        # Step 0: exact replay at θ_r.
        claimed0 = float(receipt.losses[0])
        recomputed0 = probe.at_start(batch(ev.hotkey, 0))
        problem = step0_problem(claimed0, recomputed0)
        a["loss_first_claimed"], a["loss_first_recomputed"] = claimed0, recomputed0
        a["loss_first_ok"] = problem is None
        if problem:
            reasons.append(problem)
        a["loss_last_claimed"] = float(receipt.losses[last])

        if ev.contribution is None:
            continue
        problems, delta, norm = contribution_problems(
            receipt, ev.contribution, spec=fmt.spec, training=training, max_bytes=max_bytes
        )
        reasons.extend(problems)
        a["contribution_ok"] = not problems
        a["norm"] = norm
        if problems or delta is None:
            continue
        if included is not None and len(included) == len(members):
            a["attested"], problem = agreed_problem(receipt.contribution_sha256, included[ev.rank])
        else:
            a["attested"], problem = attestation_problem(
                receipt.contribution_sha256, attestations_of(ev.rank, attesting)
            )
        if problem:
            reasons.append(problem)
        candidates.append(Candidate(ev.hotkey, ev.rank, receipt.contribution_sha256, sketch(delta), a["attested"]))
        deltas[ev.hotkey] = (receipt.contribution_sha256, delta, recomputed0)

    ref_batches = [batch(draw.reference_hotkey(), s) for s in steps]
    ref_start = [probe.at_start(xy) for xy in ref_batches] if deltas else []
    sketches = {c.hotkey: c.sketch for c in candidates}
    for hotkey, (sha, delta, recomputed0) in deltas.items():
        a = results[hotkey]
        # Δ_ref for this miner: the median of the other distinct contributions, near-duplicates of its
        # own left out (checks/usefulness.py says why); identical bytes vote once.
        # Only contributions the round really exchanged (attested) are references: bytes a colluder serves
        # validators alone cannot move another miner's reference or balance.
        others = {
            o_sha: o_delta
            for o_hotkey, (o_sha, o_delta, _) in deltas.items()
            if o_sha != sha
            and results[o_hotkey]["attested"] is True
            and float(torch.dot(sketches[o_hotkey], sketches[hotkey])) < DUPLICATE_COSINE
        }
        reference = reference_update(list(others.values()))
        probe.move(delta)
        probe.move_reference(reference, projection(delta, reference))
        own, own_ref = [], []
        for s in steps:
            xy = batch(hotkey, s)
            own.append(probe.at_moved(xy))
            own_ref.append(probe.at_reference(xy))
        other = [probe.at_moved(xy) for xy in ref_batches]
        other_ref = [probe.at_reference(xy) for xy in ref_batches]
        xy = batch(hotkey, last)
        at_start = recomputed0 if last == 0 else probe.at_start(xy)
        at_moved = probe.at_moved(xy)
        heldout = probe.heldout_gains()
        if not all(math.isfinite(x) for x in (*own, *own_ref, *other, *other_ref, at_moved, *heldout)):
            # Values a validly signed Δ may hold (scales up to float32-max/127) can overflow the forward
            # pass: a Δ that breaks the model is no work, and must not break the scoring either.
            a["reasons"].append("θ_r − Δ gives a non-finite loss: the contribution breaks the model")
            a["loss_last_ok"], a["loss_last_contradicted"] = False, True
            continue
        a["specificity"], a["specificity_se"] = specificity(own, own_ref, other, other_ref)
        a["balance"] = balance(delta, list(others.values()))  # judged over rounds, in scoring
        a["ref_gain"] = sum(s0 - x for s0, x in zip(ref_start, other)) / len(other)
        a["heldout_gain"], a["heldout_gains"] = sum(heldout) / len(heldout), tuple(heldout)
        a["loss_last_start"], a["loss_last_evaluated"] = at_start, at_moved
        a["own_gain"] = at_start - at_moved
        problem = last_step_problem(a["loss_last_claimed"], at_start, at_moved, training)
        a["loss_last_ok"] = problem is None
        a["loss_last_contradicted"] = last_step_contradicted(a["loss_last_claimed"], at_start, at_moved, training)
        if problem:
            a["reasons"].append(problem)
    del deltas
    probe.move_reference(None)

    copies = find_copies(candidates, round, seen_contributions, history)
    for hotkey, copy in copies.items():
        r = results[hotkey]
        r["reasons"].append(copy.reason)
        r["copied_from"], r["copied_round"], r["copy_cosine"] = copy.of, copy.round, copy.cosine
    remember(history, candidates, round, copies)

    return [Audit(**{**results[ev.hotkey], "reasons": tuple(results[ev.hotkey]["reasons"])}) for ev in evidence]


def check_transition(
    training: TrainingConfig,
    start_state: Optional[bytes],
    record: RoundRecord,
    evidence: Sequence[Evidence],
    audits: list[Audit],
) -> tuple[list[Audit], Optional[TransitionCheck]]:
    """Recompute θ_{r+1} from θ_r and the round's agreed contributions when ``evidence`` holds all of
    them (:mod:`~template.validator.checks.transition`; a validator whose sample covers the group checks
    every round). Returns the audits — unchanged, or, when the agreed state is not what the agreed
    contributions produce, each failed with that reason (the round pays nobody: every audited miner
    either signed that state, its receipt names it, or failed the receipt check for not signing it) — and
    the check (None when it could not run: an included contribution not sampled, not served, or served
    with other bytes than the agreed ones)."""
    if record.included is None:
        return audits, None
    contributions = {e.rank: e.contribution for e in evidence if e.contribution is not None}
    if any(sha is not None and rank not in contributions for rank, sha in enumerate(record.included)):
        return audits, None
    check = transition_check(training, start_state, record, contributions)
    if check.missing:
        return audits, None
    if check.verified:
        return audits, check
    reason = f"the round's agreed state is not what its agreed contributions produce ({check.problem})"
    return [dataclasses.replace(a, transition_ok=False, reasons=(*a.reasons, reason)) for a in audits], check
