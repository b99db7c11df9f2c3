"""Rebuild an agreed diloco state from an earlier one and the agreed contributions of the rounds between:
θ_{r+1} = :func:`~template.engine.outer_round.next_state` (θ_r, round r's included contributions), each
step checked against the state the members agreed on. Pure given its inputs; the same function the ranks
and validators compute.

The orchestrator holds a checkpoint every ``checkpoint_every`` rounds and the members' agreed contributions
of the rounds since; it rebuilds any state in between on request (a validator's audit, a joiner's
catch-up) in a separate process, ``python -m template.engine.replay JOB.json`` — the orchestrator itself
imports no torch. The job (:class:`ReplayJob`) names files only; the result is written to ``out`` and a
failure is one line on stderr (exit 1) naming the round whose recomputed state differs, or the file that
is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from template.config.run import TrainingConfig
from template.engine.outer_round import next_state

__all__ = ["ReplayJob", "ReplayMismatch", "ReplayRound", "replay"]


class ReplayMismatch(ValueError):
    """A recomputed state is not the one the members agreed on."""


class ReplayRound(BaseModel):
    model_config = ConfigDict(extra="forbid")

    round: int
    included: list[Optional[str]]  # the agreed contribution sha256 by sender rank (None: not aggregated)
    payloads: dict[int, str]  # sender rank -> file holding its included contribution
    state: str  # sha256 of the state the round agreed on (θ_{round+1})


class ReplayJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    training: TrainingConfig
    start: Optional[str]  # file holding θ of the first round's start (None: the run's seed state)
    rounds: list[ReplayRound]
    out: str  # where the rebuilt state is written


def replay(
    cfg: TrainingConfig,
    start: Optional[bytes],
    rounds: Sequence[tuple[int, Sequence[Optional[str]], Mapping[int, bytes], str]],
) -> bytes:
    """θ after the last of ``rounds`` — each (round, included, contributions by rank, agreed state sha256) —
    from ``start`` (θ of the first round's start; None: the seed state). Raises :class:`ReplayMismatch` at
    the first round whose recomputed state is not the agreed one."""
    state = start
    for round_, included, contributions, agreed in rounds:
        missing = [r for r, sha in enumerate(included) if sha is not None and r not in contributions]
        if missing:
            raise ReplayMismatch(f"round {round_}: the included contribution(s) of rank(s) {missing} are missing")
        state = next_state(cfg, state, contributions, included)
        got = hashlib.sha256(state).hexdigest()
        if got != agreed:
            raise ReplayMismatch(f"round {round_}: the recomputed state is {got}, the members agreed on {agreed}")
    if state is None:
        raise ReplayMismatch("no rounds to replay")
    return state


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ReplayMismatch(f"{path}: {error.strerror or error}") from None


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m template.engine.replay JOB.json", file=sys.stderr)
        return 2
    try:
        job = ReplayJob.model_validate_json(_read(argv[0]))
        rounds = [(r.round, r.included, {k: _read(v) for k, v in r.payloads.items()}, r.state) for r in job.rounds]
        state = replay(job.training, None if job.start is None else _read(job.start), rounds)
    except (ValueError, ReplayMismatch) as error:
        print(f"replay: {argv[0]}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    Path(job.out).write_bytes(state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
