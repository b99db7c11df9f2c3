"""Transition check: is the agreed θ_{r+1} the state that θ_r and the round's agreed contributions produce?

The orchestrator's round record names, by rank, the sha256 of every contribution the round aggregated
(``RoundRecord.included``, decided once for all members; see ``orchestrator.agreement``) and the agreed
state hash. A validator holding θ_r and those contributions (served by the miners' meta-miners, checked
against the agreed hashes) recomputes θ_{r+1} with the very function the ranks run after their exchange
(:func:`template.engine.outer_round.next_state`: screen, aggregate in rank order, Nesterov outer step —
all bit-exact) and compares hashes. Equal: the round did what its contributions say. Different: the
members who voted for the agreed state did not apply the agreed contributions (a Byzantine majority, or
a bug), which no single miner's audit would show. A contribution the validator could not obtain makes the
round unverifiable, not wrong: nobody is blamed for a validator's missing bytes.

Pure: no networking, no chain, no disk. Cost: one strict parse of θ_r, the decompression of every
included contribution, one aggregation and one outer step — what one rank does after its exchange.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.outer_round import next_state
from template.engine.state import StateFormat
from template.wire.orchestrator import RoundRecord

__all__ = ["TransitionCheck", "transition_check"]


@dataclass(frozen=True)
class TransitionCheck:
    """``verified``: θ_{r+1} was recomputed and equals the agreed state. ``problem``: it was recomputed
    and differs (or the record is inconsistent). ``missing``: ranks whose included contribution the
    caller lacks or holds with another hash (the check could not run: neither verified nor a problem)."""

    verified: bool
    problem: Optional[str] = None
    missing: list[int] = field(default_factory=list)


def transition_check(
    training: TrainingConfig,
    start_state: Optional[bytes],
    record: RoundRecord,
    contributions: Mapping[int, bytes],
) -> TransitionCheck:
    """Check ``record`` (an agreed round) against θ_r = ``start_state`` (the agreed state the round
    started from, i.e. the previous record's ``state``; None: the run's seed state) and
    ``contributions`` (by rank; only the included ones are used). ``ValueError`` when ``start_state``
    is not this run's state of round ``record.round`` — the caller's mistake, not the swarm's."""
    if record.included is None:
        return TransitionCheck(False, None, [])  # no agreed contribution set (ddp, fsdp): nothing to recompute
    if len(record.included) != len(record.members):
        return TransitionCheck(
            False, f"the record names {len(record.included)} contributions for {len(record.members)} members"
        )
    fmt = StateFormat(training)
    start_round = 0 if start_state is None else fmt.parse(start_state).round
    if start_round != record.round:
        raise ValueError(f"the start state is of round {start_round}, the record of round {record.round}")
    missing = [
        r
        for r, sha in enumerate(record.included)
        if sha is not None and (r not in contributions or hashlib.sha256(contributions[r]).hexdigest() != sha)
    ]
    if missing:
        return TransitionCheck(False, None, missing)
    included = {r: contributions[r] for r, sha in enumerate(record.included) if sha is not None}
    got = checkpoint.state_hash(next_state(training, start_state, included, record.included))
    if got != record.state:
        return TransitionCheck(
            False,
            f"round {record.round}: θ_r+1 recomputed from the {len(included)} agreed contributions is {got[:16]}…, "
            f"the agreed state is {record.state[:16]}…",
        )
    return TransitionCheck(True)
