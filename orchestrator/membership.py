"""Membership decisions as pure functions: who is in the next generation, in
which rank order, when a generation must end, when a round is agreed, how
few ranks a generation may have in a run that tolerates Byzantine miners, and
who is missing when a group cannot form or an exchange stalls.

The orchestrator's state machine (``orchestrator.coordinator``) calls these
with plain data; every trust decision about membership lives here, unit-tested.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from template.config.run import tolerated_byzantine


def next_members(
    current: Sequence[str],
    alive: Iterable[str],
    waiting: Sequence[str],
    max_world_size: int,
) -> list[str]:
    """Rank order of the next generation: surviving members keep their relative
    order (dense ranks 0..N-1, rank 0 stays rank 0 when it survives), then
    waiting hotkeys in arrival order, up to ``max_world_size``."""
    alive_set = set(alive)
    survivors = [hk for hk in current if hk in alive_set]
    seen = set(survivors)
    joiners = [hk for hk in waiting if hk not in seen and not seen.add(hk)]
    return (survivors + joiners)[:max_world_size]


def least_world_size(byzantine_fraction: float) -> int:
    """The fewest ranks a generation may form with: 2·max(1, b(n)) + 1 when the run tolerates a
    Byzantine share f > 0 — with 2 ranks a trimmed mean or a median is the plain mean, which one
    rank steers — else 1 (a trusted run). Since b(n) ≤ (n − 1) // 2, that is 3 for every f > 0."""
    if byzantine_fraction <= 0:
        return 1
    n = 1
    while n < 2 * max(1, tolerated_byzantine(n, byzantine_fraction)) + 1:
        n += 1
    return n


def effective_min_world_size(min_world_size: int, byzantine_fraction: float) -> int:
    """The configured minimum, raised to :func:`least_world_size` of the run's Byzantine fraction."""
    return max(min_world_size, least_world_size(byzantine_fraction))


def timed_out(last_seen: Mapping[str, float], now: float, timeout_s: float) -> set[str]:
    """Hotkeys whose last heartbeat is older than the timeout."""
    return {hk for hk, seen in last_seen.items() if now - seen > timeout_s}


def rejoin_cooldown(recent_departures: int, base_s: float, cap_s: float = 600.0) -> float:
    """Seconds a hotkey must wait before rejoining after its n-th departure in a
    short window: 0 for the first, then doubling, so a join/leave loop cannot
    keep re-forming the group."""
    if recent_departures <= 1 or base_s <= 0:
        return 0.0
    return min(cap_s, base_s * 2 ** (recent_departures - 2))


@dataclass(frozen=True)
class Transition:
    """Whether to end the current generation now, and why."""

    now: bool
    reason: str = ""


def plan_transition(
    *,
    members: Sequence[str],
    alive: Iterable[str],
    waiting: Sequence[str],
    failed: bool,
    at_round_boundary: bool,
    min_world_size: int,
    max_world_size: int,
) -> Transition:
    """Decide whether the generation ends now.

    - No generation and enough live candidates → start one.
    - A member is dead or reported a broken group → end at once (the group
      cannot finish the round without it; survivors re-form).
    - Joiners waiting and room for them → only at a round boundary, so a live
      generation never loses work to a newcomer.
    """
    alive_set = set(alive)
    if not members:
        candidates = next_members([], alive_set, waiting, max_world_size)
        if len(candidates) >= min_world_size:
            return Transition(True, "start")
        return Transition(False)
    dead = [hk for hk in members if hk not in alive_set]
    if dead:
        return Transition(True, f"{len(dead)} member(s) gone")
    if failed:
        return Transition(True, "a member reported a broken process group")
    joinable = [hk for hk in waiting if hk in alive_set and hk not in members]
    if at_round_boundary and joinable and len(members) < max_world_size:
        return Transition(True, f"{len(joinable)} joiner(s)")
    return Transition(False)


