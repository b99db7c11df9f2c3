"""The owner's rollback to the last good agreed state, and the state dir's lock.

    python -m orchestrator rollback --state-dir DIR --to-round R

On a *stopped* orchestrator, makes the state agreed after round R the current one: its checkpoint must be
stored and finite (``orchestrator.state_check``); rounds after R leave the agreed history for the
``rolled_back_rounds`` audit table, their stored checkpoints leave the served list (the files stay on
disk), pending reports are dropped, and the current generation ends, so at the next start the members are
re-assigned to round R + 1 from that state. The database change is one SQLite transaction
(:meth:`orchestrator.ledger.Ledger.roll_back_to`): a crash leaves all of it or none.

A running orchestrator holds an exclusive ``flock`` on ``DIR/orchestrator.lock`` (:func:`lock_state_dir`);
the command takes the same lock, so it refuses to edit a live orchestrator's state (whose memory would
overwrite it), and two orchestrators cannot share a state dir.
"""

from __future__ import annotations

import fcntl
import hashlib
import sys
import time
from pathlib import Path
from typing import IO, Optional

from template.config import cli as tc

from .ledger import Ledger, connect
from .state_check import is_state, state_problem

__all__ = ["LOCK_FILE", "RollbackRefused", "StateDirBusy", "lock_state_dir", "main", "roll_back"]

LOCK_FILE = "orchestrator.lock"
DB_FILE = "orchestrator.sqlite"
PROG = "python -m orchestrator rollback"


class StateDirBusy(RuntimeError):
    """Another process (a running orchestrator) holds the state dir."""


class RollbackRefused(ValueError):
    """The rollback cannot be done as asked; the message says what is missing."""


def lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Take ``state_dir``'s exclusive lock (released when the returned file is closed, or the process
    ends, even by kill -9); :class:`StateDirBusy` if another process holds it."""
    handle = open(Path(state_dir) / LOCK_FILE, "ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StateDirBusy(f"{state_dir} is in use by a running orchestrator (stop it first)") from None
    return handle


class _Offline(Ledger):
    """The ledger of a stopped orchestrator's database."""

    def __init__(self, db_path: Path):
        self.db = connect(db_path)
        self.round = int(self._kv("round", 0))


def _checked_checkpoint(checkpoint_dir: Path, sha: str) -> Optional[str]:
    """Why the stored checkpoint ``sha`` cannot be rolled back to, or None."""
    path = checkpoint_dir / sha
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"its checkpoint file {path} cannot be read ({error.strerror or error})"
    if hashlib.sha256(data).hexdigest() != sha:
        return f"its checkpoint file {path} is corrupt (sha256 mismatch)"
    if not is_state(data):
        return f"its checkpoint file {path} is not a tensorswarm state"
    problem = state_problem(data)
    return None if problem is None else f"its checkpoint file {path} is unusable: {problem}"


def roll_back(state_dir: Path, to_round: int, now: float) -> dict:
    """Roll the stopped orchestrator in ``state_dir`` back to the state agreed after round ``to_round``.
    Returns what changed; :class:`RollbackRefused` or :class:`StateDirBusy` says why not."""
    state_dir = Path(state_dir)
    db_path = state_dir / DB_FILE
    if not db_path.is_file():
        raise RollbackRefused(f"{state_dir} holds no orchestrator state ({DB_FILE} is missing)")
    lock = lock_state_dir(state_dir)
    try:
        ledger = _Offline(db_path)
        try:
            row = ledger.db.execute("SELECT state FROM rounds WHERE round=?", (to_round,)).fetchone()
            last = ledger.db.execute("SELECT MAX(round) FROM rounds").fetchone()[0]
            if row is None:
                agreed = "no round is agreed yet" if last is None else f"the agreed rounds end at {last}"
                raise RollbackRefused(f"round {to_round} is not an agreed round of this run ({agreed})")
            if to_round == last:
                raise RollbackRefused(f"round {to_round} is the latest agreed round: nothing to roll back")
            sha = row[0]
            stored = ledger.db.execute("SELECT 1 FROM checkpoints WHERE sha256=?", (sha,)).fetchone()
            kept = [r for (r,) in ledger.db.execute("SELECT round - 1 FROM checkpoints ORDER BY round")]
            if stored is None:
                raise RollbackRefused(
                    f"the state agreed after round {to_round} ({sha}) has no stored checkpoint "
                    f"(stored: after rounds {', '.join(map(str, kept)) or 'none'})"
                )
            problem = _checked_checkpoint(state_dir / "checkpoints", sha)
            if problem is not None:
                raise RollbackRefused(f"the state agreed after round {to_round} ({sha}): {problem}")
            undone = ledger.roll_back_to(to_round, now)
        finally:
            ledger.db.close()
    finally:
        lock.close()
    return {"to_round": to_round, "state": sha, "round": to_round + 1, "rolled_back": undone}


def main(argv: list[str]) -> int:
    """``python -m orchestrator rollback …``: 0 when rolled back, 2 (one line on stderr) when refused."""
    parser = tc.ArgumentParser(
        prog=PROG,
        description="Make the state agreed after round R the current one (stopped orchestrator only).",
    )
    parser.add_argument("--state-dir", type=tc.expanded_path, required=True, help="the orchestrator's --state-dir")
    parser.add_argument("--to-round", type=tc.non_negative_int, required=True, metavar="R", help="the last good round")
    args = parser.parse_args(argv)
    try:
        done = roll_back(Path(args.state_dir), args.to_round, time.time())
    except (RollbackRefused, StateDirBusy) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    undone = done["rolled_back"]
    print(
        f"rolled back to the state agreed after round {done['to_round']} ({done['state']}): the next round is "
        f"{done['round']}; rounds {undone[0]}-{undone[-1]} moved to rolled_back_rounds; the generation ended, "
        "members are re-assigned at the next start"
    )
    return 0
