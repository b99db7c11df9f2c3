"""btauth/1 signed HTTP for every tensorswarm role, server and client side.

``bt.http_auth`` proves *who* sent a request (hotkey signature bound to this
receiver, body, method and target, fresh, not replayed). It does no chain
check, so authorization lives here, against a cached metagraph:

* :class:`SqliteNonceStore` — replay protection shared by every server process
  on a host (the SDK default is per process).
* :class:`MetagraphCache` — the subnet's neurons, refreshed in the background;
  misses trigger a rate-limited refresh so new registrations get in quickly.
* :class:`Authenticator` — FastAPI dependencies ``signed`` / ``registered`` /
  ``validator``: 401 for authentication failures, 403 for authorization ones.
* :class:`BtAuth` — an ``httpx.Auth`` that signs each outgoing request.

Server::

    auth = Authenticator(my_hotkey, MetagraphCache(lambda: client_for(ep), netuid),
                         nonce_store=SqliteNonceStore(state_dir / "nonces.sqlite"))
    @app.post("/v1/work")
    async def work(caller: AuthedCaller = Depends(auth.registered)): ...

Client::

    httpx.Client(auth=BtAuth(wallet, server_hotkey)).post(url, content=body)
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import httpx
from bittensor import http_auth
from bittensor.signing import resolve_signer
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from template.chain.metagraph import MetagraphCache, Neuron
from template.net.gate import DIGEST_HEADER, content_digest, scope_target, verify_digest

log = logging.getLogger(__name__)

__all__ = [
    "AuthedCaller",
    "Authenticator",
    "BtAuth",
    "MetagraphCache",
    "Neuron",
    "NonceStoreUnavailable",
    "SqliteNonceStore",
    "request_target",
]

# http_auth accepts nonces up to max_age old and allowed_skew ahead; a stored
# nonce only matters while it could still pass that check.
_FRESHNESS_WINDOW_S = http_auth.DEFAULT_MAX_AGE + http_auth.DEFAULT_ALLOWED_SKEW


# --------------------------------------------------------------------------- #
# Replay protection shared across processes
# --------------------------------------------------------------------------- #


class NonceStoreUnavailable(RuntimeError):
    """The shared nonce store could not answer in time (mapped to 503: failing
    open would allow replays, failing with 401 would blame the caller)."""


class SqliteNonceStore:
    """A ``bt.http_auth.NonceStore`` in a SQLite file, for several server
    processes (or hosts on one filesystem with working locks) sharing replay
    protection.

    One ``INSERT OR IGNORE`` per request decides atomically across processes.
    WAL mode keeps readers and the single writer from blocking each other;
    lock contention is absorbed by SQLite's busy timeout plus our own retries,
    so callers never see "database is locked" — after ``lock_timeout_s`` they
    get :class:`NonceStoreUnavailable`. Rows are pruned by nonce value (a
    nanosecond timestamp) once older than ``retention`` seconds.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        *,
        retention: float = 2 * _FRESHNESS_WINDOW_S,
        lock_timeout_s: float = 10.0,
        prune_interval_s: float = 5.0,
    ):
        # http_auth.verify refuses a store whose `retention` is shorter than its
        # window (replays in the gap would pass); the attribute is the contract.
        self.retention = float(retention)
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.prune_interval_s = prune_interval_s
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        self._pid: Optional[int] = None
        self._last_prune = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._retry(self._connection)  # create the schema now: fail fast on a bad path

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross fork(): reopen in a child process.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        conn = sqlite3.connect(
            str(self.path),
            timeout=min(self.lock_timeout_s, 5.0),  # busy timeout; _retry covers the rest
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=False,  # guarded by self._lock; verify may run in a threadpool
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # Nonces need no power-loss durability; WAL+NORMAL is crash-safe.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS nonces ("
                " hotkey TEXT NOT NULL, nonce INTEGER NOT NULL,"
                " PRIMARY KEY (hotkey, nonce)) WITHOUT ROWID"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS nonces_by_nonce ON nonces (nonce)")
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _retry(self, fn):
        """Run ``fn`` until SQLite stops reporting lock contention."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" not in text and "busy" not in text:
                    raise
                if time.monotonic() >= deadline:
                    raise NonceStoreUnavailable(
                        f"nonce store {self.path} stayed locked for {self.lock_timeout_s:g}s"
                    ) from None
                # Some paths (e.g. switching to WAL) return BUSY without
                # invoking the busy handler: back off with jitter ourselves.
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.1)

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        nonce_ns = int(nonce_ns)
        if not -(2**63) <= nonce_ns < 2**63:
            # Unrepresentable in SQLite; verify() already rejects such nonces as stale.
            return False

        def insert() -> bool:
            conn = self._connection()
            cur = conn.execute(
                "INSERT OR IGNORE INTO nonces (hotkey, nonce) VALUES (?, ?)",
                (hotkey_ss58, nonce_ns),
            )
            return cur.rowcount == 1

        with self._lock:
            fresh = self._retry(insert)
            now = time.monotonic()
            if now - self._last_prune >= self.prune_interval_s:
                self._last_prune = now
                cutoff = time.time_ns() - int(self.retention * 1e9)
                try:
                    self._retry(lambda: self._connection().execute("DELETE FROM nonces WHERE nonce < ?", (cutoff,)))
                except NonceStoreUnavailable:
                    pass  # pruning is housekeeping; the next interval retries
            return fresh

    def __len__(self) -> int:
        with self._lock:
            return self._retry(lambda: self._connection().execute("SELECT COUNT(*) FROM nonces").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------- #
# Metagraph cache
# --------------------------------------------------------------------------- #

# --------------------------------------------------------------------------- #
# Server side
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class AuthedCaller:
    """An authenticated (and, per dependency, authorized) caller."""

    hotkey: str
    uid: Optional[int]  # None when unknown to the metagraph (``signed`` only)
    validator_permit: bool
    nonce: int


def request_target(request: Request) -> str:
    """The request target exactly as the client sent it (:func:`template.net.gate.scope_target`)."""
    return scope_target(request.scope)


class Authenticator:
    """Verifies btauth/1 requests addressed to ``self_hotkey_ss58`` and
    authorizes them against ``metagraph``.

    Use the bound methods as FastAPI dependencies: ``Depends(auth.signed)``
    (any valid signature), ``Depends(auth.registered)`` (hotkey registered on
    the netuid), ``Depends(auth.validator)`` (registered with a validator
    permit). Each returns an :class:`AuthedCaller` and also stores it on
    ``request.state.caller``. Failures: 401 (authentication, detail = the SDK's
    reason), 403 (authorization), 503 (metagraph or nonce store unavailable).
    """

    def __init__(
        self,
        self_hotkey_ss58: str,
        metagraph: Optional[MetagraphCache],
        nonce_store: Optional[http_auth.NonceStore] = None,
        netuid: Optional[int] = None,
        *,
        offload: bool = False,
    ):
        self.self_hotkey_ss58 = self_hotkey_ss58
        self.metagraph = metagraph
        # Our own store rather than the SDK's process-global default, so two
        # servers in one process (tests) don't share state by accident.
        self.nonce_store = nonce_store if nonce_store is not None else http_auth.InMemoryNonceStore()
        if netuid is None and metagraph is not None:
            netuid = metagraph.netuid
        self.netuid = netuid
        # Verify inline: signature ~45 µs + a SQLite insert ~20 µs when this process
        # is the store's only writer. A thread-pool hop per request cost ~460 µs
        # and the whole p99 tail under load (scripts/bench/orchestrator_load.py).
        # offload=True is for nonce files shared by several busy processes, where
        # an insert may wait on another writer's lock.
        self._offload = offload

    async def verify(self, request: Request) -> http_auth.Caller:
        """Authenticate: raises ``HTTPException(401)`` with the SDK's safe reason."""
        body = await request.body()

        def check() -> http_auth.Caller:
            return http_auth.verify(
                request.headers,
                body,
                method=request.method,
                path=request_target(request),
                self_hotkey_ss58=self.self_hotkey_ss58,
                nonce_store=self.nonce_store,
            )

        try:
            return await run_in_threadpool(check) if self._offload else check()
        except http_auth.AuthError as exc:
            raise HTTPException(
                status_code=401, detail=str(exc), headers={"WWW-Authenticate": http_auth.PROTOCOL}
            ) from None
        except NonceStoreUnavailable as exc:
            log.error("%s", exc)
            raise HTTPException(status_code=503, detail="replay protection temporarily unavailable") from None

    # -- header-first authentication for template.net.gate.SignedGate --------------------------------

    def verify_headers(self, headers, body_sha256: str, method: str, target: str) -> http_auth.Caller:
        """The gate's ``verify``: :func:`template.net.gate.verify_digest` against this server's hotkey
        and nonce store (503 when the store cannot answer)."""
        try:
            return verify_digest(
                headers,
                body_sha256,
                method=method,
                path=target,
                self_hotkey_ss58=self.self_hotkey_ss58,
                nonce_store=self.nonce_store,
            )
        except NonceStoreUnavailable as exc:
            log.error("%s", exc)
            raise HTTPException(status_code=503, detail="replay protection temporarily unavailable") from None

    async def admit_registered(self, caller: http_auth.Caller) -> AuthedCaller:
        """The gate's ``admit``: the caller's hotkey must be registered (403 otherwise)."""
        neuron = await self._ensure(caller.hotkey_ss58, require_permit=False)
        if neuron is None:
            raise HTTPException(
                status_code=403,
                detail=f"hotkey {caller.hotkey_ss58} is not registered on netuid {self.netuid}",
            )
        return AuthedCaller(
            hotkey=caller.hotkey_ss58,
            uid=neuron.uid,
            validator_permit=bool(neuron.validator_permit),
            nonce=caller.nonce_ns,
        )

    # -- FastAPI dependencies ----------------------------------------------------------------------

    async def signed(self, request: Request) -> AuthedCaller:
        gated = getattr(request.state, "caller", None)
        if gated is not None:
            return gated
        caller = await self.verify(request)
        neuron = self.metagraph.lookup(caller.hotkey_ss58) if self.metagraph is not None else None
        return self._authed(request, caller, neuron)

    async def registered(self, request: Request) -> AuthedCaller:
        gated = getattr(request.state, "caller", None)
        if gated is not None:  # SignedGate authenticated it and checked the registration
            return gated
        caller = await self.verify(request)
        neuron = await self._ensure(caller.hotkey_ss58, require_permit=False)
        if neuron is None:
            raise HTTPException(
                status_code=403,
                detail=f"hotkey {caller.hotkey_ss58} is not registered on netuid {self.netuid}",
            )
        return self._authed(request, caller, neuron)

    async def validator(self, request: Request) -> AuthedCaller:
        gated = getattr(request.state, "caller", None)
        caller = None if gated is not None else await self.verify(request)
        hotkey = gated.hotkey if gated is not None else caller.hotkey_ss58
        neuron = await self._ensure(hotkey, require_permit=True)
        if neuron is None:
            raise HTTPException(status_code=403, detail=f"hotkey {hotkey} is not registered on netuid {self.netuid}")
        if not neuron.validator_permit:
            raise HTTPException(
                status_code=403, detail=f"hotkey {hotkey} has no validator permit on netuid {self.netuid}"
            )
        if gated is not None:
            return AuthedCaller(hotkey=hotkey, uid=neuron.uid, validator_permit=True, nonce=gated.nonce)
        return self._authed(request, caller, neuron)

    async def _ensure(self, hotkey: str, *, require_permit: bool) -> Optional[Neuron]:
        if self.metagraph is None:
            raise RuntimeError("Authenticator has no MetagraphCache: only `signed` is usable")
        neuron = await self.metagraph.ensure(hotkey, require_permit=require_permit)
        if neuron is None and not self.metagraph.loaded:
            # We don't know who is registered: say so instead of blaming the caller.
            raise HTTPException(status_code=503, detail="metagraph not available yet; retry shortly")
        return neuron

    @staticmethod
    def _authed(request: Request, caller: http_auth.Caller, neuron: Optional[Neuron]) -> AuthedCaller:
        authed = AuthedCaller(
            hotkey=caller.hotkey_ss58,
            uid=neuron.uid if neuron is not None else None,
            validator_permit=bool(neuron and neuron.validator_permit),
            nonce=caller.nonce_ns,
        )
        request.state.caller = authed
        return authed


# --------------------------------------------------------------------------- #
# Client side
# --------------------------------------------------------------------------- #


class BtAuth(httpx.Auth):
    """Sign every httpx request with ``signer``'s hotkey for ``receiver_ss58``.

    ``signer`` is a ``bt.Wallet`` (its hotkey signs) or a ``Keypair``. Works
    with ``httpx.Client`` and ``httpx.AsyncClient``; each request (retries and
    redirects included) gets a fresh nonce. The signed target is the raw
    path+query httpx puts on the wire, and the body is the exact bytes sent.
    """

    # httpx reads (a)sync streamed bodies into memory before auth_flow, so the
    # body hash covers exactly what goes out.
    requires_request_body = True

    def __init__(self, signer, receiver_ss58: str):
        # Resolve once: a WalletSigner unlocks the key on first use and keeps it.
        self._signer = resolve_signer(signer, role="hotkey")
        self.receiver_ss58 = receiver_ss58
        # Strictly increasing nonces: two threads of one client (a miner's pipelined outer phase beside its
        # inner steps) must never sign the same nanosecond, which the server would refuse as a replay.
        self._nonce_lock = threading.Lock()
        self._last_nonce = 0

    @property
    def hotkey(self) -> str:
        return self._signer.ss58_address

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # The body's digest lets a server authenticate from the headers before it reads the body
        # (template.net.gate); the signature covers the same hash.
        if request.content:
            request.headers[DIGEST_HEADER] = content_digest(request.content)
        request.headers.update(
            http_auth.sign(
                self._signer,
                method=request.method,
                path=request.url.raw_path.decode("ascii"),
                body=request.content,
                receiver_ss58=self.receiver_ss58,
                nonce_ns=self._next_nonce(),
            )
        )
        yield request

    def _next_nonce(self) -> int:
        with self._nonce_lock:
            self._last_nonce = max(time.time_ns(), self._last_nonce + 1)
            return self._last_nonce
