"""One view for every honest rank: the :class:`Agreement` a diloco round asks which contributions count
(the :class:`AgreedSet`), and :func:`repair`, how a rank that lacks an included contribution gets it
point to point from a rank that holds it.

Why: a Byzantine sender can send different peers different bytes (a signed payload to some, garbage or a
second signed payload to others) and a Byzantine member can claim it received nothing; each rank would
then aggregate a different set and end with a different θ_{r+1}. After the exchange and the signature
checks, each rank tells the agreement what it received
(per sender, the sha256 of the validly signed payload and the signature); the agreement (the
orchestrator, in a miner: ``template.miner.group.OrchestratorAgreement``; tests use an in-memory one)
answers with one decision for all. Every rank derives the same :func:`repair_plan` from it, fetches what
it lacks, and aggregates exactly the included set in rank order
(:func:`template.engine.outer_round.screen_agreed`).

Without an agreement (unit tests, benchmarks) a round aggregates what the rank itself received, as before.
The engine does no networking here: the agreement is injected like the exchange is.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional, Protocol

from template.engine.exchange import Exchange, GroupFailure

__all__ = [
    "AgreedSet",
    "Agreement",
    "AgreementFailure",
    "REPAIR_HEADER_BYTES",
    "RepairStep",
    "checked",
    "repair",
    "repair_plan",
]

log = logging.getLogger(__name__)

REPAIR_HEADER_BYTES = 8  # the payload's length, little-endian, before the payload padded to the cap
_REQUEST, _NO_NEED = b"\x01", b"\x00"


class AgreementFailure(GroupFailure):
    """No decision in time, a malformed decision, or an included contribution that no holder delivered:
    this rank cannot compute the agreed state. Like any broken group, the generation re-forms."""


class AgreedSet(NamedTuple):
    """The decision, by sender rank: the included payload's sha256 (None: not aggregated), the ranks
    lacking it (they fetch it point to point), and why a sender is not included."""

    included: list[Optional[str]]
    lacking: list[list[int]]
    reasons: list[Optional[str]]


class Agreement(Protocol):
    def decide(self, round: int, received: Sequence[Optional[tuple[str, bytes]]]) -> AgreedSet:
        """Report what this rank received in ``round``'s exchange — per sender rank, (sha256 of the
        validly signed payload, the sender's signature) or None — and return the decision every member
        follows. Raises :class:`AgreementFailure` when none comes in time."""
        ...


def checked(agreed: AgreedSet, world_size: int) -> AgreedSet:
    """``agreed`` if its shape fits the group (one entry per rank, ranks in range), else
    :class:`AgreementFailure`: a decision is trusted, but never indexed blindly."""
    if not (len(agreed.included) == len(agreed.lacking) == len(agreed.reasons) == world_size):
        raise AgreementFailure(f"the contribution decision does not name {world_size} ranks")
    for lacking in agreed.lacking:
        if any(not 0 <= r < world_size for r in lacking) or len(set(lacking)) != len(lacking):
            raise AgreementFailure("the contribution decision names ranks outside the group")
    return agreed


class RepairStep(NamedTuple):
    """``lacker`` needs ``sender``'s included payload; it asks ``holders`` in this order, one at a time."""

    sender: int
    lacker: int
    holders: tuple[int, ...]


def repair_plan(agreed: AgreedSet) -> list[RepairStep]:
    """The deterministic schedule every rank derives from the decision alone: for each included sender
    (rank order) and each rank lacking it (rank order), the holders to ask, lowest rank first."""
    n = len(agreed.included)
    plan = []
    for sender, (sha, lacking) in enumerate(zip(agreed.included, agreed.lacking)):
        if sha is None or not lacking:
            continue
        holders = tuple(r for r in range(n) if r not in set(lacking))
        plan += [RepairStep(sender, lacker, holders) for lacker in lacking]
    return plan


def repair(
    exchange: Exchange,
    rank: int,
    plan: Sequence[RepairStep],
    have: Mapping[int, bytes],
    included: Sequence[Optional[str]],
    max_bytes: int,
) -> tuple[dict[int, bytes], int]:
    """Run this rank's part of ``plan`` over the exchange's point-to-point channel. Returns the payloads
    this rank obtained (by sender; each hashes to its included sha256) and the bytes it sent.

    Per step, in plan order (so every send meets its receive, whatever the ranks' speeds): the lacker
    sends each holder in turn one byte — 1 "send it", 0 "no need" (it already has a good copy) — and a
    holder asked to send answers with the 8-byte length and the payload padded to ``max_bytes`` (fixed
    size: nothing to negotiate, nothing larger to allocate). The lacker checks the sha256 and asks the
    next holder when it does not match, so one lying holder costs one transfer, not the round. A holder
    that stalls makes the channel time out (:class:`GroupFailure`), as in any collective.
    """
    width = REPAIR_HEADER_BYTES + max_bytes
    got: dict[int, bytes] = {}
    sent = 0
    missing = []
    for step in plan:
        if rank == step.lacker:
            want = included[step.sender]
            own = have.get(step.sender)
            done = own is not None and hashlib.sha256(own).hexdigest() == want
            for holder in step.holders:
                exchange.send_to(holder, _NO_NEED if done else _REQUEST)
                sent += 1
                if done:
                    continue
                raw = exchange.recv_from(holder, width)
                length = int.from_bytes(raw[:REPAIR_HEADER_BYTES], "little")
                data = raw[REPAIR_HEADER_BYTES : REPAIR_HEADER_BYTES + length] if length <= max_bytes else None
                if data is not None and hashlib.sha256(data).hexdigest() == want:
                    got[step.sender] = data
                    done = True
                else:
                    log.warning("rank %d sent rank %d's contribution with the wrong hash", holder, step.sender)
            if not done:
                missing.append(step.sender)
        elif rank in step.holders and exchange.recv_from(step.lacker, 1) == _REQUEST:
            data = have.get(step.sender, b"")[:max_bytes]
            header = len(data).to_bytes(REPAIR_HEADER_BYTES, "little")
            exchange.send_to(step.lacker, header + data.ljust(max_bytes, b"\0"))
            sent += width
    if missing:  # only after the whole plan: the other ranks' steps still meet theirs
        raise AgreementFailure(f"no holder delivered the agreed contribution of rank(s) {missing}")
    return got, sent
