"""The coordinator's side of the contribution agreement (a mixin of
:class:`~orchestrator.coordinator.Coordinator`): members' reports of what they received in a diloco
round's exchange, checked and stored; the decision (:func:`orchestrator.agreement.decide_contributions`)
made once per (generation, round) and recorded in SQLite before anyone sees it; and its evidence —
the two signatures of an equivocation — kept, and filed as a misbehaviour report (``GET /v1/status``
counts them).

Trust: a report comes from a member of the generation (the HTTP layer authenticates the hotkey) and
every hash in it must carry the sender's valid signature, so nobody can make a sender look like it
signed what it did not. A refused report is never held against its reporter.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

from template.wire.orchestrator import (
    ContributionDecision,
    ContributionReport,
    contribution_context,
)
from template.wire.signing import contribution_message, verify_signature

from .agreement import decide_contributions, decision_deadline_s, decision_due, missing_can_change

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS contribution_reports (
    generation INTEGER NOT NULL, round INTEGER NOT NULL, rank INTEGER NOT NULL, received TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (generation, round, rank)
);
CREATE TABLE IF NOT EXISTS contribution_decisions (
    generation INTEGER NOT NULL, round INTEGER NOT NULL, decision TEXT NOT NULL, decided_at REAL NOT NULL,
    PRIMARY KEY (generation, round)
);
CREATE TABLE IF NOT EXISTS contribution_evidence (
    generation INTEGER NOT NULL, round INTEGER NOT NULL, kind TEXT NOT NULL, accused TEXT NOT NULL,
    evidence TEXT NOT NULL, at REAL NOT NULL
);
"""
EQUIVOCATION_REPORTER = "orchestrator:equivocation"  # the signatures are the proof, not anyone's word
VERIFIED_CACHE = 65_536  # (sender, hash, signature) checks remembered; every member reports the same ones

Refusal = tuple[int, str]  # HTTP status, why


