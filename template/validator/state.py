"""What a validator keeps on disk across restarts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from template.files import atomic_write


class StateError(Exception):
    """The validator's state file is unreadable (message names the path)."""


@dataclass
class ValidatorState:
    """Everything that must survive a restart."""

    ema: dict[str, float] = field(default_factory=dict)
    last_round: int = -1  # newest agreed round processed
    seen_contributions: dict[str, list] = field(default_factory=dict)  # sha -> [hotkey, round]
    reported: dict[str, list[float]] = field(default_factory=dict)  # hotkey -> recent mean losses
    last_weights: dict[str, float] = field(default_factory=dict)  # uid (str) -> weight
    last_weights_block: Optional[int] = None
    last_audits: dict[str, dict] = field(default_factory=dict)  # hotkey -> last audit findings

    @classmethod
    def load(cls, path: Path) -> ValidatorState:
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise StateError(
                f"{path}: unreadable validator state ({error}); move it aside to start over (scores restart from zero)"
            ) from None

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), sort_keys=True).encode())
