"""Which contributions a diloco round aggregates, decided once for every member of the generation: pure
functions over what the members report having received (:func:`decide_contributions`) and when the
decision is due (:func:`decision_due`).

Why the orchestrator decides: every rank sends its block straight to every other
(:class:`template.engine.exchange.DirectExchange`), but a Byzantine sender can send different peers
different bytes — a validly signed payload to some, garbage or a second signed payload to others — and
a Byzantine member can claim it received nothing. Each rank would then accept a different set of
contributions and compute a different θ_{r+1}; the process group cannot agree with itself when its
members lie, and the orchestrator is the trusted arbiter that every member already follows. Each member reports, per sender, the sha256 of the validly signed payload it
received (with the signature, which the caller verifies before anything here sees the hash), and
every member then aggregates exactly the included set, fetching what it lacks point to point.

:mod:`orchestrator.coordinator` applies these with plain data and records the outcome in SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from template.wire.orchestrator import AGREEMENT_GRACE_S, AGREEMENT_WINDOW_S, contribution_deadline_s

from .membership import straggler_grace_s

__all__ = [
    "AGREEMENT_WINDOW_S",
    "ContributionOutcome",
    "decide_contributions",
    "decision_deadline_s",
    "decision_due",
    "missing_can_change",
]


@dataclass(frozen=True)
class ContributionOutcome:
    """The agreed contribution set, by sender rank: the included sha256 (None: not aggregated), the
    members lacking the included payload (rank order; they fetch it point to point), why a sender is
    not included, and which senders equivocated."""

    included: tuple[Optional[str], ...]
    lacking: tuple[tuple[int, ...], ...]
    reasons: tuple[Optional[str], ...]
    equivocators: tuple[int, ...]


def decide_contributions(n: int, reports: Mapping[int, Sequence[Optional[str]]]) -> ContributionOutcome:
    """Decide the contribution set of a generation of ``n`` members from ``reports`` (reporter rank →
    per sender rank, the sha256 of the validly signed payload it received, None for nothing valid).

    Every hash must have been verified against the sender's signature over (context, round, rank,
    hash) by the caller, so a hash here is something the sender really signed. Then, per sender:

    - two different hashes: the sender signed two payloads for one slot — equivocation, excluded
      (the two signatures are the evidence);
    - one hash reported by a strict majority of the ``n`` members (not of the reporters: a silent
      member counts against, so a minority can never decide alone): included;
    - otherwise excluded.

    A lying reporter can only report None where it holds a hash (it cannot forge a signature): it can
    neither exclude a sender that the honest majority holds nor split the members' views, which all
    follow this one decision."""
    if n < 1:
        raise ValueError(f"a generation has at least one member, got {n}")
    for reporter, vector in reports.items():
        if not 0 <= reporter < n or len(vector) != n:
            raise ValueError(f"report of rank {reporter} must name {n} senders of ranks 0..{n - 1}")
    included: list[Optional[str]] = []
    lacking: list[tuple[int, ...]] = []
    reasons: list[Optional[str]] = []
    equivocators: list[int] = []
    for sender in range(n):
        held = {reporter: vector[sender] for reporter, vector in sorted(reports.items()) if vector[sender] is not None}
        hashes = set(held.values())
        if len(hashes) > 1:
            equivocators.append(sender)
            included.append(None)
            lacking.append(())
            reasons.append(f"equivocation: {len(hashes)} different signed payloads")
            continue
        if not hashes:
            included.append(None)
            lacking.append(())
            reasons.append("no member received a validly signed contribution")
            continue
        holders = set(held)
        if 2 * len(holders) > n:
            included.append(hashes.pop())
            lacking.append(tuple(r for r in range(n) if r not in holders))
            reasons.append(None)
        else:
            included.append(None)
            lacking.append(())
            reasons.append(f"held by {len(holders)} of {n} members (a strict majority is needed)")
    return ContributionOutcome(tuple(included), tuple(lacking), tuple(reasons), tuple(equivocators))


def missing_can_change(n: int, reports: Mapping[int, Sequence[Optional[str]]]) -> bool:
    """Whether the members that have not reported could still change which senders are included: a sender
    held by no strict majority yet whose holders and the missing reporters together would make one. An early
    decision then waits (:func:`decision_due`): one colluder reporting nothing valid, with an honest member
    reporting a little after the grace, would otherwise exclude honest blocks. A missing member's report on its
    own block is not waited for: a late member's loss is its own block, and a colluder that sends its block to
    half the members and never reports cannot hold every round's decision to the deadline that way. (A missing
    report can always reveal a sender's second signed payload, which excludes only that sender: it never
    blocks a decision.)"""
    absent = [r for r in range(n) if r not in reports]
    for sender in range(n):
        held = [vector[sender] for vector in reports.values() if vector[sender] is not None]
        if len(set(held)) > 1:
            continue  # equivocation: excluded whatever comes
        could = sum(1 for r in absent if r != sender)
        if 2 * len(held) <= n < 2 * (len(held) + could):
            return True
    return False


def decision_deadline_s(round_timeout_s: float) -> float:
    """How long after the first report the decision waits for the rest (the members wait as long, plus
    a grace period: both sides read it from the wire module)."""
    return contribution_deadline_s(round_timeout_s)


def decision_due(
    members: int,
    report_times: Sequence[float],
    now: float,
    deadline_s: float,
    *,
    round_started: float,
    grace_floor_s: float,
    grace_factor: float,
    broken: bool = False,
    resumed_at: float = 0.0,
    changeable: Callable[[], bool] = lambda: False,
) -> bool:
    """The decision is made once every member reported; or ``deadline_s`` after the first report; or, once
    a strict majority reported, :func:`membership.straggler_grace_s` after the report that made it one (a
    member that reports in time but after everyone else cannot hold every round for the whole deadline),
    unless a member said the group broke this round (``broken``: a stall report). That round ends by the
    stall rules; deciding early would send the others on to a repair or an exchange where the reporter,
    gone, is named by all of them — the one a peer withheld from, blamed for leaving. Both waits count
    from ``resumed_at`` at the earliest (the orchestrator's restart: nobody could report while it was down),
    the grace keeping the length the majority's pace gives it, and the deadline moving by at most half the
    grace the members wait past it. Nor is it early when the missing reports
    could still change the outcome (``changeable``, asked last: :func:`missing_can_change` of the reports)."""
    if len(report_times) >= members:
        return True
    if not report_times:
        return False
    times = sorted(report_times)
    # A restart moves the deadline by half the members' grace at most: each gives up that grace past it.
    if now - min(max(times[0], resumed_at), times[0] + AGREEMENT_GRACE_S / 2) >= deadline_s:
        return True
    if broken or 2 * len(times) <= members:
        return False
    majority_at = times[members // 2]
    grace = straggler_grace_s(majority_at - round_started, grace_floor_s, grace_factor)
    return now - max(majority_at, resumed_at) >= grace and not changeable()