class ContributionAgreement:
    """Needs the coordinator's ``db``, ``generation``, ``round``, ``run_id``, ``membership_cfg`` and
    ``_txn``; call :meth:`_init_contributions` once the database is open."""

    def _init_contributions(self) -> None:
        self.db.executescript(SCHEMA)
        self._verified: dict[tuple, bool] = {}
        # (generation, round, reports) -> missing_can_change: every waiting member polls it, and the reports'
        # JSON is parsed once per new report, not per poll.
        self._changeable: tuple[tuple[int, int, int], bool] = ((-1, -1, -1), False)

    # -- reports -----------------------------------------------------------------------

    def report_contributions(
        self, hotkey: str, report: ContributionReport, now: float
    ) -> tuple[Optional[ContributionDecision], Optional[Refusal]]:
        """Store a member's report (idempotent) and answer with the decision so far."""
        gen = self.generation
        if gen is None or report.generation != gen.id or (rank := gen.rank_of(hotkey)) is None:
            return None, (409, "not a member of the current generation")
        if report.round != self.round:
            stored = self._stored_decision(gen.id, report.round)
            if stored is not None:  # a retry whose answer was lost: the decision stands
                return stored, None
            return None, (409, f"the current round is {self.round}")
        n = len(gen.members)
        if len(report.received) != n:
            return None, (422, f"received must name all {n} members, got {len(report.received)}")
        body = json.dumps([None if e is None else e.model_dump() for e in report.received], separators=(",", ":"))
        earlier = self.db.execute(
            "SELECT received FROM contribution_reports WHERE generation=? AND round=? AND rank=?",
            (gen.id, report.round, rank),
        ).fetchone()
        if earlier is not None and earlier[0] != body:
            return None, (409, "this round's contributions were already reported with other contents")
        if earlier is None:
            context = contribution_context(self.run_id, gen.id)
            for sender, entry in enumerate(report.received):
                if entry is not None and not self._signed(gen.members[sender], context, report.round, sender, entry):
                    return None, (422, f"the signature reported for rank {sender}'s contribution does not verify")
            with self._txn():
                self.db.execute(
                    "INSERT INTO contribution_reports VALUES (?,?,?,?,?)", (gen.id, report.round, rank, body, now)
                )
        return self._decide_if_due(report.round, now), None

    def _missing_can_change(self, generation: int, round_: int, rows: list) -> bool:
        key = (generation, round_, len(rows))
        if self._changeable[0] != key:
            self._changeable = (key, missing_can_change(len(self.generation.members), _sha256s(_parsed(rows))))
        return self._changeable[1]

    def _signed(self, sender_hotkey: str, context: str, round_: int, sender: int, entry) -> bool:
        key = (context, round_, sender, entry.sha256, entry.signature)
        if key not in self._verified:
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            message = contribution_message(context, round_, sender, entry.sha256)
            self._verified[key] = verify_signature(sender_hotkey, message, bytes.fromhex(entry.signature))
        return self._verified[key]

    # -- the decision ------------------------------------------------------------------------

    def contribution_decision(
        self, hotkey: str, generation: int, round_: int, now: float
    ) -> tuple[Optional[ContributionDecision], Optional[Refusal]]:
        """The decision for (generation, round) as a member of that generation sees it: decided, or
        not yet (poll again); decided on this call when it is due."""
        members = self._members_of(generation)
        if members is None or hotkey not in members:
            return None, (403, "only members of that generation read its contribution set")
        stored = self._stored_decision(generation, round_)
        if stored is not None:
            return stored, None
        gen = self.generation
        if gen is None or gen.id != generation or round_ != self.round:
            return None, (409, "that round of that generation is not in progress and was never decided")
        return self._decide_if_due(round_, now), None

    def included_of(self, generation: int, round_: int) -> Optional[list[Optional[str]]]:
        """By rank, the sha256 of the contributions round ``round_`` of ``generation`` aggregated (None
        when the round had no agreed contribution set)."""
        stored = self._stored_decision(generation, round_)
        return None if stored is None else list(stored.included)

    def _members_of(self, generation: int) -> Optional[list[str]]:
        gen = self.generation
        if gen is not None and gen.id == generation:
            return gen.members
        row = self.db.execute("SELECT members FROM generations WHERE id=?", (generation,)).fetchone()
        return json.loads(row[0]) if row else None

    def _stored_decision(self, generation: int, round_: int) -> Optional[ContributionDecision]:
        row = self.db.execute(
            "SELECT decision FROM contribution_decisions WHERE generation=? AND round=?", (generation, round_)
        ).fetchone()
        return ContributionDecision.model_validate_json(row[0]) if row else None

    def _decide_if_due(self, round_: int, now: float) -> ContributionDecision:
        gen = self.generation
        stored = self._stored_decision(gen.id, round_)
        if stored is not None:
            return stored
        rows = self.db.execute(
            "SELECT rank, received, at FROM contribution_reports WHERE generation=? AND round=? ORDER BY rank",
            (gen.id, round_),
        ).fetchall()
        n = len(gen.members)
        cfg = self.membership_cfg
        due = decision_due(
            n,
            [at for _, _, at in rows],
            now,
            decision_deadline_s(cfg.round_timeout_s),
            round_started=self.round_started,
            resumed_at=self.resumed_at,
            grace_floor_s=cfg.straggler_grace_s,
            grace_factor=cfg.straggler_factor,
            broken=bool(self.stalled(gen.id, round_)),
            changeable=lambda: self._missing_can_change(gen.id, round_, rows),
        )
        if not due:
            return ContributionDecision(
                generation=gen.id, round=round_, decided=False, reporters=[r for r, _, _ in rows], retry_after_s=0.05
            )
        received = _parsed(rows)
        outcome = decide_contributions(n, _sha256s(received))
        decision = ContributionDecision(
            generation=gen.id,
            round=round_,
            decided=True,
            included=list(outcome.included),
            lacking=[list(x) for x in outcome.lacking],
            reasons=list(outcome.reasons),
            reporters=sorted(received),
        )
        with self._txn():
            self.db.execute(
                "INSERT INTO contribution_decisions VALUES (?,?,?,?)",
                (gen.id, round_, decision.model_dump_json(), now),
            )
            self._record_evidence(gen.members, round_, received, outcome, now)
            # Reports are only needed until their round is decided (the evidence keeps what matters).
            self.db.execute("DELETE FROM contribution_reports WHERE generation=? AND round<=?", (gen.id, round_))
            self.db.execute("DELETE FROM contribution_reports WHERE generation<?", (gen.id,))
        if len(rows) < n or any(r is not None for r in outcome.reasons):
            log.warning(
                "round %d: contribution set decided with %d/%d reports: excluded %s",
                round_,
                len(rows),
                n,
                {i: r for i, r in enumerate(outcome.reasons) if r is not None},
            )
        return decision

    def _record_evidence(self, members: list[str], round_: int, received: dict, outcome, now: float) -> None:
        gen_id = self.generation.id
        for sender in outcome.equivocators:
            signed = sorted(
                {(v[sender]["sha256"], v[sender]["signature"]) for v in received.values() if v[sender] is not None}
            )
            evidence = json.dumps({"sender": sender, "signed": signed})
            self.db.execute(
                "INSERT INTO contribution_evidence VALUES (?,?,?,?,?,?)",
                (gen_id, round_, "equivocation", members[sender], evidence, now),
            )
            self.db.execute(
                "INSERT OR IGNORE INTO misbehavior VALUES (?,?,?,?,?,?)",
                (
                    gen_id,
                    round_,
                    EQUIVOCATION_REPORTER,
                    members[sender],
                    f"equivocation: {len(signed)} signed payloads",
                    now,
                ),
            )

    def contribution_evidence(self, since_round: int = 0, limit: int = 100) -> list[dict]:
        """Recorded equivocations, newest first (for operators and tests)."""
        rows = self.db.execute(
            "SELECT generation, round, kind, accused, evidence, at FROM contribution_evidence "
            "WHERE round >= ? ORDER BY round DESC, at DESC LIMIT ?",
            (since_round, limit),
        )
        return [
            {"generation": g, "round": r, "kind": k, "accused": a, "evidence": json.loads(e), "at": t}
            for g, r, k, a, e, t in rows
        ]


def _parsed(rows) -> dict[int, list]:
    """Contribution reports' rows (rank, received JSON, at) → rank → what it received."""
    return {rank: json.loads(body) for rank, body, _ in rows}


def _sha256s(received: dict[int, list]) -> dict[int, list]:
    return {r: [e and e["sha256"] for e in v] for r, v in received.items()}
