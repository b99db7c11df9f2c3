"""What a validator keeps on disk across restarts: its state file (:class:`ValidatorState`: scores,
the contributions and update sketches it has seen, its last audits and weights) and its audit secret
(:func:`load_audit_secret`: the key of every random choice of its audits, see
:mod:`template.validator.draw`)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from template.files import atomic_write
from template.validator.checks.copies import decode_traces
from template.validator.draw import SECRET_BYTES

__all__ = ["StateError", "ValidatorState", "load_audit_secret"]


class StateError(Exception):
    """The validator's state file or secret is unreadable (message names the path)."""


@dataclass
class ValidatorState:
    """Everything that must survive a restart."""

    ema: dict[str, float] = field(default_factory=dict)
    last_round: int = -1  # newest agreed round processed
    last_state: str = ""  # its agreed state: if the orchestrator's record of that round differs, history moved
    seen_contributions: dict[str, list] = field(default_factory=dict)  # sha -> [hotkey, round]
    reported: dict[str, list[float]] = field(default_factory=dict)  # hotkey -> recent mean losses
    last_weights: dict[str, float] = field(default_factory=dict)  # uid (str) -> weight
    last_weights_block: Optional[int] = None
    last_audits: dict[str, dict] = field(default_factory=dict)  # hotkey -> last audit findings
    # The last transition check (checks/transition.py): {"round", "verified", "problem"}; rounds verified.
    last_transition: dict = field(default_factory=dict)
    transitions_verified: int = 0
    rounds_audited: int = 0  # rounds whose audits were scored (the validator audits the newest round it sees)
    # Sketches of the updates audited in recent rounds, for the near-replay check: rows
    # [round, hotkey, base64 float16 sketch] (template.validator.checks.copies.encode_traces), bounded
    # by HISTORY_ROUNDS and HISTORY_MAX; valid only with the secret whose fingerprint is sketch_key.
    sketches: list[list] = field(default_factory=list)
    sketch_key: str = ""
    # hotkey -> [S, V]: the decayed sum of its specificities and of their squared standard errors, the
    # evidence of work a miner must keep up to be paid (template.validator.scoring.update_evidence).
    evidence: dict[str, list[float]] = field(default_factory=dict)
    # hotkey -> its balances of the last audits (checks/usefulness.py: skew is judged over a window).
    balances: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ValidatorState:
        if not path.exists():
            return cls()
        try:
            state = cls(**json.loads(path.read_text()))
            decode_traces(state.sketches)
            return state
        except (OSError, ValueError, TypeError) as error:
            raise StateError(
                f"{path}: unreadable validator state ({error}); move it aside to start over (scores restart from zero)"
            ) from None

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), sort_keys=True).encode())


def load_audit_secret(path: Path) -> bytes:
    """The validator's audit secret: :data:`~template.validator.draw.SECRET_BYTES` random bytes kept in
    ``path``, created on first start (``os.urandom``, mode 0600, never overwritten). Raises
    :class:`StateError` naming the path when it exists but cannot be read or is not exactly that many
    bytes: a validator must not silently start auditing with a new secret (its sketches of earlier
    rounds would stop matching) nor with a guessable one."""
    path = Path(path)
    if not os.path.lexists(path):
        _create_secret(path)
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            raise StateError(f"{path}: the audit secret is not a regular file; move it aside")
        data = path.read_bytes()
    except OSError as error:
        raise StateError(f"{path}: unreadable audit secret ({error.strerror or error})") from None
    if len(data) != SECRET_BYTES:
        raise StateError(
            f"{path}: corrupt audit secret ({len(data)} bytes, expected {SECRET_BYTES}); move it aside to "
            "start with a new one (the sketches of earlier rounds' updates are then dropped)"
        )
    return data


def _create_secret(path: Path) -> None:
    # Written to a private temp file, then hard-linked into place: the link fails if another process
    # created the secret meanwhile (then that one is read), and a crash never leaves a partial secret.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(SECRET_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    except OSError as error:
        raise StateError(f"{path}: cannot create the audit secret ({error.strerror or error})") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
