"""Validator audits of one diloco round: what a validator can check about each miner's work from the
data it has already fetched (the round's start state, the miners' signed receipts and compressed
contributions, the dataset shards). Pure functions over that data: no networking, no chain, no disk.

:func:`audit_round` runs the checks of :mod:`template.validator.checks` for every sampled miner, in this
order, and records the outcome in an :class:`Audit` (each module explains its check and thresholds):

1. receipt (:mod:`~template.validator.checks.receipt`): signed, about this miner, run, round and the
   agreed states — claims of a receipt that fails are not evaluated;
2. step-0 loss (:mod:`~template.validator.checks.losses`): replayed exactly at θ_r;
3. contribution (:mod:`~template.validator.checks.contribution`): the signed bytes, strictly parsed,
   finite, of the claimed norm;
4. peer attestation (:mod:`~template.validator.checks.attestation`): the peers received these bytes;
5. usefulness (:mod:`~template.validator.checks.usefulness`): own and held-out gain of θ_r − Δ;
6. last-step loss (:mod:`~template.validator.checks.losses`): not implausibly below loss(θ_r − Δ);
7. copies (:mod:`~template.validator.checks.copies`), once every miner's Δ is known.

Cost model (the goal is ≤ 10% of a miner's round). A miner's diloco round is H inner steps of forward
+ backward + AdamW on B = ``batch_size`` windows: ≈ 3·H·B window-forwards (backward ≈ 2 forwards),
plus compression and signing. Auditing one miner is forward passes only, under ``no_grad``: the
batches of ``own_steps ∪ {H−1}`` at θ_r (step 0's doubles as the step-0 check) and at θ_r − Δ, and the
``heldout_count`` held-out windows at θ_r − Δ (the same windows at θ_r are evaluated once per round and
shared by every audited miner); plus one signature check, one strict parse + decompression of Δ and
one parameter copy. Per round, once: building θ_r (init + strict parse of the state), a copy, and the
peer receipts' signature checks. With the validator's defaults (three own steps, 16 held-out windows)
that is 6B + 16 window-forwards per miner: 64 against the miner's ≈ 480 on the tiny preset (H = 20,
B = 8), 112 against ≈ 2400 on small (H = 50, B = 16), and the audit does not grow with H.
``scripts/bench/audit_cost.py`` measures it (CPU time, one thread, 3 miners per round sharing the
fixed part): ≈ 15% per miner-round on tiny, where the model is too small for the per-forward work to
dominate, and 4.8% on small; larger presets only lower it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.data.sampling import batch_offsets, heldout_offsets, windows_to_tensor
from template.engine import checkpoint
from template.engine.compression import payload_bytes
from template.engine.state import StateFormat
from template.validator.checks.attestation import MIN_ATTESTERS, attestation_problem, attestations_of, attesters
from template.validator.checks.contribution import NORM_REL_TOL, contribution_problems
from template.validator.checks.copies import COPY_COSINE, SKETCH_COORDS, Candidate, Sketch, find_copies
from template.validator.checks.losses import (
    FIRST_LOSS_ABS_TOL,
    FIRST_LOSS_REL_TOL,
    LAST_LOSS_ABS_TOL,
    LAST_LOSS_PROGRESS_FACTOR,
    first_loss_tolerance,
    last_loss_margin,
    last_step_problem,
    step0_problem,
)
from template.validator.checks.receipt import Expected, receipt_problems
from template.validator.checks.usefulness import Probe
from template.wire.dataset import DatasetManifest
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
    "COPY_COSINE",
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
    failed or the data was missing); ``reasons`` says what failed, in words."""

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
    own_gain: Optional[float] = None
    heldout_gain: Optional[float] = None
    norm: Optional[float] = None
    copied_from: Optional[str] = None
    copied_round: Optional[int] = None  # the round of the original (< round: a replay of evidence already seen)
    attested: Optional[bool] = None  # peers confirm (True) / contradict (False) the served bytes; None: too few
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """Every check passed (usefulness is scored separately, in template.validator.scoring)."""
        return (
            self.served
            and self.receipt_ok
            and self.contribution_ok
            and self.loss_first_ok is True
            and self.loss_last_ok is True
            and self.copied_from is None
            and self.attested is not False
            and self.own_gain is not None
            and self.heldout_gain is not None
        )


