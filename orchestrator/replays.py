"""Agreed states the orchestrator does not hold, rebuilt from the last checkpoint before them and the agreed
contributions since (diloco runs).

Miners upload an agreed state only every ``checkpoint_every`` rounds (it is the largest thing they send), and
each rank uploads its own contribution of every round (``PUT /v1/contributions/{generation}/{round}/{rank}``,
in the background): on a sparse exchange that is hundreds of times smaller than the state. A request for a
state the orchestrator lacks (a validator's audit, a joiner's catch-up) is answered by replaying the rounds
since the newest checkpoint at or before it — ``python -m template.engine.replay`` in a separate process, so
the orchestrator imports no torch — and the last few rebuilt states are kept and served like checkpoints.
Every replayed step is checked against the state the members agreed on.

Bounds: a payload is stored only if its sha256 is the round's agreed contribution of that rank (exact bytes,
at most the state's size, announced before the body is read); payloads older than the oldest checkpoint
kept are deleted with it; a replay covers at most ``MAX_REPLAY_ROUNDS`` rounds, runs one at a time and at
most ``REPLAY_TIMEOUT_S``; a request that finds a replay running is refused at once, not queued.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

from template import wire as p

log = logging.getLogger(__name__)

MAX_REPLAY_ROUNDS = 128  # rounds replayed for one state (checkpoint_every beyond it: those states stay unrebuilt)
REPLAY_TIMEOUT_S = 300.0
BUSY = "another replay is running: retry shortly"  # answered 503 with Retry-After
REBUILT_KEEP = 4  # rebuilt states kept to serve (a validator's audit and its transition check need two)
REPLAY_MODULE = "template.engine.replay"  # run as a process: the orchestrator trains nothing itself


class NeverWanted(LookupError):
    """A contribution the orchestrator will never take (answered 410: an uploader gives it up at once)."""


class Payloads:
    """The agreed contributions on disk (``state_dir/payloads/<sha256>``, indexed in the ``payloads``
    table) and the replays that use them. Methods that touch files block: call them off the event loop."""

    def __init__(self, service):
        self.svc = service
        self.dir = service.settings.state_dir / "payloads"
        self.dir.mkdir(exist_ok=True)
        for partial in self.dir.glob(".upload.*.tmp"):
            partial.unlink(missing_ok=True)
        self.replaying = threading.Lock()
        self.rebuilt = self.dir / "rebuilt"  # the last REBUILT_KEEP rebuilt states, served like checkpoints
        self.rebuilt.mkdir(exist_ok=True)

    # -- uploads ---------------------------------------------------------------------------------

    def expected(self, round_: int, rank: int) -> tuple[str, int]:
        """(the agreed sha256 of ``rank``'s contribution in ``round_``, the most bytes it may have).
        ``LookupError`` with the reason when there is none to take (:class:`NeverWanted` when there never
        will be: the uploader must not retry)."""
        c = self.svc.coordinator
        if self.svc.settings.training.strategy != "diloco":
            raise NeverWanted("only diloco runs have contributions")
        records = c.round_records(round_, 1)
        if not records or records[0].round != round_:
            raise LookupError(f"round {round_} is not agreed")
        record = records[0]
        if record.included is None or not 0 <= rank < len(record.included) or record.included[rank] is None:
            raise NeverWanted(f"round {round_} aggregated no contribution of rank {rank}")
        newest = c.round
        if round_ < newest - MAX_REPLAY_ROUNDS:
            raise NeverWanted(f"round {round_} is too old to be replayed")
        size = c.state_size(record.state) or self.svc.settings.max_checkpoint_bytes
        return record.included[rank], size

    def has(self, sha: str) -> bool:
        row = self.svc.coordinator.db.execute("SELECT 1 FROM payloads WHERE sha256=?", (sha,)).fetchone()
        return row is not None and (self.dir / sha).exists()

    def store(self, round_: int, rank: int, upload) -> None:
        """Keep a streamed upload as ``rank``'s agreed contribution of ``round_`` (``ValueError``: other bytes)."""
        sha, _ = self.expected(round_, rank)
        if upload.sha256() != sha:
            raise ValueError("body is not the contribution the round agreed on")
        upload.keep_as(self.dir / sha)
        with self.svc.lock:
            self.svc.coordinator.db.execute("INSERT OR IGNORE INTO payloads VALUES (?,?,?)", (sha, round_, rank))

    def prune(self, oldest_checkpoint_round: int) -> None:
        """Delete the payloads of rounds before the oldest checkpoint kept: no replay starts before it."""
        db = self.svc.coordinator.db
        with self.svc.lock:
            rows = db.execute("SELECT sha256 FROM payloads WHERE round < ?", (oldest_checkpoint_round,)).fetchall()
            db.execute("DELETE FROM payloads WHERE round < ?", (oldest_checkpoint_round,))
        for (sha,) in rows:
            (self.dir / sha).unlink(missing_ok=True)

    # -- replays ---------------------------------------------------------------------------------

    def open_rebuilt(self, sha: str):
        """(its CheckpointInfo, the open file) of a rebuilt state still kept, or None."""
        try:
            f = open(self.rebuilt / sha, "rb")
        except OSError:
            return None
        st = os.fstat(f.fileno())
        with self.svc.lock:
            round_ = self.svc.coordinator.is_known_state(sha)
        return p.CheckpointInfo(sha256=sha, round=round_ or 0, size=st.st_size, created_at=st.st_mtime), f

    def rebuild(self, sha: str) -> Optional[str]:
        """Rebuild the agreed state ``sha`` and keep it as a checkpoint. Returns None when done, else why not
        (not an agreed state, too far from a checkpoint, a payload missing, the replay failed)."""
        svc, c = self.svc, self.svc.coordinator
        if svc.settings.training.strategy != "diloco":
            return "only diloco states can be replayed"
        with svc.lock:
            target = c.is_known_state(sha)  # the round this state starts
            if target is None:
                return "no round of this run produced that state"
            row = c.db.execute(
                "SELECT sha256, round FROM checkpoints WHERE round <= ? ORDER BY round DESC LIMIT 1", (target,)
            ).fetchone()
            base, base_round = (row[0], int(row[1])) if row else (None, 0)
            if target - base_round > MAX_REPLAY_ROUNDS:
                return (
                    f"{target - base_round} rounds after the newest checkpoint before it (at most {MAX_REPLAY_ROUNDS})"
                )
            records = c.round_records(base_round, target - base_round)
        if [r.round for r in records] != list(range(base_round, target)):
            return "a round between the checkpoint and this state is not on record"
        if base is not None and not svc.has_checkpoint(base):
            return f"checkpoint {base[:12]} is gone"
        rounds = []
        for r in records:
            if r.included is None:
                return f"round {r.round} has no agreed contribution set"
            payloads = {rank: str(self.dir / s) for rank, s in enumerate(r.included) if s is not None}
            absent = [rank for rank, s in enumerate(r.included) if s is not None and not self.has(s)]
            if absent:
                return f"round {r.round}: the contribution(s) of rank(s) {absent} were not uploaded"
            rounds.append({"round": r.round, "included": r.included, "payloads": payloads, "state": r.state})
        # Never wait for another replay: a waiting request holds a server thread, and many registered hotkeys
        # asking for old states could hold them all. The caller retries (validators do, every step).
        if not self.replaying.acquire(blocking=False):
            return BUSY
        try:
            if svc.has_checkpoint(sha) or (self.rebuilt / sha).exists():
                return None
            return self._run(sha, base, rounds)
        finally:
            self.replaying.release()

    def _run(self, sha: str, base: Optional[str], rounds: list[dict]) -> Optional[str]:
        svc = self.svc
        with tempfile.TemporaryDirectory(dir=self.dir, prefix=".replay.") as tmp:
            job = Path(tmp) / "job.json"
            out = Path(tmp) / "state"
            # Hard links: a checkpoint or payload pruned while the replay runs stays readable to it.
            try:
                start = None if base is None else _pin(svc.checkpoint_dir / base, Path(tmp))
                for r in rounds:
                    r["payloads"] = {rank: _pin(Path(path), Path(tmp)) for rank, path in r["payloads"].items()}
            except OSError as error:
                return f"{Path(error.filename or '').name[:12]} was pruned before the replay started"
            job.write_text(
                json.dumps(
                    {
                        "training": svc.settings.training.model_dump(mode="json"),
                        "start": start,
                        "rounds": rounds,
                        "out": str(out),
                    }
                )
            )
            try:
                done = subprocess.run(
                    [sys.executable, "-m", REPLAY_MODULE, str(job)],
                    capture_output=True,
                    text=True,
                    timeout=REPLAY_TIMEOUT_S,
                    cwd=str(Path(__file__).resolve().parent.parent),
                )
            except subprocess.TimeoutExpired:
                return f"the replay ran past {REPLAY_TIMEOUT_S:.0f}s"
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                log.error("replay of state %s failed: %s", sha[:12], why)
                return why
            if hashlib.sha256(out.read_bytes()).hexdigest() != sha:  # replay checked it; so does the server
                return "the replay wrote other bytes than the agreed state"
            os.replace(out, self.rebuilt / sha)
        kept = sorted(self.rebuilt.iterdir(), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in kept[REBUILT_KEEP:]:
            old.unlink(missing_ok=True)
        log.info("rebuilt state %s from %d round(s) of agreed contributions", sha[:12], len(rounds))
        return None


def _pin(path: Path, directory: Path) -> str:
    """A hard link to ``path`` in ``directory`` (same file system: both live in the state dir)."""
    pinned = directory / path.name
    if not pinned.exists():
        os.link(path, pinned)
    return str(pinned)