@dataclass(frozen=True)
class RoundOutcome:
    complete: bool
    agreed: Optional[str] = None
    dissenters: frozenset[str] = frozenset()


def round_outcome(members: Sequence[str], reports: Mapping[str, str], late: Collection[str] = ()) -> RoundOutcome:
    """A round is complete once every member reported its new state hash (or was given up on as ``late``:
    :func:`laggards`). The hash held by a strict majority is agreed; members holding another hash, or
    none, diverged and must catch up from the agreed checkpoint. Without a strict majority nothing is
    agreed (the round is redone)."""
    if not members or any(hk not in reports and hk not in late for hk in members):
        return RoundOutcome(False)
    state = majority_state(members, reports)
    if state is None:
        return RoundOutcome(True, None, frozenset(members))
    return RoundOutcome(True, state, frozenset(hk for hk in members if reports.get(hk) != state))


def majority_state(members: Sequence[str], reports: Mapping[str, str]) -> Optional[str]:
    """The state hash a strict majority of ``members`` reported (decided before the rest report), or None."""
    counts = Counter(reports[hk] for hk in members if hk in reports)
    if not counts:
        return None
    state, votes = counts.most_common(1)[0]
    return state if votes * 2 > len(members) else None


def straggler_grace_s(majority_elapsed_s: float, floor_s: float, factor: float) -> float:
    """How long the members that have not reported are waited for once a strict majority has: the
    longer of ``floor_s`` and ``factor`` times what the majority took (so a member at most that much
    slower than the majority is never given up on, and a late one holds a round at most that long)."""
    return max(floor_s, factor * max(majority_elapsed_s, 0.0))


def laggards(
    members: Sequence[str],
    reported: Collection[str],
    majority_at: float,
    round_started: float,
    now: float,
    floor_s: float,
    factor: float,
    *,
    exchanged: Collection[str],
    excused: Collection[str],
    loose_s: float,
) -> list[str]:
    """The members that have not reported a round whose outcome a strict majority decided at
    ``majority_at``, once their grace after it is over. A member that reports in time but later than
    everyone else would otherwise hold each round up to the round timeout.

    The grace is :func:`straggler_grace_s` for a member that finished the exchange (``exchanged``: it
    reported the contributions it received and lacks none the decision included), whose round has only
    its own work left; a member still in the exchange may be waiting for a peer that withholds from it
    alone, which its collective's timeout ends with a stall report, so it gets ``loose_s`` (longer than
    that timeout). A member that filed a stall report naming a peer (``excused``) is the stall rules' to
    judge, never a laggard: the one a peer withholds from is not blamed for being late. Laggards are named
    only when removing them completes the round (none while an excused member has not reported: the
    stall rules end that round, and nobody is evicted for a round that is not kept)."""
    tight = straggler_grace_s(majority_at - round_started, floor_s, factor)
    waited = now - majority_at
    missing = [hk for hk in members if hk not in reported]
    late = [hk for hk in missing if hk not in excused and waited >= (tight if hk in exchanged else max(tight, loose_s))]
    return late if len(late) == len(missing) else []


# A generation's members that have not checked in this many check-in timeouts after it formed are late
# whatever the others did (fewer than a majority's worth came); if nobody came at all, its members are
# removed as departures (gone, not evicted): who is at fault when nobody arrives cannot be known.
NOBODY_ARRIVED_TIMEOUTS = 3.0


