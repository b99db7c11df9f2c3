"""The coordinator's liveness rules (a mixin of :class:`~orchestrator.coordinator.Coordinator`): blame
the one who is missing, never the one who reports.

A member's miner checks in when it starts for its generation, then connects to the store through the
orchestrator's tunnel; a member that has done either not, the check-in timeout after the generation
formed, is evicted on the orchestrator's own observation (:func:`orchestrator.membership.never_checked_in`). A rank whose exchange timed out reports the peers it
waited for (every block comes straight from its sender, so it knows them by name); a member that a
strict majority of the others name is evicted (:func:`orchestrator.membership.named_by_majority`). An
eviction costs the hotkey a cool-down from the first one and is recorded; a hotkey evicted
``EVICTIONS_BEFORE_REFUSAL`` times within ``EVICTION_WINDOW_S`` is refused until they age out. A broken
round whose reports name nobody by a majority (a member that withholds its block from a minority only,
or a minority that lies) re-forms the generation with nobody blamed; the pairs of accuser and accused are
recorded as disputes, and a pair that keeps breaking generations sits out, both of them
(:func:`orchestrator.membership.sitting_out`).
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple, Optional

from template import wire as p
from template.wire.orchestrator import AGREEMENT_GRACE_S

from . import membership, presence
from .agreement import decision_deadline_s
from .rendezvous import Rendezvous

log = logging.getLogger(__name__)

# A hotkey removed this many times in EVICTION_WINDOW_S for holding the others up (never checked in,
# stalled an exchange) is refused until the oldest of them is a window old (a day: an honest miner that
# was slow once keeps no mark for ever); it may ask again, cheaply, every REFUSED_RETRY_S.
EVICTIONS_BEFORE_REFUSAL = 5
EVICTION_WINDOW_S = 86400.0
REFUSED_RETRY_S = 3600.0
# A member named by a majority that has not heartbeated for this long (three of the meta-miner's default
# intervals) is taken for dead, not hostile: removed with a departure, no eviction toward the refusal.
SILENT_S = 6.0
# A round's stall reports are gathered this long after the first (every rank that waited in vain times
# out within about the same second); then a majority evicts, or the generation re-forms on disputes.
STALL_GRACE_S = 10.0
# A member a majority names is removed this long after: its own meta-miner may report meanwhile that its miner
# died (killed, OOM), which the survivors' exchange noticed first. A death is a departure, not an eviction:
# an honest miner whose process crashed must not collect evictions toward the refusal. Longer than the
# meta-miner's heartbeat interval (2 s by default): a named member not heard from since it was named is taken
# for dead (its host or meta-miner killed), one still heartbeating for alive, so a staller.
NAMED_GRACE_S = 3.0
# A pair of members whose disputes broke DISPUTES_BEFORE_SITOUT generations within DISPUTE_WINDOW_S both
# sit out until those disputes are that old; a member party to disputes in DISPUTED_GENERATIONS_ALONE
# generations, with anyone, sits out alone.
DISPUTES_BEFORE_SITOUT = 2  # between the same pair
DISPUTED_GENERATIONS_ALONE = 3  # with anyone
DISPUTE_WINDOW_S = 1800.0
# A member found SUSPECT_FINDINGS times within a day to break the rendezvous where nobody can be named
# (membership.rendezvous_suspect) sits out SUSPECT_SIT_OUT_S, doubling with each further finding (never
# evicted or refused for it: a finding can be a saboteur's framing, or a peer that froze meanwhile).
SUSPECT_FINDINGS = 2
SUSPECT_SIT_OUT_S = 300.0
SITTING_OUT = (
    "sitting out: this hotkey's stall reports and a peer's (or its own, naming everyone unbacked) broke "
    f"generations; nobody is blamed, and it is back when those disputes are {DISPUTE_WINDOW_S:.0f}s old"
)


class Judgement(NamedTuple):
    """What a broken round's stall reports and the orchestrator's own observations say."""

    named: dict[str, list[str]]  # reporter -> the members it waited for in vain
    gave_up: set[str]  # the reporters whose group broke while forming (in the generation's first round)
    majority: list[str]  # the members a strict majority of the others name
    stallers: list[str]  # of those, the ones to remove
    excused: list[str]  # of those, the ones that came late to a failed rendezvous or gave up on it
    late: list[str]  # the members whose presence came after the generation's deadline, or never (its first round)


class Liveness(Rendezvous):
    """Check-ins, stall reports and evictions; needs the coordinator's ``db``, ``generation``, ``round``,
    ``live``, ``membership_cfg``, ``checkin_clock``, ``arrived``, ``posts``, ``slow_passes``, ``reported_at``, ``stall_deadline``, ``named``, ``failed_generation``,
    ``_kv``, ``_set_kv``, ``_record_departure`` and ``_maybe_transition``."""

    def checkins(self) -> dict[str, float]:
        """When each member of the current generation checked in (hotkey -> time); none without one."""
        gen = self.generation
        if gen is None:
            return {}
        return dict(self.db.execute("SELECT hotkey, at FROM checkins WHERE generation=?", (gen.id,)).fetchall())

    def evict_absent(self, now: float) -> bool:
        """Remove the current generation's members that never checked in, never reached the store, or never
        posted their presence there, in time (:func:`orchestrator.membership.never_checked_in`); True if any were."""
        gen = self.generation
        checked = self.checkins()
        started = max(gen.started_at, self.checkin_clock.get(gen.id, gen.started_at))
        timeout = self.membership_cfg.checkin_timeout_s
        stages = [(checked, "checked in")]
        if gen.id not in self.checkin_clock:  # seen forming here (a restored one's ranks met before a new store)
            stages.append((self.arrived.get(gen.id, {}), "reached the store"))
            stages.append((self.posts.get(gen.id, {}).get("presence", {}), "posted its presence"))
        for seen, what in stages:
            if membership.nobody_arrived(gen.members, seen, started, now, timeout):
                late = membership.NOBODY_ARRIVED_TIMEOUTS * timeout
                reason = f"no member {what} within {late:.0f}s of generation {gen.id} forming"
                self._evict(list(gen.members), now, reason, gone=frozenset(gen.members))
                return True
            absent = membership.never_checked_in(gen.members, seen, started, now, timeout)
            if absent:
                self._evict(absent, now, f"never {what} within {timeout:.0f}s of generation {gen.id} forming")
                return True
        # Slow to present after a majority did: a cold start once per window; again, a departure and a dispute of
        # its own kind (a frozen or restarted honest miner looks the same: no eviction); two such, it sits out.
        presented = self.posts.get(gen.id, {}).get("presence", {})
        restored = gen.id in self.checkin_clock  # its ranks met before this process: nothing seen of them
        slow = [] if restored else presence.slow_to_present(gen.members, presented, started, now)
        if slow:
            remove, self.slow_passes = presence.slow_pass(self.slow_passes, slow, gen.id, now)
            window = f"{presence.SLOW_PASS_WINDOW_S / 60:.0f} minutes"
            for hk in [hk for hk in slow if self.slow_passes.get(hk) == (gen.id, now)]:
                log.warning("%s is slow to present in generation %d: its one cold start in %s", hk, gen.id, window)
            if remove:
                reason = f"slow to present in generation {gen.id}, a second time in {window}"
                with self._txn():  # the dispute and the removal together, or neither
                    for hk in remove:
                        self.db.execute(
                            "INSERT OR IGNORE INTO disputes VALUES (?,?,?,?)", (gen.id, membership.SLOW, hk, now)
                        )
                    self._evict(remove, now, reason, gone=frozenset(remove))
                return True
        return False

    def _evict(self, hotkeys: list[str], now: float, reason: str, gone: frozenset[str] = frozenset()) -> None:
        """Remove members that held the others up (never checked in, stalled an exchange): each costs
        its hotkey a departure (the cool-down) and an eviction on record, then the generation re-forms
        once, without them. Those in ``gone`` (silent since: a dead process, not a staller; or nobody can
        tell them from the others) get the departure only, as any member that dies does, and no eviction
        toward the refusal."""
        self._remove(hotkeys, now, reason, gone)
        self._maybe_transition(now, at_round_boundary=False)

    def _remove(self, hotkeys: list[str], now: float, reason: str, gone: frozenset[str]) -> None:
        for hotkey in hotkeys:
            self.db.execute("DELETE FROM slots WHERE hotkey=?", (hotkey,))
            self.live.pop(hotkey, None)
            self._record_departure(hotkey, now)
            if hotkey in gone:
                log.warning("removed %s: %s (a departure, not an eviction)", hotkey, reason)
                continue
            self.db.execute("INSERT INTO evictions VALUES (?,?,?)", (hotkey, now, reason[:200]))
            log.warning("evicted %s: %s", hotkey, reason)

    def note_majority(self, now: float) -> None:
        """Remember when a strict majority of the current round's members first had one state reported (the
        start of the others' grace, :func:`membership.laggards`); only the current round's is kept."""
        gen = self.generation
        key = (gen.id, self.round) if gen else None
        if key is None or key in self.majority_at:
            return
        if membership.majority_state(gen.members, self._round_reports()) is not None:
            self.majority_at = {key: now}

    def _round_reports(self) -> dict[str, str]:
        return dict(
            self.db.execute(
                "SELECT hotkey, state FROM reports WHERE generation=? AND round=?", (self.generation.id, self.round)
            )
        )

    def drop_laggards(self, now: float) -> bool:
        """Complete a round that a strict majority decided once the rest are past their grace
        (:func:`membership.laggards`), and remove them: each is evicted (it held the round up), or departs if
        silent since the majority reported (a dead host) or it reported its group failed. True if any were."""
        gen, cfg = self.generation, self.membership_cfg
        at = self.majority_at.get((gen.id, self.round))
        # Every tick of a round's tail comes here: nobody is late before the shortest grace, so no query either.
        if at is None or now - at < membership.straggler_grace_s(
            at - self.round_started, cfg.straggler_grace_s, cfg.straggler_factor
        ):
            return False
        reporters = self._stall_reports(gen.id, self.round)
        excused = self.stalled(gen.id, self.round, reporters)
        decision = self._stored_decision(gen.id, self.round)
        decided = decision is not None and decision.decided
        repairs = sum(len(lackers) for lackers in decision.lacking) if decided else 0
        exchanged = {gen.members[r] for r in decision.reporters} if decided and not repairs else set()
        loose = decision_deadline_s(cfg.round_timeout_s) + AGREEMENT_GRACE_S
        # While anyone lacks an included block, the exchange is not over for anyone: every holder waits for each
        # lacker in turn, up to a timeout a step, and a colluding lacker answering one member just inside each
        # wait holds it that long; so the loose grace holds a decision deadline per repair step.
        loose += repairs * decision_deadline_s(cfg.round_timeout_s)
        late = membership.laggards(
            gen.members,
            self._round_reports(),
            at,
            self.round_started,
            now,
            cfg.straggler_grace_s,
            cfg.straggler_factor,
            exchanged=exchanged,
            excused=excused,
            loose_s=loose,
        )
        late = [hk for hk in late if hk in self.live]  # one that already left is the transition's to handle
        if not late:
            return False
        # Silent since the majority reported (a dead host), or it said its group failed with nobody to name (a
        # failure is never held against the one who reports it): a departure, not an eviction.
        gone = frozenset(
            hk
            for hk in late
            if self.live[hk].last_seen < at or now - self.live[hk].last_seen > SILENT_S or hk in reporters
        )
        waited = now - at
        self._remove(late, now, f"no state report for round {self.round} {waited:.1f}s after a majority's", gone)
        self._settle_round(now, late=frozenset(late))  # the majority's state is agreed; the generation re-forms
        return True

    def _stall_reports(self, generation: int, round_: int) -> dict[str, list[str]]:
        rows = self.db.execute(
            "SELECT reporter, missing FROM stalls WHERE generation=? AND round=?", (generation, round_)
        )
        return {hk: json.loads(missing) for hk, missing in rows}

    def stalled(self, generation: int, round_: int, reports: Optional[dict[str, list[str]]] = None) -> set[str]:
        """The members whose stall report this round counts (``reports``: the round's, when already read): it
        names a peer, or the round is under the stall rules already. An empty report alone is no excuse (one
        could file it to be waited for forever)."""
        key = (generation, round_)
        under_rules = key in self.stall_deadline or key in self.named
        reports = self._stall_reports(*key) if reports is None else reports
        return {hk for hk, missing in reports.items() if under_rules or missing}

    def checkin(self, hotkey: str, req: p.CheckIn, now: float) -> Optional[str]:
        """A member's miner started for its generation; returns why not accepted, or None."""
        gen = self.generation
        if gen is None or req.generation != gen.id or gen.rank_of(hotkey) is None:
            return "not a member of the current generation"
        self.db.execute("INSERT OR IGNORE INTO checkins VALUES (?,?,?)", (gen.id, hotkey, now))
        return None

    def report_stall(self, reporter: str, report: p.StallReport, now: float) -> Optional[str]:
        """A member's exchange timed out waiting for ``report.missing``; returns why not accepted, or
        None. Members a strict majority of the others name are evicted (never on one report)."""
        gen = self.generation
        if gen is None or report.generation != gen.id or gen.rank_of(reporter) is None:
            return "not a member of the current generation"
        if report.round != self.round:
            return f"the current round is {self.round}"
        if any(not 0 <= r < len(gen.members) for r in report.missing):
            return f"ranks must be in 0..{len(gen.members) - 1}"
        missing = sorted({gen.members[r] for r in report.missing} - {reporter})
        self.db.execute(
            "INSERT OR REPLACE INTO stalls VALUES (?,?,?,?)", (gen.id, report.round, reporter, json.dumps(missing))
        )
        # Only the current round's reports can start a test: the rest are dropped, so the row stays bounded.
        t, key = self.rendezvous, (gen.id, report.round)
        unnamed = t.unnamed.get(key, set())
        now_unnamed = unnamed | {reporter} if report.unnamed_connect and not missing else unnamed - {reporter}
        if t.unnamed.keys() - {key} or now_unnamed != unnamed:
            t.unnamed = {key: now_unnamed} if now_unnamed else {}
            self._save_rendezvous()
        # When each reporter first reported, and first named each member (:meth:`_came_first`).
        reports, namings = self.reported_at.get(key, ({}, {}))
        self.reported_at = {key: ({reporter: now, **reports}, {**{(reporter, hk): now for hk in missing}, **namings})}
        # A group breaks while forming only in the round it formed in: later, "I gave up" is no excuse.
        if report.rendezvous and report.round == gen.started_round:
            self.db.execute("INSERT OR IGNORE INTO gave_up VALUES (?,?,?)", (gen.id, report.round, reporter))
        else:
            self.db.execute(
                "DELETE FROM gave_up WHERE generation=? AND round=? AND reporter=?", (gen.id, report.round, reporter)
            )
        j = self._judge(gen, report.round, now)
        named, stallers = j.named, j.stallers
        if stallers:
            self.stall_deadline.pop((gen.id, report.round), None)  # decided: no dispute for anyone
            # One whose gloo address the orchestrator has not seen, in the round its generation formed in, may be late
            # to the rendezvous, not absent (a frozen honest miner): it has the stall grace to come before it is judged.
            addressed = self.posts.get(gen.id, {}).get("address", {})
            forming = report.round == gen.started_round and not set(stallers) <= set(addressed)
            grace = STALL_GRACE_S if forming else NAMED_GRACE_S
            self.named.setdefault((gen.id, report.round), (now + grace, now))
        elif any(named.values()) or 2 * len(named) > len(gen.members):
            # Someone was named (a dispute), or most members say the group broke (a rendezvous or an
            # agreement that never completed: nobody to name, but the group is gone either way; one
            # member's unnamed word does not end a generation). The others may still be timing out:
            # decided STALL_GRACE_S after this, or once every member has reported (nobody is left to hear).
            deadline = now if set(gen.members) <= set(named) else now + STALL_GRACE_S
            self.stall_deadline[key] = min(self.stall_deadline.get(key, deadline), deadline)
        return None

    def _judge(self, gen, round_: int, now: float) -> Judgement:
        """What the round's stall reports and the orchestrator's own observations say (:class:`Judgement`)."""
        named = self._stall_reports(gen.id, round_)
        gave_up = {
            hk
            for (hk,) in self.db.execute(
                "SELECT reporter FROM gave_up WHERE generation=? AND round=?", (gen.id, round_)
            )
        }
        # Giving up at the rendezvous excuses only where someone came after the generation's presence deadline.
        late = self.late_presences(gen, round_, now)
        excuse = self._came_first(gen, round_, named, gave_up) | (gave_up if late else set())
        excused = membership.left_a_failed_rendezvous(named, gave_up, excuse)
        majority = membership.named_by_majority(gen.members, named)
        return Judgement(
            named,
            gave_up,
            majority,
            [hk for hk in majority if hk not in excused],
            [hk for hk in majority if hk in excused],
            late,
        )

    def settle_named(self, now: float) -> bool:
        """Remove the members a majority named in the current round once ``NAMED_GRACE_S`` is over, unless
        they left meanwhile (their meta-miner reported the miner dead). True if any were removed."""
        gen = self.generation
        deadline, named_at = self.named.get((gen.id, self.round), (None, None)) if gen else (None, None)
        if deadline is None or now < deadline:
            return False
        del self.named[(gen.id, self.round)]
        j = self._judge(gen, self.round, now)
        # One whose meta-miner said since that its miner died (a crash report, a restarted meta-miner joining
        # again: a departure each, which also ends the generation) is not judged; a join refreshes its last_seen.
        stallers = [hk for hk in j.stallers if hk in self.live and not self._departed_since(hk, named_at)]
        if j.excused:  # came late to the rendezvous, or gave up on it: a dispute (recorded when the generation ends)
            self.stall_deadline[(gen.id, self.round)] = now
        if not stallers:
            return False
        # A staller that no longer heartbeats is a dead process (a killed host, an OOM): removed all the same,
        # but not marked as hostile.
        gone = frozenset(
            hk for hk in stallers if now - self.live[hk].last_seen > SILENT_S or self.live[hk].last_seen < named_at
        )
        self._evict(stallers, now, f"stalled round {self.round} (named by a majority of the others)", gone)
        return True

    def settle_stalls(self, now: float) -> bool:
        """A broken round whose stall reports named nobody by a majority, once their grace is over:
        record each report's accusations as disputes and re-form the generation (nobody is evicted or
        charged; pairs that keep breaking generations sit out, :func:`sitting_out`). True if it did."""
        gen = self.generation
        deadline = self.stall_deadline.get((gen.id, self.round)) if gen else None
        if deadline is None or now < deadline:
            return False
        # (A member that came to the store and never posted its presence is evicted by evict_absent, whose
        # deadline is never later than the presence deadline, before this runs.)
        excused = self._judge(gen, self.round, now).excused
        named = self.record_disputes(now)
        log.warning(
            "generation %d broke in round %d: %s; %s, re-forming",
            gen.id,
            self.round,
            "; ".join(f"{r} waited for {', '.join(m) or 'nobody it could name'}" for r, m in named.items()),
            f"{', '.join(excused)}, named by a majority, came late to the rendezvous or said first that it broke: "
            "not evicted, it takes the dispute alone"
            if excused
            else "no member was named by a majority",
        )
        self.failed_generation = gen.id
        self._test_rendezvous(gen, named)
        self._maybe_transition(now, at_round_boundary=False)
        return True

    def rendezvous_agreed(self, members: list[str], now: float) -> None:
        """A round was agreed: a rendezvous test that was running found its suspect (or nobody)."""
        t = self.rendezvous
        if not (t.streak or t.testing or t.unnamed or t.found):
            return  # the common round: nothing to settle, nothing to write
        before = t.dump()
        suspect = membership.rendezvous_suspect(t.testing, members) if t.streak else None
        if suspect is not None:
            t.found[suspect] = [x for x in t.found.get(suspect, []) if now - x < EVICTION_WINDOW_S] + [now]
            log.warning(
                "%s sat out and the rendezvous formed after %d broke without it (found %d time(s) today)%s",
                suspect,
                len(t.streak),
                len(t.found[suspect]),
                ": it sits out for a while" if len(t.found[suspect]) >= SUSPECT_FINDINGS else "",
            )
        t.streak, t.testing = [], None
        t.unnamed = {k: v for k, v in t.unnamed.items() if k[0] >= self.generation.id}
        # Findings older than the window count for nothing (sitting_out, rendezvous_test): pruned, so the
        # row stays bounded by the hotkeys found within a day.
        t.found = {hk: times for hk, times in t.found.items() if now - max(times) < EVICTION_WINDOW_S}
        if t.dump() != before:  # most rounds change nothing: no write
            self._save_rendezvous()

    def record_disputes(self, now: float) -> dict[str, list[str]]:
        """Record the disputes of the current generation's broken round, if one is pending (also when
        the generation ends for another reason before its grace is over: a dispute cannot be dodged
        by ending the generation first). Returns the round's stall reports."""
        gen = self.generation
        key = (gen.id, self.round) if gen else None
        disputed, pending = key in self.stall_deadline, self.named.get(key)
        self.stall_deadline.clear()  # a generation change follows: what the old one awaited is moot
        self.named.clear()
        if key is None or not (disputed or pending):
            return {}
        j = self._judge(gen, self.round, now)
        posts, named_at = self.posts.get(gen.id, {}), self._named_at(gen, self.round, j.named)
        alive = [hk for hk in j.majority if not self._gone_since(hk, named_at.get(hk, now), now)]  # dead: departed
        if j.late:  # the rendezvous broke on who came after its deadline; who gave up for it is not to blame
            lone = [hk for hk in j.late if hk in posts.get("presence", {})]
            lone += [hk for hk in j.excused if hk in posts.get("address", {})]
            pairs = [(membership.NOBODY, hk) for hk in lone]
        elif disputed:  # a member a majority named takes its dispute alone (:func:`membership.disputes_of`)
            pairs = [
                (r, a) for r, a in membership.disputes_of(j.named, j.majority) if a in alive or r != membership.NOBODY
            ]
        else:  # ended while a majority's judgement was pending: those named take it alone, unless they died since
            pairs = [(membership.NOBODY, hk) for hk in alive]
        for reporter, accused in pairs:
            self.db.execute("INSERT OR IGNORE INTO disputes VALUES (?,?,?,?)", (gen.id, reporter, accused, now))
        self.db.execute("DELETE FROM disputes WHERE at < ?", (now - DISPUTE_WINDOW_S,))
        return j.named

    def _gone_since(self, hotkey: str, since: float, now: float) -> bool:
        """Dead rather than hostile: gone, departed since ``since`` (its miner crashed, it left), or silent."""
        live = self.live.get(hotkey)
        return live is None or now - live.last_seen > SILENT_S or self._departed_since(hotkey, since)

    def _departed_since(self, hotkey: str, since: float) -> bool:
        row = self.db.execute("SELECT times FROM departures WHERE hotkey=?", (hotkey,)).fetchone()
        return any(t >= since for t in (json.loads(row[0]) if row else []))

    def sitting_out(self, now: float) -> set[str]:
        """Members of pairs whose disputes keep breaking generations (:func:`membership.sitting_out`)."""
        rows = self.db.execute(
            "SELECT generation, reporter, accused FROM disputes WHERE at >= ?", (now - DISPUTE_WINDOW_S,)
        )
        out = membership.sitting_out(rows, DISPUTES_BEFORE_SITOUT, DISPUTED_GENERATIONS_ALONE)
        t = self.rendezvous
        for hk, times in t.found.items():
            n = len(times) - SUSPECT_FINDINGS
            if n >= 0 and now < max(times) + min(EVICTION_WINDOW_S, SUSPECT_SIT_OUT_S * 2**n):
                out.add(hk)
        return out | ({t.testing} if t.testing else set())

    def evictions(self, hotkey: Optional[str] = None, since: float = float("-inf")) -> dict[str, int]:
        """How often each hotkey (or one) was evicted since ``since`` (default: in this run)."""
        if hotkey is not None:
            row = self.db.execute(
                "SELECT COUNT(*) FROM evictions WHERE hotkey=? AND at >= ?", (hotkey, since)
            ).fetchone()
            return {hotkey: int(row[0])} if row[0] else {}
        rows = self.db.execute("SELECT hotkey, COUNT(*) FROM evictions WHERE at >= ? GROUP BY hotkey", (since,))
        return {hk: int(n) for hk, n in rows}
