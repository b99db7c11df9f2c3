"""The orchestrator's state machine: slots, generations, rounds, checkpoints.

One slot per hotkey. A generation is a fixed membership (dense ranks, world
size, a fresh 128-bit store prefix). Decisions come from the pure functions in
``orchestrator.membership``; this class applies them and writes every change
that matters to SQLite (schema, transactions and history queries live in
``orchestrator.ledger``) before answering, so a kill -9 loses nothing but the
last heartbeat times (restored with a grace period on restart).

Not thread-safe by itself: the app serializes calls with one lock. Every
method takes ``now`` so tests drive time explicitly.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from template import wire as p

from . import membership
from .contributions import ContributionAgreement
from .history import RunHistory
from .ledger import Ledger, connect
from .liveness import EVICTION_WINDOW_S, EVICTIONS_BEFORE_REFUSAL, REFUSED_RETRY_S, SITTING_OUT, Liveness

log = logging.getLogger(__name__)

DEPARTURE_WINDOW_S = 600.0
STORE_PREFIX_ROOT = "ts"


@dataclass
class Generation:
    id: int
    members: list[str]
    prefix: str
    started_round: int
    started_at: float

    def rank_of(self, hotkey: str) -> Optional[int]:
        try:
            return self.members.index(hotkey)
        except ValueError:
            return None


@dataclass
class Live:
    """Per-slot facts that change on every heartbeat: kept in memory."""

    last_seen: float
    round: Optional[int] = None
    step: Optional[int] = None
    loss: Optional[float] = None


@dataclass
class Coordinator(Ledger, ContributionAgreement, Liveness, RunHistory):
    db_path: Path
    membership_cfg: p.MembershipConfig
    store_host: str
    store_port: int
    run_id: str
    on_generation: Callable[[Optional[Generation], Optional[Generation]], None] = lambda old, new: None
    generation: Optional[Generation] = None
    round: int = 0
    state: Optional[str] = None
    live: dict[str, Live] = field(default_factory=dict)
    failed_generation: Optional[int] = None
    started_at: Optional[float] = None  # when this process started (default: now; tests pass their clock)

    def __post_init__(self) -> None:
        self.db = connect(self.db_path)
        self._init_contributions()  # the contribution agreement's tables (orchestrator.contributions)
        self._load()

    # -- restart ---------------------------------------------------------------

    def _load(self) -> None:
        gen = self._kv("generation")
        self.generation = Generation(**gen) if gen else None
        self.round = int(self._kv("round", 0))
        # (generation, round) -> hotkey -> (state, size) as reported, until the round is settled; the
        # agreed state's size is what its checkpoint upload must be (checked before a byte is read).
        self.reported_sizes: dict[tuple[int, int], dict[str, tuple[str, int]]] = {}
        self.reported_bytes: dict[tuple[int, int], dict[str, int]] = {}  # exchange bytes, for the history
        self.state = self._kv("state")
        now = time.time() if self.started_at is None else self.started_at
        # Nobody could check in while the orchestrator was down: a restored generation's check-in
        # deadline counts from now.
        self.checkin_clock = {self.generation.id: now} if self.generation else {}
        # generation -> member -> its store connection's admission; generation -> "presence"/"address" -> member
        # -> when that key passed the store tunnel; (generation, round) -> reporter -> its first stall report;
        # (generation, round) -> when its stalls settle / (when the members a majority named are judged, named at)
        self.arrived, self.posts, self.reported_at, self.stall_deadline, self.named = {}, {}, {}, {}, {}
        self.majority_at: dict[tuple[int, int], float] = {}  # when a strict majority had reported one state
        self.slow_passes: dict[str, tuple[int, float]] = {}  # hotkey -> its slow start (presence.slow_pass)
        # Heartbeat times are not persisted: every slot gets a full timeout of grace.
        for (hotkey,) in self.db.execute("SELECT hotkey FROM slots"):
            self.live[hotkey] = Live(last_seen=now)
        # The round's start is kept (the majority's pace, which sizes the stragglers' grace, counts from it);
        # its deadlines and graces count from the restart at the earliest (``resumed_at``): nobody could report
        # while the orchestrator was down.
        started = self._kv("round_started")
        self.round_started = min(float(started), now) if isinstance(started, (int, float)) else now
        self.resumed_at = now if self.generation else 0.0
        if self.generation:
            self.note_majority(now)
            log.info(
                "restored generation %d (%d members) at round %d", self.generation.id, len(gen["members"]), self.round
            )
            self._settle_round(now)

    def close(self) -> None:
        self.db.close()

    # -- queries --------------------------------------------------------------------

    def slots(self) -> list[tuple[str, int]]:
        return [(hk, seq) for hk, seq in self.db.execute("SELECT hotkey, seq FROM slots ORDER BY seq")]

    def waiting(self) -> list[str]:
        members = set(self.generation.members) if self.generation else set()
        return [hk for hk, _ in self.slots() if hk not in members]

    def cooldown_left(self, hotkey: str, now: float) -> float:
        """Seconds before ``hotkey`` may be in a generation again: doubling with its recent departures,
        and with its recent evictions from the first one on (an eviction is never an accident)."""
        base = self.membership_cfg.rejoin_cooldown_s
        left = 0.0
        row = self.db.execute("SELECT times FROM departures WHERE hotkey=?", (hotkey,)).fetchone()
        times = [t for t in json.loads(row[0]) if now - t < DEPARTURE_WINDOW_S] if row else []
        if times:
            left = max(times) + membership.rejoin_cooldown(len(times), base) - now
        evicted = [
            t
            for (t,) in self.db.execute(
                "SELECT at FROM evictions WHERE hotkey=? AND at > ?", (hotkey, now - DEPARTURE_WINDOW_S)
            )
        ]
        if evicted:
            left = max(left, max(evicted) + membership.rejoin_cooldown(len(evicted) + 1, base) - now)
        return max(0.0, left)

    # -- membership changes ---------------------------------------------------------

    def join(self, hotkey: str, device: str, now: float) -> p.AssignmentResponse:
        evicted = self.evictions(hotkey, since=now - EVICTION_WINDOW_S).get(hotkey, 0)
        if evicted >= EVICTIONS_BEFORE_REFUSAL:
            return p.AssignmentResponse(
                status="cooldown",
                retry_after_s=REFUSED_RETRY_S,
                detail=f"refused: removed {evicted} times in a day for holding the others up",
            )
        left = self.cooldown_left(hotkey, now)
        if left > 0:
            return p.AssignmentResponse(
                status="cooldown", retry_after_s=round(left, 3), detail=f"rejoined too often; retry in {left:.1f}s"
            )
        if hotkey in self.live and self.generation and self.generation.rank_of(hotkey) is not None:
            # A member joining again means its miner restarted: the group is broken,
            # and that counts against the hotkey's cool-down like a departure.
            self.failed_generation = self.generation.id
            self._record_departure(hotkey, now)
        if not self.db.execute("SELECT 1 FROM slots WHERE hotkey=?", (hotkey,)).fetchone():
            seq = int(self._kv("next_seq", 0))
            self._set_kv("next_seq", seq + 1)
            self.db.execute(
                "INSERT INTO slots (hotkey, seq, joined_at, device) VALUES (?,?,?,?)", (hotkey, seq, now, device)
            )
        self.live[hotkey] = Live(last_seen=now)
        self.tick(now)
        return self.assignment(hotkey, now)

    def leave(self, hotkey: str, now: float, reason: str = "left") -> bool:
        if not self.db.execute("SELECT 1 FROM slots WHERE hotkey=?", (hotkey,)).fetchone():
            return False
        self.db.execute("DELETE FROM slots WHERE hotkey=?", (hotkey,))
        self.live.pop(hotkey, None)
        self._record_departure(hotkey, now)
        log.info("slot %s removed (%s)", hotkey, reason)
        self._maybe_transition(now, at_round_boundary=False)
        return True

    def _record_departure(self, hotkey: str, now: float) -> None:
        row = self.db.execute("SELECT times FROM departures WHERE hotkey=?", (hotkey,)).fetchone()
        times = [t for t in (json.loads(row[0]) if row else []) if now - t < DEPARTURE_WINDOW_S]
        self.db.execute("INSERT OR REPLACE INTO departures VALUES (?, ?)", (hotkey, json.dumps(times + [now])))

    def heartbeat(self, hotkey: str, beat: p.HeartbeatRequest, now: float) -> Optional[p.HeartbeatResponse]:
        live = self.live.get(hotkey)
        if live is None:
            return None
        live.last_seen = now
        if beat.round is not None:
            live.round, live.step, live.loss = beat.round, beat.step, beat.loss
        gen = self.generation
        if beat.failed and gen and beat.generation == gen.id and gen.rank_of(hotkey) is not None:
            # Only a member whose own miner crashed reports this; it costs that hotkey
            # a departure, so forged failures cannot end generations for free.
            self.failed_generation = gen.id
            self._record_departure(hotkey, now)
            self._maybe_transition(now, at_round_boundary=False)
            gen = self.generation
        # Timeouts are the background ticker's job: a heartbeat stays O(1).
        member_of = gen.id if gen and gen.rank_of(hotkey) is not None else None
        return p.HeartbeatResponse(
            generation=member_of,
            round=self.round,
            reassign=member_of is not None and beat.generation != member_of,
        )

    def tick(self, now: float) -> None:
        """Apply timeouts and decide whether the generation ends now."""
        for hotkey in membership.timed_out(
            {hk: lv.last_seen for hk, lv in self.live.items()},
            now,
            self.membership_cfg.heartbeat_timeout_s,
        ):
            self.leave(hotkey, now, reason="heartbeat timeout")
        gen = self.generation
        if gen is not None and self.evict_absent(now):
            gen = self.generation
        if gen is not None and (self.settle_named(now) or self.settle_stalls(now) or self.drop_laggards(now)):
            gen = self.generation
        boundary, timeout = False, self.membership_cfg.round_timeout_s
        if gen is not None and now - max(self.round_started, self.resumed_at) > timeout:
            reported = self._round_reports()
            if reported:  # others finished: the silent ones are stalling the swarm
                for hotkey in [hk for hk in gen.members if hk not in reported]:
                    self.leave(hotkey, now, reason=f"no report for round {self.round} within the round timeout")
            else:  # nobody finished: another period; the waiting join as at a boundary (nothing reported, nothing lost)
                log.warning("round %d: no member reported within %.0fs", self.round, timeout)
                self._start_round_clock(now)
                boundary = True
        self._maybe_transition(now, at_round_boundary=boundary)

    def _maybe_transition(self, now: float, *, at_round_boundary: bool) -> None:
        gen = self.generation
        members = gen.members if gen else []
        # A hotkey in cool-down, or in a pair whose disputes keep breaking generations, sits out the
        # next generation(s), member or not.
        out = self.sitting_out(now)
        alive = [hk for hk, _ in self.slots() if self.cooldown_left(hk, now) == 0 and hk not in out]
        waiting = [hk for hk in self.waiting() if hk not in out]
        decision = membership.plan_transition(
            members=members,
            alive=alive,
            waiting=waiting,
            failed=gen is not None and self.failed_generation == gen.id,
            at_round_boundary=at_round_boundary,
            min_world_size=self.membership_cfg.min_world_size,
            max_world_size=self.membership_cfg.max_world_size,
        )
        if not decision.now:
            return
        if self.record_disputes(now):  # a broken round pending its grace counts before anyone is chosen
            out = self.sitting_out(now)
            alive = [hk for hk in alive if hk not in out]
            waiting = [hk for hk in waiting if hk not in out]
        order = membership.next_members(members, alive, waiting, self.membership_cfg.max_world_size)
        if len(order) < self.membership_cfg.min_world_size:
            if self.end_rendezvous_test():  # the one sitting out for a test is back: plan again with it
                return self._maybe_transition(now, at_round_boundary=at_round_boundary)
            self._set_generation(None, now, decision.reason + "; below min_world_size")
            return
        self._set_generation(order, now, decision.reason)

    def _set_generation(self, order: Optional[list[str]], now: float, reason: str) -> None:
        self.record_disputes(now)  # a broken round pending its grace still counts
        old = self.generation
        new = None
        if order:
            gen_id = int(self._kv("next_generation", 0))
            self._set_kv("next_generation", gen_id + 1)
            # 128 random bits: only members learn it, through their signed assignment.
            prefix = f"{STORE_PREFIX_ROOT}/{gen_id}/{secrets.token_hex(16)}"
            new = Generation(gen_id, list(order), prefix, self.round, now)
            self.db.execute(
                "INSERT INTO generations VALUES (?,?,?,?)", (gen_id, json.dumps(new.members), self.round, now)
            )
        self.slow_passes, self.generation = self.passes_after(old), new
        self.failed_generation = None
        self.reported_sizes = {k: v for k, v in self.reported_sizes.items() if new is not None and k[0] == new.id}
        self.reported_bytes = {k: v for k, v in self.reported_bytes.items() if new is not None and k[0] == new.id}
        self.db.execute("DELETE FROM checkins WHERE generation < ?", (new.id if new else 2**62,))
        self.db.execute("DELETE FROM stalls WHERE generation < ?", (new.id if new else 2**62,))
        self.db.execute("DELETE FROM gave_up WHERE generation < ?", (new.id if new else 2**62,))
        self._set_kv("generation", None if new is None else new.__dict__)
        self._start_round_clock(now)
        log.info(
            "generation %s -> %s (%s): %s",
            old.id if old else None,
            new.id if new else None,
            reason,
            new.members if new else [],
        )
        self.on_generation(old, new)

    def _start_round_clock(self, now: float) -> None:
        self.round_started = now
        self._set_kv("round_started", now)

    # -- assignments and rounds ---------------------------------------------------------

    def assignment(self, hotkey: str, now: float) -> p.AssignmentResponse:
        gen = self.generation
        if gen is not None and (rank := gen.rank_of(hotkey)) is not None:
            return p.AssignmentResponse(
                status="assigned",
                assignment=p.Assignment(
                    generation=gen.id,
                    rank=rank,
                    world_size=len(gen.members),
                    members=[p.Member(rank=i, hotkey=hk) for i, hk in enumerate(gen.members)],
                    store_host=self.store_host,
                    store_port=self.store_port,
                    store_prefix=gen.prefix,
                    round=self.round,
                    checkpoint=self.state,
                    run_id=self.run_id,
                    presence_left_s=max(0.0, self.presence_deadline(gen) - now),
                ),
            )
        waiting = self.waiting()
        if hotkey in waiting:
            detail = (
                SITTING_OUT if hotkey in self.sitting_out(now) else "waiting for the next round boundary or joiners"
            )
            return p.AssignmentResponse(
                status="waiting", queue_position=waiting.index(hotkey), retry_after_s=1.0, detail=detail
            )
        left = self.cooldown_left(hotkey, now)
        if left > 0:
            return p.AssignmentResponse(
                status="cooldown", retry_after_s=round(left, 3), detail=f"rejoined too often; retry in {left:.1f}s"
            )
        return p.AssignmentResponse(status="not_joined", detail="POST /v1/join first")

    def report_round(self, hotkey: str, report: p.RoundReport, now: float) -> p.RoundResponse:
        gen = self.generation
        if gen is None or report.generation != gen.id or gen.rank_of(hotkey) is None:
            return p.RoundResponse(
                accepted=False, round=self.round, agreed=self.state, detail="not a member of the current generation"
            )
        if report.round == self.round - 1 and report.state == self.state:
            # A retry of the report that completed the round (its answer was lost).
            return p.RoundResponse(accepted=True, round=self.round, agreed=self.state)
        if report.round != self.round:
            return p.RoundResponse(
                accepted=False, round=self.round, agreed=self.state, detail=f"the current round is {self.round}"
            )
        earlier = self.db.execute(
            "SELECT state FROM reports WHERE generation=? AND round=? AND hotkey=?", (gen.id, report.round, hotkey)
        ).fetchone()
        if earlier is not None and earlier[0] != report.state:
            return p.RoundResponse(
                accepted=False,
                round=self.round,
                agreed=None,
                detail="this round was already reported with another state",
            )
        with self._txn():
            self.db.execute(
                "INSERT OR IGNORE INTO reports VALUES (?,?,?,?,?)",
                (gen.id, report.round, hotkey, report.state, report.loss),
            )
        if hotkey in self.live:
            self.live[hotkey].loss = report.loss
        if report.state_bytes is not None:
            self.reported_sizes.setdefault((gen.id, report.round), {})[hotkey] = (report.state, report.state_bytes)
        if report.bytes_sent is not None:
            self.reported_bytes.setdefault((gen.id, report.round), {})[hotkey] = report.bytes_sent
        self.note_majority(now)
        if not self._settle_round(now):
            return p.RoundResponse(accepted=True, round=self.round, agreed=None, detail="waiting for the other members")
        return p.RoundResponse(accepted=True, round=self.round, agreed=self.state)

    def _settle_round(self, now: float, late: frozenset[str] = frozenset()) -> bool:
        """Apply the current round's outcome once every member reported (also on restart, for reports
        stored just before a crash), or every one but those given up on as ``late``. True if it completed."""
        gen = self.generation
        reports = {
            hk: st
            for hk, st in self.db.execute(
                "SELECT hotkey, state FROM reports WHERE generation=? AND round=?", (gen.id, self.round)
            )
        }
        outcome = membership.round_outcome(gen.members, reports, late)
        if not outcome.complete:
            return False
        if outcome.agreed is None:
            log.warning("round %d: no majority state among %d members; redoing it", self.round, len(gen.members))
            self.failed_generation = gen.id
        else:
            size = _agreed_size(self.reported_sizes.pop((gen.id, self.round), {}), outcome.agreed, len(gen.members))
            sent = self.reported_bytes.pop((gen.id, self.round), {})
            total = sum(sent.values()) if sent else None
            agreed_set = self.included_of(gen.id, self.round)  # diloco's contribution set; None: ddp/fsdp
            included = None if agreed_set is None else sum(1 for sha in agreed_set if sha is not None)
            dropped = [hk for hk, sha in zip(gen.members, agreed_set or ()) if sha is None]
            stats = (size, total, len(gen.members), included, dropped)
            self._commit_round(gen.id, outcome.agreed, now, self.round_started, *stats)
            # Memory follows the commit.
            self.round, self.state, self.round_started = self.round + 1, outcome.agreed, now
            self.rendezvous_agreed(gen.members, now)
            if outcome.dissenters:
                log.warning("round %d: %d member(s) diverged: re-forming", self.round - 1, len(outcome.dissenters))
                self.failed_generation = gen.id
        self._maybe_transition(now, at_round_boundary=True)
        return True

    def report_misbehavior(self, reporter: str, report: p.MisbehaviorReport, now: float) -> Optional[str]:
        """Record a member's report against another member; returns why not, or None."""
        gen = self.generation
        if gen is None or report.generation != gen.id or gen.rank_of(reporter) is None:
            return "not a member of the current generation"
        if gen.rank_of(report.accused) is None:
            return "the accused is not a member of the current generation"
        if report.accused == reporter:
            return "a member cannot report itself"
        if report.round > self.round:
            return f"round {report.round} has not started"
        if report.round < gen.started_round:
            return f"round {report.round} belongs to an earlier generation (this one started at {gen.started_round})"
        # One row per (round, reporter, accused), whatever the generation: a round that re-formed its
        # generation is reported on again, but counts once.
        self.db.execute(
            "INSERT OR IGNORE INTO misbehavior SELECT ?,?,?,?,?,? WHERE NOT EXISTS "
            "(SELECT 1 FROM misbehavior WHERE round=? AND reporter=? AND accused=?)",
            (gen.id, report.round, reporter, report.accused, report.reason, now)
            + (report.round, reporter, report.accused),
        )
        return None


def _agreed_size(reported: dict[str, tuple[str, int]], agreed: str, members: int) -> Optional[int]:
    """The size a strict majority of the ``members`` said the agreed state has (None: no such size, and
    uploads of it are capped only by the checkpoint limit; colluders alone cannot set it)."""
    sizes = Counter(size for state, size in reported.values() if state == agreed)
    size, votes = sizes.most_common(1)[0] if sizes else (None, 0)
    return size if 2 * votes > members else None
