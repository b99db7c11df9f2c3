"""Peer attestation: is what a miner served the validator what it sent its peers?

Every rank's signed receipt lists the sha256 of the validly signed contribution it received from each
rank in the exchange (:attr:`Receipt.received_sha256`). Receipts of members outside the audit sample count
as attesters too (``peer_receipts`` of :func:`template.validator.audit.audit_round`). The verdict
(:func:`attestation_problem`):

- **attested** — a strict majority of the attesters holding valid bytes from the miner hold exactly the
  served ones;
- **fails** — at least :data:`MIN_ATTESTERS` of them, and a strict majority, hold *other validly signed*
  bytes from it (a copier re-serving someone else's bytes, a stale miner re-serving an old round); or
  attesters exist but **none** of them holds valid bytes from it: what it served reached nobody, so it
  cannot be what the round aggregated. "No attesting peer holds it" used to pass, which let a miner
  serve validators anything its peers never saw;
- **unverifiable** — no attester's receipt could be fetched at all, or the holders split without a
  majority: nothing proves the bytes either way, so the round scores 0 for that miner
  (:mod:`template.validator.scoring`), without the reset a proven cheat gets.

A lone lying attester cannot fail an honest miner whose other peers attest it; it can make the round
unverifiable only where it is most of the attesters (tiny groups).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

from template.validator.checks.receipt import Expected, receipt_problems
from template.wire.receipts import SignedReceipt

__all__ = ["MIN_ATTESTERS", "agreed_problem", "attestation_problem", "attesters", "attestations_of"]

MIN_ATTESTERS = 2  # disagreeing peers needed to fail a miner's served contribution (one liar is not enough)


def attesters(
    receipts: Iterable[SignedReceipt], members: Sequence[str], expected: Expected
) -> dict[int, list[Optional[str]]]:
    """Rank → what it says it received from each rank, for every receipt (the first per rank) that passes
    the receipt checks for the hotkey at its rank in ``members`` and lists one entry per member (a
    receipt that lists fewer says nothing about the ranks it leaves out: it attests nothing)."""
    out: dict[int, list[Optional[str]]] = {}
    for signed in receipts:
        r = signed.receipt
        if not (0 <= r.rank < len(members)) or r.rank in out or len(r.received_sha256) != len(members):
            continue
        if not receipt_problems(signed, members[r.rank], r.rank, expected):
            out[r.rank] = list(r.received_sha256)
    return out


def attestations_of(rank: int, attesting: Mapping[int, Sequence[Optional[str]]]) -> list[Optional[str]]:
    """What every *other* attesting rank says it received from ``rank`` (None: nothing validly signed)."""
    return [got[rank] if rank < len(got) else None for j, got in attesting.items() if j != rank]


def attestation_problem(
    served_sha256: str, attestations: Sequence[Optional[str]]
) -> tuple[Optional[bool], Optional[str]]:
    """What the peers' signed receipts say about the bytes a miner served: ``attestations`` holds,
    per attesting peer, the sha256 of the validly signed contribution it received from that miner
    (None: nothing validly signed arrived). Returns (attested, problem) — see the module docstring:
    (True, None) attested; (False, reason) fails; (None, reason) unverifiable."""
    held = [h for h in attestations if h is not None]
    n = len(held)
    agree = sum(1 for h in held if h == served_sha256)
    disagree = n - agree
    if not attestations:
        return None, "unverifiable this round: no attesting peer's receipt could be obtained"
    if n == 0:
        return False, (
            f"served contribution {served_sha256[:12]} reached none of its {len(attestations)} attesting "
            "peers: none of their signed receipts holds validly signed bytes from it"
        )
    if disagree >= MIN_ATTESTERS and 2 * disagree > n:
        return False, (
            f"served contribution {served_sha256[:12]} is not what it sent: {disagree} of {n} "
            "peers' signed receipts name other validly signed bytes received from it"
        )
    if 2 * agree > n:
        return True, None
    return None, f"unverifiable this round: {agree} of {n} attesting peers hold the served bytes (no majority)"


def agreed_problem(served_sha256: str, agreed_sha256: Optional[str]) -> tuple[Optional[bool], Optional[str]]:
    """Attestation by the round record instead of receipts: ``agreed_sha256`` is the hash the round
    agreed for this miner's rank (``RoundRecord.included``, a strict majority of the members' reports;
    None: it agreed none). Returns (attested, problem) as :func:`attestation_problem` does."""
    if agreed_sha256 is None:
        return None, "unverifiable this round: the round aggregated no contribution from it (none agreed)"
    if served_sha256 == agreed_sha256:
        return True, None
    return False, (
        f"served contribution {served_sha256[:12]} is not what it sent: the round agreed {agreed_sha256[:12]} "
        "from it (a strict majority of the members received those bytes)"
    )
