"""Receipt checks: is a signed receipt about this miner's work in this round?

A receipt must be signed by the hotkey it names (:func:`template.wire.signing.verify_receipt`); name
this hotkey, run, generation, round, rank and the run's seed; start from the agreed start state and end
at the agreed end state (a miner that diverged, or replays a receipt of another round, fails here); and
carry one loss per inner step and a contribution hash. Claims of a receipt that fails are not evaluated:
they are not attributable, or not about this round. The same checks decide which peers' receipts count
as attesters (:mod:`.attestation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from template.config.run import TrainingConfig
from template.wire.receipts import SignedReceipt
from template.wire.signing import verify_receipt

__all__ = ["Expected", "receipt_problems"]


@dataclass(frozen=True)
class Expected:
    """What every receipt of the audited round must say."""

    training: TrainingConfig
    run_id: str
    generation: int
    round: int
    starts: frozenset[Optional[str]]  # start states a receipt may name (the seed init: None or its hash)
    agreed_end: str


def receipt_problems(signed: SignedReceipt, hotkey: str, rank: int, expected: Expected) -> list[str]:
    """What is wrong with ``signed`` as the receipt of ``hotkey`` at ``rank`` (empty: nothing)."""
    r = signed.receipt
    if not verify_receipt(signed):
        return ["bad receipt signature"]
    problems = []
    for what, got, want in (
        ("hotkey", r.hotkey, hotkey),
        ("run", r.run_id, expected.run_id),
        ("generation", r.generation, expected.generation),
        ("round", r.round, expected.round),
        ("rank", r.rank, rank),
        ("seed", r.seed, expected.training.seed),
    ):
        if got != want:
            problems.append(f"receipt names {what} {got!r}, expected {want!r}")
    if r.start_state not in expected.starts:
        problems.append(f"receipt start_state {r.start_state} is not the agreed start")
    if r.end_state != expected.agreed_end:
        problems.append(f"receipt end_state {r.end_state} is not the agreed end {expected.agreed_end}")
    if len(r.losses) != expected.training.inner_steps:
        problems.append(f"receipt has {len(r.losses)} losses, expected {expected.training.inner_steps}")
    if r.contribution_sha256 is None:
        problems.append("receipt names no contribution")
    return problems
