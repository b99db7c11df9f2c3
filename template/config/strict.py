"""The strict base of every pydantic model the project exchanges or reads from a file: unknown fields are
refused and instances are immutable, so a typo in a run config or a message is an error, not a default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