def _check_inputs(training: TrainingConfig, evidence: list[Evidence], heldout_count: int, own_steps: list[int]):
    if training.strategy != "diloco":
        raise ValueError(f"audits need diloco contributions; this run's strategy is {training.strategy!r}")
    H = training.inner_steps
    for s in own_steps:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < H:
            raise ValueError(f"own_steps must be inner steps in [0, {H}), got {s!r}")
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
    own_steps: list[int],
    audit_seed: int,
    seen_contributions: dict[str, tuple[str, int]],
    members: Sequence[str] = (),
    peer_receipts: Sequence[SignedReceipt] = (),
    device: str = "cpu",
) -> list[Audit]:
    """Audit the miners in ``evidence`` for ``round`` (see the module docstring for the checks).

    ``start_state``: the canonical bytes of θ_r (hash-verified against ``agreed_start`` here), or
    None for the seed init (round 0; rebuilt exactly as :meth:`StateFormat.initial` makes it for every
    miner, and then ``agreed_start`` must be None or that state's hash). ``agreed_end``: the state the
    round produced. ``read_shard``: shard index → bytes (e.g. :func:`template.data.store.shard_reader`).
    ``own_steps``: inner steps whose batches measure ``own_gain`` (the last step is always added: the
    last-loss check evaluates it anyway). ``audit_seed``: the validator's own seed for the held-out
    windows.

    ``seen_contributions`` maps a contribution's sha256 to the (hotkey, round) that first served it;
    it is read for the copy check and **updated in place** with this round's attributable
    contributions (signed receipt and valid bytes). The caller must persist it across rounds and
    restarts, or a replay of an old round's contribution goes unnoticed. Entries may be pruned for
    rounds older than anything a miner could still replay (a miner keeps 200 rounds of receipts).

    ``members``: the round's hotkeys in rank order; ``peer_receipts``: receipts of members outside the
    sample. Together with the sampled miners' receipts they are the attesters for the peer-attestation
    check (a receipt counts only if it passes the same receipt checks, for the hotkey at its rank).

    Returns one :class:`Audit` per evidence entry, in the order given. Raises ``ValueError`` for
    inconsistent inputs from the caller (a start state that does not hash to ``agreed_start`` or is
    not at ``round``, a strategy without contributions, bad ``own_steps``, duplicate hotkeys or ranks).
    """
    _check_inputs(training, evidence, heldout_count, own_steps)
    last = training.inner_steps - 1
    gain_steps = sorted(set(own_steps) | {last})

    # θ_r, built once, exactly as every miner builds it; the contribution cap is an honest one's size.
    fmt = StateFormat(training)
    state, starts = _start(fmt, start_state, agreed_start, round)
    dev = torch.device(device)
    max_bytes = payload_bytes(fmt.spec, training.compression, fraction=training.topk_fraction)
    expected = Expected(training, run_id, generation, round, starts, agreed_end)
    B, T = training.batch_size, training.seq_len

    def batch(hotkey: str, step: int) -> torch.Tensor:
        offsets = batch_offsets(
            manifest, seed=training.seed, round=round, hotkey=hotkey, step=step, batch_size=B, seq_len=T
        )
        return windows_to_tensor(read_shard, offsets, T)

    heldout = windows_to_tensor(
        read_shard, heldout_offsets(manifest, seed=audit_seed, round=round, count=heldout_count, seq_len=T), T
    )
    probe = Probe(fmt.model(state, dev), heldout, B, dev)
    attesting = attesters([*(e.receipt for e in evidence if e.receipt is not None), *peer_receipts], members, expected)
    sketch = Sketch(fmt.names, fmt.spec, audit_seed)

    results: dict[str, dict] = {}
    candidates: list[Candidate] = []  # attributable contributions, for the copy check
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
        a["attested"], problem = attestation_problem(receipt.contribution_sha256, attestations_of(ev.rank, attesting))
        if problem:
            reasons.append(problem)
        candidates.append(Candidate(ev.hotkey, ev.rank, receipt.contribution_sha256, sketch(delta), a["attested"]))

        probe.move(delta)
        del delta
        a["own_gain"], at_start, at_moved = probe.own_gain(gain_steps, partial(batch, ev.hotkey), {0: recomputed0})
        a["heldout_gain"] = probe.heldout_gain()

        a["loss_last_start"], a["loss_last_evaluated"] = at_start[last], at_moved[last]
        problem = last_step_problem(a["loss_last_claimed"], at_start[last], at_moved[last], training)
        a["loss_last_ok"] = problem is None
        if problem:
            reasons.append(problem)

    for hotkey, copy in find_copies(candidates, round, seen_contributions).items():
        results[hotkey]["reasons"].append(copy.reason)
        results[hotkey]["copied_from"], results[hotkey]["copied_round"] = copy.of, copy.round

    return [Audit(**{**results[ev.hotkey], "reasons": tuple(results[ev.hotkey]["reasons"])}) for ev in evidence]
