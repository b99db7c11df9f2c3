"""The run configuration: what every miner must agree on to train the run identically, and how the
orchestrator's members come and go. The names of the strategies, compressions and aggregators are
defined here once (:data:`STRATEGIES`, :data:`COMPRESSIONS`, :data:`AGGREGATORS`); the ``Literal`` types,
the orchestrator's flag ``choices`` and the engine's registries all follow them. A :class:`TrainingConfig`
takes the training defaults of its preset (``template.config.presets``) for the fields it is not given.

The run also names the share of contributions it tolerates from Byzantine miners
(``TrainingConfig.byzantine_fraction``); :func:`tolerated_byzantine` turns it into a count, which the
engine's aggregation and the orchestrator's membership rule both follow (see
``template.engine.aggregation`` for the guarantee it buys).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from template.config.presets import PRESETS
from template.config.strict import StrictModel as Model

STRATEGIES = ("diloco", "ddp", "fsdp")
COMPRESSIONS = ("none", "int8", "topk", "topk_int8", "sparseloco")
AGGREGATORS = ("mean", "trimmed_mean", "centered_clip")
OVERLAPS = ("none", "speculative", "delayed")

Strategy = Literal[STRATEGIES]
Compression = Literal[COMPRESSIONS]
Aggregator = Literal[AGGREGATORS]
Overlap = Literal[OVERLAPS]

DEFAULT_BYZANTINE_FRACTION = 1 / 3
# f·n may land a hair under an integer in floating point (0.29 · 100 = 28.999999999999996); a run that
# says 29% of 100 means 29 Byzantine ranks, not one fewer.
_FUZZ = 1e-9


def tolerated_byzantine(n: int, fraction: float) -> int:
    """b(n) = ⌊fraction · n⌋: how many of ``n`` accepted contributions may be Byzantine (arbitrary,
    colluding) in a run that tolerates ``fraction`` ∈ [0, 0.5). Capped at (n − 1) // 2 so that
    n ≥ 2·b + 1 always holds: the honest ones are a strict majority."""
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 0.5):
        raise ValueError(f"the Byzantine fraction must be in [0, 0.5), got {fraction!r}")
    if n == 0:
        return 0
    return min(math.floor(fraction * n + _FUZZ), (n - 1) // 2)


# sparseloco's defaults where the run leaves them unset. A contribution holds a few percent of each chunk (error
# feedback keeps the rest for later rounds): a per-coordinate trimmed mean of supports that barely overlap
# zeroes most of them, and a round carries a fraction of the update, so the outer step is larger and has no
# momentum (error feedback already accumulates); what error feedback held back decays by 0.95 a round, as in
# SparseLoCo, so a coordinate sent rarely is sent less stale. train_compare.py (tiny, 3 ranks, 1.5 % per
# chunk), held-out loss over DDP's after 20 / 80 rounds: trimmed mean at 0.8 / 0.5 1.45x / 1.49x; centered
# clip at 2.5 / 0 1.17x / 1.19x, with the decay 1.08x / 1.10x (the sweeps are in the README's Benchmarks).
SPARSE_DEFAULTS = {"aggregator": "centered_clip", "outer_lr": 2.5, "outer_momentum": 0.0, "feedback_decay": 0.95}


class TrainingConfig(Model):
    """Everything a miner needs to train the run identically to its peers.

    Fields the caller leaves out take the preset's training defaults (``seq_len``, ``batch_size``,
    ``inner_steps``, ``inner_lr``), then the defaults below, which are the tiny preset's run.
    """

    preset: str = Field(
        "tiny",
        description="model architecture (python -m template.config.presets list); also sets the defaults of "
        "seq_len, batch_size, inner_steps and inner_lr",
    )
    strategy: Strategy = Field(
        "diloco",
        description="diloco: H local steps, then robust aggregation of signed pseudo-gradients (untrusted swarms); "
        "ddp: gradients all-reduced every step; fsdp: ddp with parameters and AdamW moments sharded (trusted swarms)",
    )
    inner_steps: int = Field(20, ge=1, le=100_000, description="H: inner steps per round")
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per inner step on each rank")
    seq_len: int = Field(64, ge=8, le=8192, description="tokens (bytes) per sequence; at most the preset's context")
    vocab_size: Optional[int] = Field(
        None,
        ge=2,
        le=2**24,
        description="tokens the model embeds; unset: the preset's 256 (bytes), or a tokenized dataset's vocabulary "
        "(the orchestrator takes it from the data)",
    )
    inner_lr: float = Field(3e-3, gt=0, le=10, description="inner AdamW learning rate")
    weight_decay: float = Field(0.1, ge=0, le=10, description="inner AdamW weight decay (matrices only)")
    # DiLoCo's 0.7 / 0.9 are tuned for H = 500 and long runs; at this subnet's H and round counts the sweep in
    # the README's Benchmarks section (train_compare.py) measured 0.8 / 0.5 at 1.05x DDP's held-out loss, 0.7 / 0.9 at 1.18x.
    outer_lr: float = Field(0.8, gt=0, le=10, description="diloco: learning rate of the Nesterov outer step")
    outer_momentum: float = Field(0.5, ge=0, lt=1, description="diloco: momentum of the Nesterov outer step")
    compression: Compression = Field(
        "int8", description="diloco: how pseudo-gradients are compressed on the wire (with error feedback)"
    )
    topk_fraction: float = Field(
        0.1, gt=0, le=1, description="topk/topk_int8: fraction of values sent per tensor; sparseloco: per chunk"
    )
    feedback_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="diloco: error feedback's decay: the part of what compression held back that is carried "
        "into the next round's contribution (1 keeps it all)",
    )
    aggregator: Aggregator = Field("trimmed_mean", description="diloco: how the screened contributions are combined")
    trim_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="trimmed_mean: fraction cut from each end, per coordinate"
    )
    clip_tau: float = Field(1.0, gt=0, description="centered_clip: clipping radius")
    byzantine_fraction: float = Field(
        DEFAULT_BYZANTINE_FRACTION,
        ge=0,
        lt=0.5,
        description="share of a round's contributions that may be Byzantine (colluding, arbitrary): the "
        "aggregation trims at least floor(f·n) values per end and clips every contribution to the median norm, "
        "and generations need at least 3 ranks; 0 = a trusted run (no clip, 1 or 2 ranks allowed)",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**63 - 1,
        description="run seed: the initial weights, and every sample (a function of seed, round, hotkey, step)",
    )
    checkpoint_every: int = Field(
        1,
        ge=1,
        le=100_000,
        description="K: the agreed state is uploaded to the orchestrator after every K-th round (ranks take turns, "
        "in the background); validators audit the rounds that start from an uploaded state, and a joiner gets a "
        "newer state from the members. On slow uplinks the state dwarfs the exchange: raise K",
    )

    overlap: Overlap = Field(
        "none",
        description="diloco: what of round r runs while round r+1's inner steps run. speculative: round r+1 starts "
        "from the state this rank computes from the contributions it received, while the agreement on them, the "
        "commit, the receipt and the upload run in the background (states and audits exactly as with none; a "
        "rank whose received set the agreement overrules recomputes and retrains the round); delayed: the whole "
        "exchange too, round r+1 starting from the state before round r's outer step (one-step-delayed outer "
        "update: hides the exchange itself, at a loss cost measured in scripts/bench/README.md)",
    )

    @model_validator(mode="after")
    def _overlap_needs_diloco(self) -> TrainingConfig:
        if self.overlap != "none" and self.strategy != "diloco":
            raise ValueError(
                f"overlap needs the diloco strategy (only its rounds end in an exchange), not {self.strategy!r}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:
        # Only a dict of fields can leave some out; an unknown preset is left to _known_preset.
        if not isinstance(data, dict):
            return data
        name = data.get("preset", cls.model_fields["preset"].default)
        preset = PRESETS.get(name) if isinstance(name, str) else None
        data = data if preset is None else {**preset.run_defaults, **data}
        return {**SPARSE_DEFAULTS, **data} if data.get("compression") == "sparseloco" else data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose one of {', '.join(PRESETS)}")
        return value


class MembershipConfig(Model):
    """Who may be a member of a generation, and when a member is considered gone."""

    min_world_size: int = Field(1, ge=1, le=4096, description="members needed before a generation starts")
    max_world_size: int = Field(16, ge=1, le=4096, description="members per generation; extra joiners wait in order")
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="seconds without a heartbeat before a member is removed"
    )
    rejoin_cooldown_s: float = Field(
        10.0,
        ge=0,
        le=86400,
        description="seconds a hotkey that keeps leaving waits before rejoining (doubling each time)",
    )
    checkin_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="seconds after a generation formed before a member whose miner has not checked in is removed "
        "(so a member that never starts a rank cannot hold the others for longer)",
    )
    round_timeout_s: float = Field(
        900.0,
        gt=0,
        le=86400,
        description="seconds after a round began before a member that has not reported it (while others have) "
        "is removed, so one stalling member cannot hold the swarm",
    )
    straggler_grace_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="once a strict majority reported a round (its contributions, its new state), the rest are "
        "waited for at least this long, then the round goes on without them; a member whose state report is "
        "that late is removed (it reported in time but held every round up)",
    )
    straggler_factor: float = Field(
        1.0,
        ge=0,
        le=100,
        description="...or this many times as long as the majority took for the round, if that is longer "
        "(a member up to that much slower than the majority is always waited for)",
    )

    @model_validator(mode="after")
    def _sizes(self) -> MembershipConfig:
        if self.min_world_size > self.max_world_size:
            raise ValueError("min_world_size must not exceed max_world_size")
        return self
