"""Wire messages between tensorswarm roles, defined once and used by both the
servers (FastAPI request/response models) and the clients (httpx + these
models). Every model forbids unknown fields and bounds its values, so a
malformed message is a 422 with a reason, never a crash.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from template.data import DatasetManifest
from template.presets import PRESETS

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256, lowercase hex")]
Hotkey = Annotated[str, Field(min_length=40, max_length=64, pattern=r"^[1-9A-HJ-NP-Za-km-z]+$")]
Round = Annotated[int, Field(ge=0, le=2**40)]
GenerationId = Annotated[int, Field(ge=0, le=2**40)]

Strategy = Literal["diloco", "ddp", "fsdp"]
Compression = Literal["none", "int8", "topk", "topk_int8"]
Aggregator = Literal["mean", "trimmed_mean", "centered_clip"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


# -- run configuration ---------------------------------------------------------


class TrainingConfig(Model):
    """Everything a miner needs to train the run identically to its peers."""

    preset: str = "tiny"
    strategy: Strategy = "diloco"
    inner_steps: int = Field(20, ge=1, le=100_000, description="H: inner steps per round")
    batch_size: int = Field(8, ge=1, le=4096)
    seq_len: int = Field(64, ge=8, le=8192)
    inner_lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(0.1, ge=0, le=10)
    outer_lr: float = Field(0.7, gt=0, le=10)
    outer_momentum: float = Field(0.9, ge=0, lt=1)
    compression: Compression = "int8"
    topk_fraction: float = Field(0.1, gt=0, le=1)
    aggregator: Aggregator = "trimmed_mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5)
    clip_tau: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose one of {', '.join(PRESETS)}")
        return value


class MembershipConfig(Model):
    min_world_size: int = Field(1, ge=1, le=4096)
    max_world_size: int = Field(16, ge=1, le=4096)
    heartbeat_timeout_s: float = Field(30.0, gt=0, le=3600)
    rejoin_cooldown_s: float = Field(10.0, ge=0, le=86400)
    round_timeout_s: float = Field(
        900.0, gt=0, le=86400,
        description="a member that has not reported the round this long after it began (while others have) "
                    "is removed, so one stalling member cannot hold the swarm")

    @model_validator(mode="after")
    def _sizes(self) -> "MembershipConfig":
        if self.min_world_size > self.max_world_size:
            raise ValueError("min_world_size must not exceed max_world_size")
        return self


class RunInfo(Model):
    """`GET /v1/run`: the run's full configuration and its dataset manifest."""

    run_id: str
    training: TrainingConfig
    membership: MembershipConfig
    dataset_id: Sha256
    dataset: DatasetManifest


# -- membership ------------------------------------------------------------------


class JoinRequest(Model):
    device: Literal["cpu", "cuda"] = "cpu"
    client_version: str = Field("", max_length=64)


class Member(Model):
    rank: int = Field(ge=0)
    hotkey: str


class Assignment(Model):
    """Who trains in this generation, where its store is, and the secret prefix
    (only ever sent to members, over a signed response)."""

    generation: GenerationId
    rank: int = Field(ge=0)
    world_size: int = Field(ge=1)
    members: list[Member]
    store_host: str
    store_port: int = Field(ge=1, le=65535)
    store_prefix: str
    round: Round
    checkpoint: Optional[Sha256] = Field(None, description="state at the start of `round`; None = init from seed")
    run_id: str


class AssignmentResponse(Model):
    status: Literal["assigned", "waiting", "cooldown", "not_joined"]
    assignment: Optional[Assignment] = None
    queue_position: Optional[int] = None
    retry_after_s: float = 1.0
    detail: str = ""


class HeartbeatRequest(Model):
    generation: Optional[GenerationId] = None
    round: Optional[Round] = None
    step: Optional[int] = Field(None, ge=0, le=2**40)
    loss: Optional[float] = None
    failed: bool = Field(False, description="the member's process group for `generation` broke")
    detail: str = Field("", max_length=500)

    _loss_finite = field_validator("loss")(classmethod(lambda cls, v: _finite(v)))


class HeartbeatResponse(Model):
    generation: Optional[GenerationId]
    round: Round
    reassign: bool = Field(description="your assignment changed: fetch GET /v1/assignment")


class LeaveRequest(Model):
    reason: str = Field("", max_length=500)


class RoundReport(Model):
    """A member finished `round` of `generation`; `state` is sha256 of the new
    global state's canonical checkpoint bytes."""

    generation: GenerationId
    round: Round
    state: Sha256
    loss: Optional[float] = None

    _loss_finite = field_validator("loss")(classmethod(lambda cls, v: _finite(v)))


class RoundResponse(Model):
    accepted: bool
    round: Round = Field(description="the round to train next")
    agreed: Optional[Sha256] = Field(None, description="the agreed state for `round`, once every member reported")
    detail: str = ""


class MisbehaviorReport(Model):
    """A member dropped `accused`'s contribution in `round` (bad signature,
    malformed, non-finite, absurd norm)."""

    generation: GenerationId
    round: Round
    accused: str = Field(min_length=40, max_length=64)
    reason: str = Field(max_length=200)


class Ack(Model):
    ok: bool = True
    detail: str = ""


# -- checkpoints and status ------------------------------------------------------------


class CheckpointInfo(Model):
    sha256: Sha256
    round: Round
    size: int
    created_at: float


class RoundRecord(Model):
    """An agreed round, for validators: who trained it and which state it produced."""

    round: Round
    generation: GenerationId
    members: list[str] = Field(description="hotkeys in rank order")
    state: Sha256 = Field(description="global state after the round")
    loss: Optional[float]
    completed_at: float


class MemberStatus(Model):
    rank: Optional[int]
    hotkey: str
    uid: Optional[int]
    state: Literal["member", "waiting", "cooldown"]
    last_heartbeat_s: Optional[float]
    round: Optional[int]
    step: Optional[int]
    loss: Optional[float]
    reports: int = Field(0, description="members that reported this hotkey's contributions as bad (last 100 rounds)")


class Status(Model):
    """`GET /v1/status` (public). Never carries the store prefix."""

    run_id: str
    netuid: int
    generation: Optional[int]
    round: int
    world_size: int
    members: list[MemberStatus]
    waiting: list[MemberStatus]
    state: Optional[str] = Field(None, description="agreed global state hash at the start of `round`")
    checkpoint: Optional[CheckpointInfo]
    training: TrainingConfig
    membership: MembershipConfig
    dataset_id: str
    loss_history: list[tuple[int, float]] = Field(default_factory=list)


# -- receipts (miner -> validators, via the meta-miner) ------------------------------------


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
        default_factory=list, max_length=4096,
        description="per rank, sha256 of the validly signed contribution this rank received from it in the "
                    "exchange (None: none); validators check a miner's served contribution against its peers'")
    created_at: float

    @field_validator("losses")
    @classmethod
    def _finite_losses(cls, values: list[float]) -> list[float]:
        for v in values:
            _finite(v)
        return values


class SignedReceipt(Model):
    receipt: Receipt
    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="hotkey signature of receipt_message()")

    @staticmethod
    def message(receipt: Receipt) -> bytes:
        """Canonical bytes that are signed: sorted-key compact JSON."""
        return _canonical(receipt)


def _canonical(model: BaseModel) -> bytes:
    import json

    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
