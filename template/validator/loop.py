"""The validator's work, one step at a time: follow agreed rounds, gather evidence from the miners'
meta-miners (:class:`template.net.miner_client.MinerClient`), audit it
(:mod:`template.validator.audit`), score and keep an EMA (:mod:`template.validator.scoring`) on disk, and
turn it into weights.

Chain writes live in :mod:`template.validator.weights`, the service loop in
:mod:`template.validator.service`; everything here is testable with a running orchestrator and
meta-miners."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import torch

from template import wire as p
from template.data.sampling import heldout_offsets, windows_to_tensor
from template.engine.compression import payload_bytes
from template.engine.state import StateFormat
from template.validator.audit import Audit, Evidence, audit_round, check_transition
from template.validator.checks.copies import decode_traces, encode_traces
from template.validator.checks.losses import mean_loss
from template.validator.checks.usefulness import BALANCE_WINDOW
from template.validator.draw import SECRET_BYTES, AuditDraw, fingerprint
from template.validator.evidence import CONTRIBUTION_SLACK_BYTES, fetch_round
from template.validator.scoring import (
    evidence_z,
    proven_cheats,
    round_scores,
    skewed,
    to_weights,
    update_ema,
    update_evidence,
)
from template.validator.state import ValidatorState

log = logging.getLogger(__name__)
FORGET_BELOW = 1e-4  # an absent hotkey's EMA below this is dropped with its records (≈ 26 absent rounds at α = 0.3)
REPORTED_WINDOW = 50  # rounds of reported mean losses kept for the robust statistics
AUDIT_LOOKBACK = 8  # fresh rounds tried, newest first, for one whose start state the orchestrator holds
SEEN_ROUNDS = 200  # contributions remembered for the replay check: as long as a meta-miner keeps receipts
EVALUATION_INTERVAL_S = 5.0  # at most one held-out evaluation for the dashboard per this many seconds


class RunChanged(RuntimeError):
    """The orchestrator serves another run than the one this validator audits by (message says what to do)."""


@dataclass
class Validator:
    wallet: object
    orchestrator: object  # OrchestratorClient
    run: p.RunInfo
    read_shard: Callable[[int], bytes]
    state_path: Path
    # The key of every random choice of this validator's audits (template.validator.draw): 32 secret
    # bytes, kept in the state dir by the service (template.validator.state.load_audit_secret).
    audit_secret: bytes
    sample_size: int = 4
    heldout_count: int = 16
    gain_steps: Optional[tuple[int, ...]] = None  # default: drawn from the secret each round
    ema_alpha: float = 0.3
    attesters: int = 8  # receipts fetched from members outside the sample, for the peer-attestation check

    def __post_init__(self) -> None:
        if not isinstance(self.audit_secret, bytes) or len(self.audit_secret) != SECRET_BYTES:
            raise ValueError(f"audit_secret must be {SECRET_BYTES} bytes")
        self.state = ValidatorState.load(self.state_path)
        # Sketches are only comparable under the secret that drew their coordinates: a state dir whose
        # secret was replaced starts its replay history over.
        key = fingerprint(self.audit_secret)
        if self.state.sketch_key != key:
            self.state.sketches, self.state.sketch_key = [], key
        self.last_heldout: Optional[float] = None  # what _report_evaluation measured last (for trackers)
        self.evaluated_at = -math.inf
        self.history = decode_traces(self.state.sketches)

    def __repr__(self) -> str:  # the dataclass default would print the secret
        return f"Validator(run={getattr(self.run, 'run_id', None)!r}, state_path={str(self.state_path)!r})"

    def step(self, axons: dict[str, Optional[str]]) -> Optional[int]:
        """Process the newest agreed round not seen yet; returns it (or None).
        Rounds that went by while we were busy count for participation but are
        not audited: the newest round is the one worth checking (the newest whose start state the
        orchestrator holds: ``_audit_target``). The step works on a copy of the state
        and keeps it only once the round is scored: a step that raised is retried from where it was."""
        state, history = copy.deepcopy(self.state), list(self.history)
        records = self.orchestrator.rounds(since=max(0, state.last_round), limit=1000)
        if history_moved(records, state):
            run = self.orchestrator.run()
            if run.run_id != self.run.run_id:  # its model, data and receipts are another run's
                raise RunChanged(
                    f"the orchestrator now runs {run.run_id}, not {self.run.run_id}: restart the validator to "
                    "audit it (its scores are kept)"
                )
            records = rewind(self.orchestrator, state)
        fresh = [r for r in records if r.round > state.last_round]
        if not fresh:
            return None
        by_round = {r.round: r for r in records}
        newest = fresh[-1]
        participants = {hk for r in fresh for hk in r.members}
        audits: list[Audit] = []
        target, first, start, start_bytes = self._audit_target(fresh, by_round)
        if first == 0 or start_bytes is not None:
            members = list(enumerate(target.members))
            draw = AuditDraw(self.audit_secret, target.round)
            sample = draw.sample(members, self.sample_size)
            others = [hk for rank, hk in members if (rank, hk) not in sample]
            evidence, peer_receipts = fetch_round(
                self.wallet,
                sample,
                draw.attesters(others, self.attesters),
                axons,
                target.round,
                max_bytes=self.contribution_cap,
            )
            seen = {sha: (hk, r) for sha, (hk, r) in state.seen_contributions.items()}
            audits = audit_round(
                training=self.run.training,
                manifest=self.run.dataset,
                read_shard=self.read_shard,
                start_state=start_bytes,
                agreed_start=start.state if start else None,
                agreed_end=target.state,
                run_id=self.run.run_id,
                generation=target.generation,
                round=target.round,
                evidence=evidence,
                heldout_count=self.heldout_count,
                secret=self.audit_secret,
                gain_steps=self.gain_steps,
                seen_contributions=seen,
                history=history,
                members=target.members,
                peer_receipts=peer_receipts,
                included=target.included,
                start_round=first,
            )
            if first == target.round:
                audits = self._check_transition(state, start_bytes, target, evidence, audits)
            else:  # overlapped: the inner steps began a state earlier than the outer step the record took
                base = self._state_of(target.round - 1, by_round)
                if base is not None:
                    audits = self._check_transition(state, base, target, evidence, audits)
            state.seen_contributions = {
                sha: [hk, r] for sha, (hk, r) in seen.items() if r >= target.round - SEEN_ROUNDS
            }
            state.sketches = encode_traces(history)
            for a in audits:
                if a.loss_first_claimed is not None and a.receipt_ok:
                    stream = state.reported.setdefault(a.hotkey, [])
                    stream.append(float(a.loss_first_claimed))
                    del stream[:-REPORTED_WINDOW]
                state.last_audits[a.hotkey] = {
                    "round": a.round,
                    "passed": a.passed,
                    "reasons": list(a.reasons),
                    "heldout_gain": a.heldout_gain,
                    "own_gain": a.own_gain,
                    "specificity": a.specificity,
                    "balance": a.balance,
                    "copied_from": a.copied_from,
                    "attested": a.attested,
                    "transition_ok": a.transition_ok,
                    "served": a.served,
                }
        else:
            log.info(
                "round %d: start state %s not available from the orchestrator; not audited",
                target.round,
                start.state[:12] if start else None,
            )
        evidence = update_evidence(state.evidence, audits)
        balances = {hk: list(v) for hk, v in state.balances.items()}
        for a in audits:
            if a.balance is not None:
                balances[a.hotkey] = [*balances.get(a.hotkey, []), a.balance][-BALANCE_WINDOW:]
        scores = round_scores(audits, state.reported, evidence, balances) if audits else {}
        for hk, why in skewed(audits, balances).items():
            state.last_audits[hk]["skewed"] = why
        state.evidence, state.balances = evidence, balances
        for a in audits:
            if a.hotkey in state.evidence:
                z = evidence_z(state.evidence[a.hotkey])
                state.last_audits[a.hotkey]["evidence_z"] = round(z, 3) if math.isfinite(z) else None
        cheats = proven_cheats(audits)
        for hk, why in cheats.items():
            log.warning("round %d: %s caught cheating (%s): score reset to 0", target.round, hk, why)
            state.last_audits[hk]["reset"] = why
            state.evidence.pop(hk, None)
        state.ema = update_ema(state.ema, scores, self.ema_alpha, participants, reset=cheats)
        # Hotkeys that left the run and whose score has decayed to nothing are forgotten (bounded state:
        # registrations churn, and every departed hotkey used to stay in ema/reported/last_audits).
        gone = {hk for hk, v in state.ema.items() if hk not in participants and v < FORGET_BELOW}
        tables = (state.ema, state.reported, state.last_audits, state.evidence, state.balances)
        for table in tables:
            for hk in gone:
                table.pop(hk, None)
        state.last_round, state.last_state = newest.round, newest.state
        state.rounds_audited += bool(audits)
        state.save(self.state_path)
        self.state, self.history = state, history
        if start is not None and start_bytes is not None:
            self._report_evaluation(start, start_bytes)
        log.info("round %d: audited %d miner(s): %s", target.round, len(audits), _summary(audits, scores, state))
        return newest.round

    def _report_evaluation(self, record: p.RoundRecord, state_bytes: bytes) -> None:
        """Tell the orchestrator the held-out loss of the agreed state this round's audit started from, and
        the weights this validator last set (its dashboard plots them). The windows come from the run's seed,
        the same for every validator, so their figures can be compared. Best effort: a failure is logged."""
        t = self.run.training
        now = time.monotonic()
        if now - self.evaluated_at < EVALUATION_INTERVAL_S:
            return  # the dashboard needs a point now and then, not a forward pass every audited round
        self.evaluated_at = now
        try:
            windows = windows_to_tensor(
                self.read_shard,
                heldout_offsets(
                    self.run.dataset, seed=t.seed, round=record.round, count=self.heldout_count, seq_len=t.seq_len
                ),
                t.seq_len,
                self.run.dataset.token_bytes,
                self.run.dataset.vocab_size,
            )
            model = StateFormat(t).model(StateFormat(t).parse(state_bytes)).eval()
            loss = self.last_heldout = mean_loss(model, windows, t.batch_size, torch.device("cpu"))
            weights = {int(uid): float(w) for uid, w in self.state.last_weights.items()}
            self.orchestrator.report_evaluation(
                p.Evaluation(round=record.round, state=record.state, heldout_loss=loss, weights=weights)
            )
        except Exception as error:  # the dashboard's figure, never the audit's
            log.warning("round %d: held-out evaluation not reported: %s", record.round, error)

    def _audit_target(self, fresh: list, by_round: dict) -> tuple:
        """(the round to audit, the round whose agreed state its inner steps began from, that round's start
        record — the one before it — and its agreed state's bytes): the newest fresh round whose start state
        the orchestrator holds, looking back at most ``AUDIT_LOOKBACK`` rounds (miners upload agreed states
        in the background and skip some on a slow uplink). The bytes are None for the seed (round 0) and
        when no state is held: the newest round is then not audited. One listing says which states are held,
        so fast rounds do not cost a download attempt (and the rate limit) per round looked at."""
        held = {info.sha256 for info in self.orchestrator.checkpoints()}
        for record in list(reversed(fresh))[:AUDIT_LOOKBACK]:
            first = self._inner_start(record, by_round)
            if first == 0:
                return record, 0, None, None
            start = self._record(first - 1, by_round)
            if start is None or start.state not in held:
                continue
            data = self.orchestrator.checkpoint(start.state)
            if data is not None:
                return record, first, start, data
        # None held: ask for the newest round's start anyway; the orchestrator rebuilds a state between its
        # checkpoints from the agreed contributions (orchestrator/replays.py).
        newest = fresh[-1]
        first = self._inner_start(newest, by_round)
        start = self._record(first - 1, by_round)
        data = None if start is None else self.orchestrator.checkpoint(start.state)
        return newest, first, start, data

    def _inner_start(self, record: p.RoundRecord, by_round: dict) -> int:
        """The round whose agreed state ``record``'s inner steps began from: its own, or on an overlapped
        run with delayed overlap (``TrainingConfig.overlap``) the one before it, unless that round was agreed by another
        generation (a generation's first round starts from its own state)."""
        if self.run.training.overlap != "delayed" or record.round == 0:
            return record.round
        before = self._record(record.round - 1, by_round)
        return record.round - 1 if before is not None and before.generation == record.generation else record.round

    def _record(self, round: int, by_round: dict) -> Optional[p.RoundRecord]:
        record = by_round.get(round) or next(iter(self.orchestrator.rounds(since=round, limit=1)), None)
        return record if record is not None and record.round == round else None

    def _state_of(self, round: int, by_round: dict) -> Optional[bytes]:
        """The bytes of the state round ``round`` agreed on (θ_{round+1}), when the orchestrator holds them."""
        record = self._record(round, by_round)
        return None if record is None else self.orchestrator.checkpoint(record.state)

    def _check_transition(
        self,
        state: ValidatorState,
        start_bytes: Optional[bytes],
        record: p.RoundRecord,
        evidence: list[Evidence],
        audits: list[Audit],
    ) -> list[Audit]:
        audits, check = check_transition(self.run.training, start_bytes, record, evidence, audits)
        if check is not None:
            state.last_transition = {"round": record.round, "verified": check.verified, "problem": check.problem}
            if check.verified:
                state.transitions_verified += 1
            else:
                log.error("round %d: the agreed transition is false: %s", record.round, check.problem)
        return audits

    @cached_property
    def contribution_cap(self) -> int:
        """The most bytes read from a meta-miner for one contribution."""
        t = self.run.training
        return payload_bytes(StateFormat(t).spec, t.compression, fraction=t.topk_fraction) + CONTRIBUTION_SLACK_BYTES

    def weights(self, uids: dict[str, int]) -> dict[int, float]:
        return to_weights(self.state.ema, uids)


def history_moved(records: list, state: ValidatorState) -> bool:
    """Whether the round processed last is no longer agreed as it was (``records``: the orchestrator's
    from that round on): the owner rolled the run back, or a new run reuses the state dir."""
    if state.last_round < 0:
        return False
    return not any(r.round == state.last_round and r.state == (state.last_state or r.state) for r in records)


def rewind(orchestrator, state: ValidatorState) -> list:
    """Point ``state`` just below the newest round the orchestrator still holds under the one processed
    last, and return the records from there: the validator follows the new history at once, rather than
    audit nothing and set the old weights until the run passes its old round again."""
    recent = orchestrator.rounds(since=max(0, state.last_round - 1000), limit=1000)
    held = [r.round for r in recent if r.round < state.last_round]
    log.warning(
        "round %d is no longer agreed as it was (a rollback or a new run): following the history from round %s",
        state.last_round,
        held[-1] if held else 0,
    )
    state.last_round, state.last_state = (held[-1] - 1 if held else -1), ""
    if not held:
        return orchestrator.rounds(since=0, limit=1000)
    return [r for r in recent if r.round >= state.last_round]  # the next step reads on from there


def _summary(audits: list[Audit], scores: dict[str, float], state: ValidatorState) -> str:
    """One line for the log: per audited miner its score, its evidence z (and this round's specificity ± its
    standard error, what z accumulates) and why it failed, if it did."""
    parts = []
    for a in audits:
        found = state.last_audits.get(a.hotkey, {})
        why = a.reasons[0] if a.reasons else found.get("skewed", "")
        z = found.get("evidence_z")
        parts.append(
            f"{a.hotkey[:8]} {scores.get(a.hotkey, 0.0):.3f}"
            + (f" z={z:.1f}" if z is not None else "")
            + (f" (this round {a.specificity:+.3f}±{a.specificity_se:.3f})" if a.specificity_se else "")
            + (f" held-out {a.heldout_gain:+.3f}" if a.heldout_gain is not None else "")
            + (f" ({why})" if why else "")
        )
    return "; ".join(parts)
