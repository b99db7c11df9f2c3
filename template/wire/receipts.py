"""Receipts: what a miner claims about one round, signed with its hotkey (served to validators)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from template.wire.base import GenerationId, Model, Round, Sha256, canonical_json, finite


class Receipt(Model):
    """What a miner claims about one round; signed with its hotkey. A validator
    can recompute the sample assignment from (seed, round, hotkey), recompute
    losses at `start_state`, and check the contribution against its hash."""

    hotkey: str
    run_id: str
    generation: GenerationId
    round: Round
    rank: int = Field(ge=0)
    start_state: Optional[Sha256] = Field(description="global state the round started from (None: seed init)")
    end_state: Sha256 = Field(description="global state after the round")
    seed: int = Field(ge=0, description="run seed; samples = f(seed, round, hotkey, step)")
    losses: list[float] = Field(max_length=100_000)
    contribution_sha256: Optional[Sha256] = None
    contribution_norm: Optional[float] = None
    contribution_bytes: int = Field(0, ge=0)
    dropped: dict[int, str] = Field(default_factory=dict, description="peers this rank dropped, by rank")
    received_sha256: list[Optional[Sha256]] = Field(
        default_factory=list,
        max_length=4096,
        description="per rank, sha256 of the validly signed contribution this rank received from it in the "
        "exchange (None: none); validators check a miner's served contribution against its peers'",
    )
    created_at: float

    @field_validator("losses")
    @classmethod
    def _finite_losses(cls, values: list[float]) -> list[float]:
        for v in values:
            finite(v)
        return values


class SignedReceipt(Model):
    receipt: Receipt
    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="hotkey signature of receipt_message()")

    @staticmethod
    def message(receipt: Receipt) -> bytes:
        """Canonical bytes that are signed: sorted-key compact JSON."""
        return canonical_json(receipt)
