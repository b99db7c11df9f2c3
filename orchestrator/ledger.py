"""The coordinator's SQLite file: schema, atomic writes, scalar state, and the history it serves.

:class:`~orchestrator.coordinator.Coordinator` is the state machine; this is
what it persists to. ``connect`` opens the file (WAL, ``synchronous=FULL``:
membership and rounds must survive a crash) with its tables;
:class:`Ledger` gives the coordinator its transactions and key-value scalars
(generation, round, agreed state, counters) and the read-only history queries
the HTTP API and the checkpoint store ask: which round an agreed state starts,
completed rounds with their members and losses, and misbehavior counts.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from template import wire as p

# Misbehaviour reports count for this many rounds, and are pruned after it: the table holds at most
# window × members × (members − 1) rows, whatever members file.
REPORT_WINDOW_ROUNDS = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS slots (
    hotkey TEXT PRIMARY KEY, seq INTEGER NOT NULL, joined_at REAL NOT NULL, device TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS departures (hotkey TEXT PRIMARY KEY, times TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    generation INTEGER NOT NULL, round INTEGER NOT NULL, hotkey TEXT NOT NULL,
    state TEXT NOT NULL, loss REAL, PRIMARY KEY (generation, round, hotkey)
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, state TEXT NOT NULL, generation INTEGER NOT NULL,
    completed_at REAL NOT NULL, loss REAL
);
CREATE TABLE IF NOT EXISTS generations (
    id INTEGER PRIMARY KEY, members TEXT NOT NULL, started_round INTEGER NOT NULL, started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS misbehavior (
    generation INTEGER NOT NULL, round INTEGER NOT NULL, reporter TEXT NOT NULL, accused TEXT NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (generation, round, reporter, accused)
);
CREATE INDEX IF NOT EXISTS misbehavior_by_round ON misbehavior (round);
CREATE TABLE IF NOT EXISTS checkins (
    generation INTEGER NOT NULL, hotkey TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (generation, hotkey)
);
CREATE TABLE IF NOT EXISTS stalls (
    generation INTEGER NOT NULL, round INTEGER NOT NULL, reporter TEXT NOT NULL, missing TEXT NOT NULL,
    PRIMARY KEY (generation, round, reporter)
);
CREATE TABLE IF NOT EXISTS gave_up (
    generation INTEGER NOT NULL, round INTEGER NOT NULL, reporter TEXT NOT NULL,
    PRIMARY KEY (generation, round, reporter)
);
CREATE TABLE IF NOT EXISTS disputes (
    generation INTEGER NOT NULL, reporter TEXT NOT NULL, accused TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (generation, reporter, accused)
);
CREATE INDEX IF NOT EXISTS disputes_by_time ON disputes (at);
CREATE TABLE IF NOT EXISTS evictions (hotkey TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS evictions_by_hotkey ON evictions (hotkey);
CREATE TABLE IF NOT EXISTS state_sizes (state TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    sha256 TEXT PRIMARY KEY, round INTEGER NOT NULL, size INTEGER NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS payloads (sha256 TEXT PRIMARY KEY, round INTEGER NOT NULL, rank INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS round_stats (
    round INTEGER PRIMARY KEY, loss_min REAL, loss_max REAL, started_at REAL, members INTEGER NOT NULL,
    bytes_sent INTEGER, included INTEGER, dropped TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS evaluations (
    validator TEXT NOT NULL, round INTEGER NOT NULL, state TEXT NOT NULL, heldout_loss REAL, weights TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (validator, round)
);
CREATE INDEX IF NOT EXISTS evaluations_by_round ON evaluations (round);
"""


