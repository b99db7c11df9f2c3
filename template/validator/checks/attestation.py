"""Peer attestation: is what a miner served the validator what it sent its peers?

Every rank's signed receipt lists the sha256 of the validly signed contribution it received from each
rank in the exchange (:attr:`Receipt.received_sha256`). A contribution served to the validator when a
strict majority of the attesting peers (at least :data:`MIN_ATTESTERS`) received *other validly signed*
bytes from that miner fails: it was not what the miner sent (a copier re-serving someone else's bytes, a
stale miner re-serving an old round). Peers that hold no valid bytes from it do not count (see
:func:`attestation_problem`). Receipts of members outside the audit sample count as attesters
(``peer_receipts`` of :func:`template.validator.audit.audit_round`), so a lone lying attester cannot
frame an honest miner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

from template.validator.checks.receipt import Expected, receipt_problems
from template.wire.receipts import SignedReceipt

__all__ = ["MIN_ATTESTERS", "attestation_problem", "attesters", "attestations_of"]

MIN_ATTESTERS = 2  # disagreeing peers needed to fail a miner's served contribution (one liar is not enough)


def attesters(
    receipts: Iterable[SignedReceipt], members: Sequence[str], expected: Expected
) -> dict[int, list[Optional[str]]]:
    """Rank → what it says it received from each rank, for every receipt (the first per rank) that passes
    the receipt checks for the hotkey at its rank in ``members``."""
    out: dict[int, list[Optional[str]]] = {}
    for signed in receipts:
        r = signed.receipt
        if not (0 <= r.rank < len(members)) or r.rank in out:
            continue
        if not receipt_problems(signed, members[r.rank], r.rank, expected):
            out[r.rank] = list(r.received_sha256)
    return out


def attestations_of(rank: int, attesting: Mapping[int, Sequence[Optional[str]]]) -> list[Optional[str]]:
    """What every *other* attesting rank says it received from ``rank`` (None: nothing valid, or not listed)."""
    return [got[rank] if rank < len(got) else None for j, got in attesting.items() if j != rank]


def attestation_problem(
    served_sha256: str, attestations: Sequence[Optional[str]]
) -> tuple[Optional[bool], Optional[str]]:
    """What the peers' signed receipts say about the bytes a miner served: ``attestations`` holds,
    per attesting peer, the sha256 of the validly signed contribution it received from that miner
    (None: nothing validly signed arrived). Only positive evidence counts: gloo's all-gather is a
    ring, so a relaying rank can corrupt a neighbour's bytes for the ranks after it, which then hold
    no valid signature from that miner — that must not frame the miner. A different *validly signed*
    hash, though, can only come from the miner itself.

    Returns (attested, problem): (False, reason) when at least :data:`MIN_ATTESTERS` peers and a
    strict majority of those holding a valid hash received other bytes; (True, None) when a strict
    majority of them received exactly the served bytes; (None, None) otherwise."""
    held = [h for h in attestations if h is not None]
    n = len(held)
    agree = sum(1 for h in held if h == served_sha256)
    disagree = n - agree
    if disagree >= MIN_ATTESTERS and 2 * disagree > n:
        return False, (
            f"served contribution {served_sha256[:12]} is not what it sent: {disagree} of {n} "
            "peers' signed receipts name other validly signed bytes received from it"
        )
    if n and 2 * agree > n:
        return True, None
    return None, None