def never_checked_in(
    members: Sequence[str], checked_in: Mapping[str, float], started_at: float, now: float, timeout_s: float
) -> list[str]:
    """Members whose miner has not checked in (``checked_in``: hotkey → when) in time after their
    generation formed: the orchestrator's own observation, nobody's word is needed. In time is relative:
    ``timeout_s`` after the generation formed and half of it after the check-in of the k-th member to come,
    k = ⌊(n − 1)/2⌋ + 1, one more than the members that may be hostile (the honest ones are a strict
    majority), so that time is an honest member's or later. On a loaded host every miner starts slowly, and
    a member is late only beside honest ones that were not: a hostile member checking in at once cannot
    pull the deadline in on slow honest ones. Until k members came, nobody is named before
    :data:`NOBODY_ARRIVED_TIMEOUTS` timeouts; nobody at all, never (:func:`nobody_arrived` ends that)."""
    times = sorted(checked_in[hk] for hk in members if hk in checked_in)
    k = (len(members) - 1) // 2 + 1
    if not times:
        return []
    if len(times) >= k:  # never later than when nobody arrived would end it (the presence deadline)
        deadline = min(
            max(started_at + timeout_s, times[k - 1] + timeout_s / 2), started_at + NOBODY_ARRIVED_TIMEOUTS * timeout_s
        )
    else:
        deadline = started_at + NOBODY_ARRIVED_TIMEOUTS * timeout_s
    if now < deadline:
        return []
    return [hk for hk in members if hk not in checked_in]


def nobody_arrived(
    members: Sequence[str], checked_in: Mapping[str, float], started_at: float, now: float, timeout_s: float
) -> bool:
    """Whether no member has checked in :data:`NOBODY_ARRIVED_TIMEOUTS` check-in timeouts after the generation
    formed (its members then leave as departures, nobody blamed)."""
    late = now - started_at >= NOBODY_ARRIVED_TIMEOUTS * timeout_s
    return late and not any(hk in checked_in for hk in members)


def named_by_majority(members: Sequence[str], named: Mapping[str, Iterable[str]]) -> list[str]:
    """Members that a strict majority of the *other* members name as missing (``named``: reporter →
    the members it waited for in vain). A reporter that is not a member, or names itself, is not
    counted; so fewer colluders than half of the others can never remove an honest member, and one
    report never removes anyone in a generation of three or more."""
    ranked = set(members)
    votes: Counter[str] = Counter()
    for reporter, accused in named.items():
        if reporter not in ranked:
            continue
        for hk in set(accused):
            if hk in ranked and hk != reporter:
                votes[hk] += 1
    others = len(members) - 1
    return [hk for hk in members if others > 0 and 2 * votes[hk] > others]


def named_at_a_failed_rendezvous(named: Mapping[str, Iterable[str]], gave_up: set[str]) -> set[str]:
    """Members at least half of the reports naming whom say their group broke while forming (``gave_up``:
    the reporters that gave up waiting at the rendezvous). A member named in a round that trained (most
    reports naming it are not rendezvous failures: a stalled exchange) is not one, whatever it says."""
    out = set()
    for hk in {hk for accused in named.values() for hk in accused}:
        naming = [reporter for reporter, accused in named.items() if hk in set(accused) and reporter != hk]
        if naming and 2 * sum(reporter in gave_up for reporter in naming) >= len(naming):
            out.add(hk)
    return out


def left_a_failed_rendezvous(named: Mapping[str, Iterable[str]], gave_up: set[str], excuse: set[str]) -> set[str]:
    """Members not to evict although named: named at a failed rendezvous (:func:`named_at_a_failed_rendezvous`)
    and with an ``excuse`` the orchestrator saw itself: their gloo address reached the store late (after the
    first report naming them), or they gave up waiting for a peer whose presence came after the generation's
    deadline (:func:`presence_deadline`). An honest miner frozen or descheduled for a few seconds after its
    presence misses gloo's connect wait as a saboteur posting its address late does, and nothing the others see
    tells them apart: such a member is not evicted but takes a dispute alone (:func:`disputes_of`), so one that
    keeps breaking rendezvous sits out while its accusers, most of them honest, keep their seats. One that never
    came on into gloo is evicted, unless it said its group broke before a majority named it (a broken store link
    says so first; a saboteur saying it too takes the same lone disputes)."""
    return named_at_a_failed_rendezvous(named, gave_up) & excuse


