"""Messages of the meta-miner's API."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from template.wire.base import Model


class MinerStatus(Model):
    hotkey: str
    generation: Optional[int] = None
    rank: Optional[int] = None
    world_size: Optional[int] = None
    round: Optional[int] = None
    step: Optional[int] = None
    loss: Optional[float] = None
    restarts: int = 0
    state: str = Field("starting", description="starting | waiting | training | restarting | stopped")