def connect(db_path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the coordinator's database with its schema."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # membership and rounds must survive a crash
    db.executescript(SCHEMA)
    return db


class Ledger:
    """Persistence for the coordinator, mixed into it: needs ``self.db`` (from
    :func:`connect`) and ``self.round`` (the round in progress)."""

    db: sqlite3.Connection
    round: int

    @contextlib.contextmanager
    def _txn(self):
        """One atomic write: a kill -9 leaves all of a decision or none of it."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _kv(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def _set_kv(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, json.dumps(value)))

    # -- history -------------------------------------------------------------------

    def _commit_round(
        self,
        gen_id: int,
        agreed: str,
        now: float,
        started: float,
        size: Optional[int],
        sent: Optional[int],
        members: int,
        included: Optional[int],
        dropped: Sequence[str] = (),
    ) -> None:
        """Record the current round as agreed on ``agreed`` (one transaction): the round, its statistics for
        the history, the next round's start, and the pruning that the end of a round allows."""
        losses = [
            l
            for (l,) in self.db.execute(
                "SELECT loss FROM reports WHERE generation=? AND round=? AND loss IS NOT NULL", (gen_id, self.round)
            )
        ]
        mean = sum(losses) / len(losses) if losses else None
        with self._txn():
            self.db.execute("INSERT OR REPLACE INTO rounds VALUES (?,?,?,?,?)", (self.round, agreed, gen_id, now, mean))
            self.db.execute(
                "INSERT OR REPLACE INTO round_stats VALUES (?,?,?,?,?,?,?,?)",
                (self.round, min(losses, default=None), max(losses, default=None), started, members, sent, included)
                + (json.dumps(list(dropped)),),
            )
            self._set_kv("round", self.round + 1)
            self._set_kv("state", agreed)
            self._set_kv("round_started", now)
            self.db.execute("DELETE FROM reports WHERE round < ?", (self.round,))
            self.db.execute("DELETE FROM misbehavior WHERE round < ?", (self.round + 1 - REPORT_WINDOW_ROUNDS,))
            if size is not None:
                self.db.execute("INSERT OR REPLACE INTO state_sizes VALUES (?,?)", (agreed, size))

    def misbehavior_counts(self, window_rounds: int = REPORT_WINDOW_ROUNDS) -> dict[str, int]:
        """Distinct reporters per accused hotkey over the recent rounds (an index range, not a scan)."""
        rows = self.db.execute(
            "SELECT accused, COUNT(DISTINCT reporter) FROM misbehavior WHERE round >= ? GROUP BY accused",
            (self.round - window_rounds,),
        )
        return {hk: int(n) for hk, n in rows}

    def state_size(self, sha: str) -> Optional[int]:
        """The size in bytes the members said an agreed state has, or None when nobody said."""
        row = self.db.execute("SELECT size FROM state_sizes WHERE state=?", (sha,)).fetchone()
        return int(row[0]) if row else None

    def is_known_state(self, sha: str) -> Optional[int]:
        """The round an agreed state starts, or None: only states the members agreed on may be uploaded."""
        row = self.db.execute("SELECT round FROM rounds WHERE state=? ORDER BY round DESC", (sha,)).fetchone()
        return int(row[0]) + 1 if row else None

    def round_records(self, since: int, limit: int) -> list[p.RoundRecord]:
        rows = self.db.execute(
            """SELECT r.round, r.generation, g.members, r.state, r.loss, r.completed_at
               FROM rounds r JOIN generations g ON g.id = r.generation
               WHERE r.round >= ? ORDER BY r.round LIMIT ?""",
            (since, limit),
        )
        return [
            p.RoundRecord(
                round=r,
                generation=g,
                members=json.loads(m),
                state=st,
                loss=l,
                completed_at=t,
                included=self.included_of(g, r),  # the agreed contribution set (orchestrator.contributions)
            )
            for r, g, m, st, l, t in rows.fetchall()
        ]

    def loss_history(self, limit: int = 500) -> list[tuple[int, float]]:
        rows = self.db.execute(
            "SELECT round, loss FROM rounds WHERE loss IS NOT NULL ORDER BY round DESC LIMIT ?", (limit,)
        )
        return sorted((int(r), float(l)) for r, l in rows)

    # -- the owner's rollback (orchestrator.rollback) ------------------------------------------

    def roll_back_to(self, to_round: int, now: float) -> list[int]:
        """Make the state agreed after round ``to_round`` the current one, in one transaction: later rounds
        move from ``rounds`` to the ``rolled_back_rounds`` audit table (with when and to which round),
        their checkpoints leave the served list (files stay on disk), pending reports are dropped, the
        current generation ends and round ``to_round + 1`` starts from that state. Returns the rounds
        undone. The caller checks that the round is agreed and its checkpoint stored and finite."""
        with self._txn():
            self.db.execute(
                """CREATE TABLE IF NOT EXISTS rolled_back_rounds (
                    round INTEGER NOT NULL, state TEXT NOT NULL, generation INTEGER NOT NULL,
                    completed_at REAL NOT NULL, loss REAL, rolled_back_at REAL NOT NULL, to_round INTEGER NOT NULL,
                    PRIMARY KEY (round, rolled_back_at))"""
            )
            row = self.db.execute("SELECT state FROM rounds WHERE round=?", (to_round,)).fetchone()
            if row is None:
                raise LookupError(f"round {to_round} is not an agreed round")
            undone = [
                r for (r,) in self.db.execute("SELECT round FROM rounds WHERE round > ? ORDER BY round", (to_round,))
            ]
            self.db.execute(
                """INSERT INTO rolled_back_rounds
                   SELECT round, state, generation, completed_at, loss, ?, ? FROM rounds WHERE round > ?""",
                (now, to_round, to_round),
            )
            self.db.execute("DELETE FROM rounds WHERE round > ?", (to_round,))
            self.db.execute("DELETE FROM round_stats WHERE round > ?", (to_round,))
            # A checkpoint row's round is the round its state starts (agreed round + 1).
            self.db.execute("DELETE FROM checkpoints WHERE round > ?", (to_round + 1,))
            self.db.execute("DELETE FROM reports WHERE round > ?", (to_round,))
            self._set_kv("round", to_round + 1)
            self._set_kv("state", row[0])
            self._set_kv("generation", None)
            self._set_kv("round_started", now)
        self.round = to_round + 1
        return undone
