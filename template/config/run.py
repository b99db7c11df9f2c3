"""The run configuration: what every miner must agree on to train the run identically."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from template.config.presets import PRESETS
from template.config.strict import StrictModel as Model

Strategy = Literal["diloco", "ddp", "fsdp"]
Compression = Literal["none", "int8", "topk", "topk_int8"]
Aggregator = Literal["mean", "trimmed_mean", "centered_clip"]


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
        900.0,
        gt=0,
        le=86400,
        description="a member that has not reported the round this long after it began (while others have) "
        "is removed, so one stalling member cannot hold the swarm",
    )

    @model_validator(mode="after")
    def _sizes(self) -> MembershipConfig:
        if self.min_world_size > self.max_world_size:
            raise ValueError("min_world_size must not exceed max_world_size")
        return self
