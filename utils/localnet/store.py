"""The embedded chain's database: versioned storage items in one SQLite file.

Chain state is kept the way a substrate node keeps it: storage items addressed
by ``(pallet, item, key)``. Every write records the block it happened at, so a
read pinned to an older block sees that block's state (the SDK pins metagraph
reads and ``wait_for_epoch`` to block hashes). Old versions are pruned after
``HISTORY_BLOCKS``, like a pruned node.

Several processes share one file: WAL mode, ``BEGIN IMMEDIATE`` writes and a
retry loop around SQLite's busy handler, so a writer waits its turn instead of
surfacing "database is locked".
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

# PRAGMA application_id: "TSWL" — tells our file from any other SQLite file.
APPLICATION_ID = 0x5453574C
SCHEMA_VERSION = 1
DB_NAME = "chain.sqlite"
# Blocks of history kept for block-pinned reads (a pruned node keeps 256).
HISTORY_BLOCKS = 2048
# How long a writer waits for the file before giving up with a clear error.
BUSY_DEADLINE_S = 120.0

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE storage (
    module TEXT NOT NULL, item TEXT NOT NULL, key TEXT NOT NULL,
    block INTEGER NOT NULL, value TEXT,
    PRIMARY KEY (module, item, key, block)
) WITHOUT ROWID;
CREATE TABLE extrinsics (
    block INTEGER NOT NULL, idx INTEGER NOT NULL, hash TEXT NOT NULL UNIQUE,
    signer TEXT, nonce INTEGER, module TEXT NOT NULL, function TEXT NOT NULL,
    params TEXT NOT NULL, success INTEGER NOT NULL, error TEXT, events TEXT NOT NULL,
    PRIMARY KEY (block, idx)
);
CREATE TABLE shield_pool (
    hash TEXT PRIMARY KEY, signer TEXT NOT NULL, nonce INTEGER NOT NULL,
    call TEXT NOT NULL, expires INTEGER NOT NULL
);
"""


class LocalnetError(Exception):
    """The embedded chain cannot be opened or used (message names the path)."""


def resolve_db_path(path: str | os.PathLike) -> Path:
    """A localnet directory or its database file → the database file."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p / DB_NAME
    if p.exists() or p.suffix in (".sqlite", ".db"):
        return p
    return p / DB_NAME


def encode_key(params: Optional[list]) -> str:
    return json.dumps(list(params or []), separators=(",", ":"))


def key_prefix(params: Optional[list]) -> str:
    """The encoded-key prefix shared by every key that starts with ``params``."""
    if not params:
        return "["
    return encode_key(params)[:-1] + ","


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__}")


def encode_value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_default)


class Store:
    """One process's connection to the chain database. Not thread-safe: the
    substrate drives it from a single worker thread."""

    def __init__(self, db_path: Path, conn: sqlite3.Connection):
        self.path = db_path
        self.conn = conn
        self._in_write = False
        self.meta = dict(conn.execute("SELECT key, value FROM meta"))

    # -- opening -------------------------------------------------------------

    @classmethod
    def create(cls, db_path: Path, meta: dict[str, Any]) -> Store:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        if db_path.exists():
            raise LocalnetError(f"{db_path}: a chain database already exists")
        conn = _connect(db_path)
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        return cls(db_path, conn)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        db_path = resolve_db_path(path)
        if not db_path.exists():
            raise LocalnetError(
                f"{db_path}: no embedded chain here; create one with "
                f"`python -m utils.localnet init --dir {db_path.parent}`"
            )
        try:
            conn = _connect(db_path)
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise LocalnetError(
                    f"{db_path}: not a tensorswarm localnet database "
                    f"(application_id {app_id:#x}, expected {APPLICATION_ID:#x})"
                )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise LocalnetError(
                    f"{db_path}: localnet schema version {version}, this code reads "
                    f"{SCHEMA_VERSION}; re-create it with `init --force`"
                )
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise LocalnetError(f"{db_path}: chain database is corrupt ({check})")
            return cls(db_path, conn)
        except sqlite3.DatabaseError as error:
            raise LocalnetError(
                f"{db_path}: cannot read the chain database ({error}); it is truncated, corrupt or not a localnet file"
            ) from None

    def close(self) -> None:
        self.conn.close()

    # -- transactions --------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """An exclusive write transaction; waits for other writers, never
        surfaces 'database is locked' before BUSY_DEADLINE_S."""
        if self._in_write:
            yield
            return
        deadline = time.monotonic() + BUSY_DEADLINE_S
        delay = 0.005
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
                if time.monotonic() > deadline:
                    raise LocalnetError(f"{self.path}: chain database busy for {BUSY_DEADLINE_S:.0f}s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        self._in_write = True
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._in_write = False

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Nested undo point inside a write (a failed dispatch rolls back its own
        changes but keeps the nonce bump)."""
        self.conn.execute("SAVEPOINT dispatch")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO dispatch")
            self.conn.execute("RELEASE dispatch")
            raise
        self.conn.execute("RELEASE dispatch")

    # -- meta ------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # -- storage ---------------------------------------------------------------

    def get(self, module: str, item: str, params: Optional[list], block: Optional[int]) -> Any:
        sql = "SELECT value FROM storage WHERE module=? AND item=? AND key=?"
        args: list[Any] = [module, item, encode_key(params)]
        if block is not None:
            sql += " AND block<=?"
            args.append(block)
        row = self.conn.execute(sql + " ORDER BY block DESC LIMIT 1", args).fetchone()
        return json.loads(row[0]) if row and row[0] is not None else None

    def has(self, module: str, item: str, params: list, block: Optional[int]) -> bool:
        return self.get(module, item, params, block) is not None

    def scan(self, module: str, item: str, params: Optional[list], block: Optional[int]) -> list[tuple[list, Any]]:
        """Every live ``(full key, value)`` under a key prefix at ``block``."""
        prefix = key_prefix(params)
        bound = block if block is not None else 2**62
        rows = self.conn.execute(
            """SELECT s.key, s.value FROM storage s
               WHERE s.module=? AND s.item=? AND substr(s.key, 1, ?)=? AND s.block = (
                   SELECT MAX(block) FROM storage t WHERE t.module=s.module AND t.item=s.item
                   AND t.key=s.key AND t.block<=?)""",
            (module, item, len(prefix), prefix, bound),
        ).fetchall()
        out = [(json.loads(k), json.loads(v)) for k, v in rows if v is not None]
        out.sort(key=lambda kv: kv[0])
        return out

    def put(self, module: str, item: str, params: Optional[list], value: Any, block: int) -> None:
        """Write (``value`` None deletes) an item as of ``block``."""
        self.conn.execute(
            "INSERT OR REPLACE INTO storage VALUES (?, ?, ?, ?, ?)",
            (
                module,
                item,
                encode_key(params),
                block,
                None if value is None else encode_value(value),
            ),
        )

    def prune_history(self, head: int) -> None:
        """Drop versions superseded before ``head - HISTORY_BLOCKS``."""
        cutoff = head - HISTORY_BLOCKS
        if cutoff <= 0:
            return
        self.conn.execute(
            """DELETE FROM storage WHERE block < ? AND EXISTS (
                   SELECT 1 FROM storage t WHERE t.module=storage.module AND t.item=storage.item
                   AND t.key=storage.key AND t.block>storage.block AND t.block<=?)""",
            (cutoff, cutoff),
        )
        self.conn.execute("DELETE FROM extrinsics WHERE block < ?", (cutoff,))
        self.conn.execute("DELETE FROM shield_pool WHERE expires < ?", (head,))


def _connect(db_path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(db_path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn
