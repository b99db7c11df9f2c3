"""Shared field types and the base model of every wire message (strict: unknown fields refused)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Optional

from pydantic import BaseModel, Field

from template.config.strict import StrictModel

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256, lowercase hex")]
Hotkey = Annotated[str, Field(min_length=40, max_length=64, pattern=r"^[1-9A-HJ-NP-Za-km-z]+$")]
Round = Annotated[int, Field(ge=0, le=2**40)]
GenerationId = Annotated[int, Field(ge=0, le=2**40)]


class Model(StrictModel):
    """Base of every wire message: unknown fields refused, immutable."""


def finite(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def canonical_json(model: BaseModel) -> bytes:
    """Sorted-key compact JSON of a model: the bytes that are hashed or signed."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
