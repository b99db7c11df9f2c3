"""The run's history for people watching it: `GET /v1/history` (public) and what validators tell the
orchestrator about the agreed states they evaluated (`POST /v1/evaluation`)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from template.wire.base import GenerationId, Model, Round, Sha256, finite

MAX_HISTORY_POINTS = 1000  # per request; page with `since`
MAX_WEIGHTS = 4096  # a subnet's uids


class HistoryPoint(Model):
    """An agreed round as the dashboard plots it."""

    round: Round
    generation: GenerationId
    members: int = Field(description="the generation's size")
    loss: Optional[float] = Field(description="mean of the members' reported training losses")
    loss_min: Optional[float]
    loss_max: Optional[float]
    completed_at: float = Field(description="when the round was agreed (unix seconds)")
    wall_s: Optional[float] = Field(
        description="from the round's start (the previous agreement or the generation's start)"
    )
    tokens: int = Field(
        description="tokens trained into the agreed state: contributions included × H × batch × seq_len"
    )
    dropped: int = Field(description="members whose contribution the agreed set left out (diloco)")
    dropped_members: list[str] = Field(default_factory=list, description="their hotkeys")
    bytes_sent: Optional[int] = Field(description="bytes the members reported sending in the round's exchange, summed")
    heldout_loss: Optional[float] = Field(
        None, description="the agreed state's held-out loss, median over the validators that evaluated it"
    )


class ValidatorView(Model):
    """A validator's latest evaluation, as it reported it."""

    hotkey: str
    round: int
    heldout_loss: Optional[float]
    weights: dict[int, float] = Field(description="uid -> the weight it last set on chain")
    at: float


class History(Model):
    """`GET /v1/history?since=&limit=`: agreed rounds from `since` on (at most `limit`), oldest first, and
    the validators' latest evaluations."""

    points: list[HistoryPoint]
    validators: list[ValidatorView]
    next_since: int = Field(description="ask with since=next_since for what came after")


class Evaluation(Model):
    """`POST /v1/evaluation` (validators with a permit): the held-out loss this validator measured on the
    state agreed after `round`, and the weights it last set."""

    round: Round
    state: Sha256
    heldout_loss: Optional[float] = Field(None, ge=0, le=1e6)
    weights: dict[int, float] = Field(default_factory=dict, max_length=MAX_WEIGHTS)

    _loss_finite = field_validator("heldout_loss")(classmethod(lambda cls, v: finite(v)))

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[int, float]) -> dict[int, float]:
        for uid, w in v.items():
            if not 0 <= uid < 2**16 or not (0.0 <= w <= 1.0):
                raise ValueError(f"weights: uid {uid} -> {w}: uids are 0..65535 and weights 0..1")
        return v
