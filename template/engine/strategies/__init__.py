"""Training strategies, by the name ``TrainingConfig.strategy`` gives them: :data:`STRATEGIES`.

``diloco`` (untrusted swarms: local steps, signed compressed pseudo-gradients, robust aggregation),
``ddp`` (trusted: gradients all-reduced every step) and ``fsdp`` (trusted, memory-bound: FSDP2 sharding).
A strategy is a :class:`Strategy` subclass in its own module; adding one is that module plus its line
here (and its name among the config's accepted names).
"""

from __future__ import annotations

from template.engine.strategies.base import RoundResult, Speculation, Strategy, Trained
from template.engine.strategies.ddp import DDP
from template.engine.strategies.diloco import DiLoCo
from template.engine.strategies.fsdp import FSDP

__all__ = ["STRATEGIES", "RoundResult", "Speculation", "Strategy", "Trained"]

STRATEGIES: dict[str, type[Strategy]] = {
    "diloco": DiLoCo,
    "ddp": DDP,
    "fsdp": FSDP,
}