# A presence that passed the store tunnel less than this before its generation's deadline counts as late: every
# rank gives up at the deadline or after (its own clock from the assignment's ``presence_left_s``: the transit
# only delays it), so a presence in the store by then is seen by all; this covers the tunnel-to-store write.
PRESENCE_SLACK_S = 0.25


def presence_deadline(started_at: float, checkin_timeout_s: float) -> float:
    """When every member's presence must be in a generation's store: as late as a member may check in
    (:func:`never_checked_in`, :data:`NOBODY_ARRIVED_TIMEOUTS` check-in timeouts at the most), so a slow host
    that may still check in is never late; a member absent by then is removed on the check-in rules."""
    return started_at + NOBODY_ARRIVED_TIMEOUTS * checkin_timeout_s


NOBODY = "*"  # the other party of a lone sweeping accusation (see :func:`disputes_of`)
SLOW = "*slow"  # the other party of a removal for being slow to present (:func:`slow_pass`): twice, it sits out


def disputes_of(named: Mapping[str, Iterable[str]], alone: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The disputes a broken round's stall reports make (``named``: reporter -> the members it waited
    for in vain), when no member was named by a majority: (reporter, accused) for each name, except
    that a reporter naming two or more members none of whom anyone else named disputes with
    :data:`NOBODY` instead (a rank cut off from everyone, or one trying to bench them all: either way
    the trouble is its own). Of a reporter's several names, the ones nobody else named are dropped.
    A member in ``alone`` (named by a majority at a rendezvous that failed, :func:`left_a_failed_rendezvous`)
    disputes with :data:`NOBODY`: a majority of the others saw the same, so none of them shares its dispute,
    and its own accusations count for nothing (a saboteur could otherwise bench an honest member by naming it)."""
    alone = set(alone)
    named = {reporter: set(accused) - alone for reporter, accused in named.items() if reporter not in alone}
    counts: Counter[str] = Counter()
    for reporter, accused in named.items():
        counts.update(accused - {reporter})
    out: list[tuple[str, str]] = [(NOBODY, hk) for hk in sorted(alone)]
    for reporter, accused in named.items():
        names = sorted(accused - {reporter})
        if len(names) <= 1:
            out += [(reporter, hk) for hk in names]
            continue
        corroborated = [hk for hk in names if counts[hk] > 1]
        out += [(reporter, hk) for hk in corroborated] if corroborated else [(reporter, NOBODY)]
    return out


def sitting_out(disputes: Iterable[tuple[int, str, str]], repeats: int = 2, alone: int = 3) -> set[str]:
    """Hotkeys that sit out the next generations (``disputes``: (generation, reporter, accused) for each
    member that a stall report named without a majority of the others agreeing):

    - both ends of every pair that broke ``repeats`` or more generations between them. The orchestrator
      cannot tell a sender that withholds its block from one peer from a peer that falsely says so, so
      neither is blamed (no eviction, no cool-down) and both sit out together: an accuser loses its own
      seat with every member it keeps accusing;
    - any hotkey party to disputes in ``alone`` or more generations, whoever the other party was: one
      that accuses a different member each time, or withholds from a different one, cannot break
      generations for ever. (Colluders taking turns to accuse one honest member can make it sit out
      alone, at the cost of ``alone`` broken generations.)

    Pairs are unordered (a counter-accusation is the same dispute); naming oneself is none. Removals for being
    slow to present (:data:`SLOW` the other party) count as pairs only, not toward ``alone``."""
    pairs: dict[frozenset[str], set[int]] = {}
    parties: dict[str, set[int]] = {}
    for generation, reporter, accused in disputes:
        if reporter == accused:
            continue
        pairs.setdefault(frozenset((reporter, accused)), set()).add(generation)
        if reporter == SLOW:  # its own kind: with accusations, it would make colluders' benching cheaper
            continue
        for hk in (reporter, accused):
            parties.setdefault(hk, set()).add(generation)
    out = {hk for pair, seen in pairs.items() if len(seen) >= repeats for hk in pair}
    return (out | {hk for hk, seen in parties.items() if len(seen) >= alone}) - {NOBODY, SLOW}


def rendezvous_test(
    streak: Sequence[tuple[Sequence[str], Optional[str]]],
    seniority: Sequence[str],
    min_world_size: int,
    found: Optional[Mapping[str, int]] = None,
) -> Optional[str]:
    """Who sits out the next generation, to find a member that breaks the rendezvous where nobody can be
    named (a gloo address that accepts connections and never completes the handshake: every rank's
    connect just times out). ``streak``: the generations that broke so since the last agreed round,
    oldest first, each as (members, who sat it out). One member sits out at a time: those found before
    first (``found``: hotkey -> how often, recently), then newest first (``seniority``: hotkeys oldest
    first, unknown ones newest); each is tried once per streak, and the others are back. None when no test
    is left (every member was tried: not one saboteur) or when a generation without one member would be
    below ``min_world_size``."""
    if not streak:
        return None
    members, out = streak[-1]
    candidates = set(members) | ({out} if out else set())
    if len(candidates) - 1 < min_world_size:
        return None
    tried = {sat for _, sat in streak if sat}
    order = {hk: i for i, hk in enumerate(seniority)}
    found = found or {}
    untried = sorted(candidates - tried, key=lambda hk: (-found.get(hk, 0), -order.get(hk, len(order)), hk))
    return untried[0] if untried else None


def rendezvous_suspect(testing: Optional[str], agreed: Sequence[str]) -> Optional[str]:
    """A generation agreed a round while ``testing`` sat out to end a streak of rendezvous breaks nobody could
    be named for (:func:`rendezvous_test`): that member is the suspect, unless it is in the generation. A
    saboteur that breaks every generation it is in is found so; one that breaks only when a given member is
    in can make that member the suspect instead (what the orchestrator sees is the same), and an honest rank
    frozen through one rendezvous can make the member tested meanwhile look like one: so a member sits out
    only when found again (tested first next time), for a while, longer each time, and is never evicted
    or refused for it."""
    return testing if testing is not None and testing not in set(agreed) else None


@dataclass
class RendezvousTests:
    """Finding a member whose gloo address accepts connections and never completes the handshake: the
    generation breaks with every rank's connect timed out and nobody to name. Per generation and round,
    who reported that (``unnamed``); the ``streak`` of such breaks since the last agreed round, as
    (members, who sat it out); the member sitting out now to test it (``testing``); and when each
    suspect was found (``found``)."""

    unnamed: dict[tuple[int, int], set[str]] = field(default_factory=dict)
    streak: list[tuple[list[str], Optional[str]]] = field(default_factory=list)
    testing: Optional[str] = None
    found: dict[str, list[float]] = field(default_factory=dict)

    def dump(self) -> dict:
        """As JSON (the coordinator's ``kv`` row ``RENDEZVOUS_KEY``): a restart keeps a streak, a test and
        the findings, so a saboteur cannot wipe its record by outlasting an orchestrator restart."""
        return {
            "unnamed": [[g, r, sorted(hks)] for (g, r), hks in self.unnamed.items()],
            "streak": [[list(members), out] for members, out in self.streak],
            "testing": self.testing,
            "found": self.found,
        }

    @classmethod
    def load(cls, data: Optional[dict]) -> RendezvousTests:
        if not data:
            return cls()
        return cls(
            unnamed={(int(g), int(r)): set(hks) for g, r, hks in data["unnamed"]},
            streak=[(list(members), out) for members, out in data["streak"]],
            testing=data["testing"],
            found={hk: [float(t) for t in times] for hk, times in data["found"].items()},
        )


RENDEZVOUS_KEY = "rendezvous_tests"
