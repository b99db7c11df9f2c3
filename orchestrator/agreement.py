"""Which contributions a diloco round aggregates, decided once for every member of the generation: pure
functions over what the members report having received (:func:`decide_contributions`), the ring relays
that the reports point at (:func:`relay_suspects`), and when the decision is due (:func:`decision_due`).

Why the orchestrator decides: a rank of gloo's ring all-gather relays its neighbours' blocks, so a
Byzantine relay can hand the ranks after it a different (corrupted) block than the ones before it got.
Each rank then accepts a different set of contributions and computes a different θ_{r+1}. The process
group cannot agree with itself when its relays lie; the orchestrator is the trusted arbiter that every
member already follows. Each member reports, per sender, the sha256 of the validly signed payload it
received (with the signature, which the caller verifies before anything here sees the hash), and
every member then aggregates exactly the included set, fetching what it lacks point to point.

:mod:`orchestrator.coordinator` applies these with plain data and records the outcome in SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from template.wire.orchestrator import AGREEMENT_WINDOW_S, contribution_deadline_s

__all__ = [
    "AGREEMENT_WINDOW_S",
    "ContributionOutcome",
    "RelaySuspect",
    "decide_contributions",
    "decision_deadline_s",
    "decision_due",
    "relay_suspects",
]


@dataclass(frozen=True)
class RelaySuspect:
    """Ring position ``relay`` is suspected of corrupting sender ``sender``'s block for the ranks after
    it: ``witnesses`` lack the block that the ranks before them (``relay`` included) hold. ``counted``
    is False when one witness alone (or a silent member in between) makes the attribution ambiguous;
    only counted suspicions become misbehaviour reports."""

    sender: int
    relay: int
    witnesses: tuple[int, ...]
    counted: bool


@dataclass(frozen=True)
class ContributionOutcome:
    """The agreed contribution set, by sender rank: the included sha256 (None: not aggregated), the
    members lacking the included payload (rank order; they fetch it point to point), why a sender is
    not included, which senders equivocated, and the relays suspected of corrupting blocks."""

    included: tuple[Optional[str], ...]
    lacking: tuple[tuple[int, ...], ...]
    reasons: tuple[Optional[str], ...]
    equivocators: tuple[int, ...]
    suspects: tuple[RelaySuspect, ...]


def decide_contributions(n: int, reports: Mapping[int, Sequence[Optional[str]]]) -> ContributionOutcome:
    """Decide the contribution set of a generation of ``n`` members from ``reports`` (reporter rank →
    per sender rank, the sha256 of the validly signed payload it received, None for nothing valid).

    Every hash must have been verified against the sender's signature over (context, round, rank,
    hash) by the caller, so a hash here is something the sender really signed. Then, per sender:

    - two different hashes: the sender signed two payloads for one slot — equivocation, excluded
      (the two signatures are the evidence, whoever relayed them);
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
    suspects: list[RelaySuspect] = []
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
        suspects += relay_suspects(n, sender, {r: r in holders for r in reports})
        if 2 * len(holders) > n:
            included.append(hashes.pop())
            lacking.append(tuple(r for r in range(n) if r not in holders))
            reasons.append(None)
        else:
            included.append(None)
            lacking.append(())
            reasons.append(f"held by {len(holders)} of {n} members (a strict majority is needed)")
    return ContributionOutcome(tuple(included), tuple(lacking), tuple(reasons), tuple(equivocators), tuple(suspects))


def relay_suspects(n: int, sender: int, holds: Mapping[int, bool]) -> list[RelaySuspect]:
    """The ring relays that ``holds`` (reporter rank → whether it holds ``sender``'s one signed hash;
    members that did not report are absent) points at, for gloo's ring all-gather, where rank k
    receives from k−1 and forwards to k+1: a block travels sender, sender+1, …, sender−1 (mod n).

    A relay that corrupts the block makes every rank after it lack it, so walking the ring from the
    sender, each run of lacking ranks names the last holder before it as the suspect, with the run's
    ranks as witnesses. Never the sender: a run that starts right after it is equally explained by the
    sender having sent its neighbour something else or by the neighbour lying about it, so nobody is
    named. Never one reporter's word alone: a single witness may simply be lying (it held the block
    and reported None) — then the named relay is innocent — so such a suspicion is recorded with
    ``counted=False``; likewise when a silent member sits between the holder and the run (the silent
    one could be the corrupting relay). What remains ambiguous: k ≥ 2 adjacent colluders can all claim
    to lack a block and so have the honest relay before them counted; and a relay that corrupts only
    for its one neighbour is never counted. Both are bounded by the number of colluders and visible in
    the recorded evidence."""
    out: list[RelaySuspect] = []
    last, run = sender, []
    gap = gap_before_run = False  # a silent member since the last holder / before the run began
    for k in range(1, n):
        rank = (sender + k) % n
        if rank not in holds:  # silent: neither holder nor witness, but it may be the relay that corrupted
            gap = gap or not run
            continue
        if holds[rank]:
            if run:
                out += _suspect(sender, last, run, gap_before_run)
            last, run, gap = rank, [], False
        else:
            if not run:
                gap_before_run = gap
            run.append(rank)
    if run:
        out += _suspect(sender, last, run, gap_before_run)
    return out


def _suspect(sender: int, relay: int, run: list[int], ambiguous: bool) -> list[RelaySuspect]:
    if relay == sender:
        return []
    return [RelaySuspect(sender, relay, tuple(run), counted=len(run) >= 2 and not ambiguous)]


def decision_deadline_s(round_timeout_s: float) -> float:
    """How long after the first report the decision waits for the rest (the members wait as long, plus
    a grace period: both sides read it from the wire module)."""
    return contribution_deadline_s(round_timeout_s)


def decision_due(members: int, reported: int, first_report_at: Optional[float], now: float, deadline_s: float) -> bool:
    """The decision is made once every member reported, or ``deadline_s`` after the first report."""
    if reported >= members:
        return True
    return first_report_at is not None and now - first_report_at >= deadline_s
