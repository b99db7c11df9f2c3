"""Typed, signed client for a meta-miner's API (:mod:`template.miner.api`), used by validators: the
counterpart of :mod:`template.net.orchestrator_client`. Requests are btauth/1-signed for the miner's
hotkey; answers are parsed into the wire models (``p.SignedReceipt``, ``p.MinerStatus``), contributions
come back as bytes.

A meta-miner is an untrusted peer, so the client reads defensively: every answer body is streamed and
refused past a size cap (receipts :data:`RECEIPTS_MAX_BYTES`, status :data:`STATUS_MAX_BYTES`, a
contribution the caller's ``max_bytes``), before anything is parsed; JSON of any other shape than the
API's is refused. Every request also has a **total deadline** (``deadline`` seconds, wall clock, from
connect through the last byte; and never past ``until``, a ``time.monotonic()`` instant for everything the
client does): httpx's own ``timeout`` applies to each socket operation alone, so a peer that drips one byte
a second would otherwise keep a request alive for ever. The deadline is enforced under httpx, on every
connect, send and receive (:class:`_DeadlineBackend`), so it holds while the status line and headers are
still arriving too, and again between body chunks. Refusals, transport errors, timeouts and missed
deadlines all raise :class:`MinerError`; an answer other than 200 (404: the miner has nothing for that
round) is "not served": ``[]`` or ``None``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Optional

import httpcore
import httpx

from template import wire as p
from template.net.auth import BtAuth

__all__ = ["DEFAULT_DEADLINE_S", "RECEIPTS_MAX_BYTES", "STATUS_MAX_BYTES", "MinerClient", "MinerError"]

# One receipt is ~20 bytes per inner-step loss and ~70 per rank of the world (received_sha256): ~3 KiB
# for H = 100 and 16 ranks, and under 1 MiB for any H ≤ 10_000 on ≤ 4096 ranks.
RECEIPTS_MAX_BYTES = 1 << 20
STATUS_MAX_BYTES = 64 << 10
# A request's total time unless the caller says otherwise (receipts and status are a few KiB; callers
# reading a contribution size its deadline from its length: template.validator.evidence).
DEFAULT_DEADLINE_S = 10.0


class MinerError(RuntimeError):
    """The meta-miner could not be reached, or answered what its API never does (too large, malformed,
    too slow)."""


def _parse_json(path: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly nested JSON
        raise MinerError(f"{path}: not JSON ({type(error).__name__})") from None


class _Clock:
    """When the request in flight must be over (``time.monotonic()``); shared by the client's sockets."""

    def __init__(self) -> None:
        self.end = math.inf

    def bound(self, timeout: Optional[float], timed_out: type[Exception]) -> float:
        """``timeout`` (httpx's, for one socket operation) cut to the time left; raises ``timed_out``
        (an httpcore timeout, which httpx maps to its own) once none is left."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise timed_out("deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, clock: _Clock):
        self._stream, self._clock = stream, clock

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._stream.read(max_bytes, self._clock.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._stream.write(buffer, self._clock.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        bounded = self._clock.bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded), self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking sockets, each operation waiting at most until the clock's end. (Name
    resolution is the one wait it cannot bound: axons on chain are IP addresses.)"""

    def __init__(self, clock: _Clock):
        self._backend, self._clock = httpcore.SyncBackend(), clock

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        bounded = self._clock.bound(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineStream(stream, self._clock)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        bounded = self._clock.bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, bounded, socket_options), self._clock)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport (its exception mapping and response streams) over :class:`_DeadlineBackend`.
    httpx has no public hook for the network backend, so the connection pool is rebuilt with it; the
    client tests (tests/integration/test_miner_client.py: a peer dripping its headers) catch a change."""

    def __init__(self, clock: _Clock):
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(network_backend=_DeadlineBackend(clock))


class MinerClient:
    """``timeout``: httpx's, for each connect, send and receive; ``deadline``: the most one request takes
    in all (seconds, wall clock); ``until``: a ``time.monotonic()`` instant no request of this client
    goes past (a validator's deadline for the whole round). One request at a time: a client per thread."""

    def __init__(
        self,
        url: str,
        wallet,
        miner_hotkey: str,
        timeout: float = 10.0,
        *,
        deadline: float = DEFAULT_DEADLINE_S,
        until: Optional[float] = None,
    ):
        self.url = url.rstrip("/")
        self.hotkey = miner_hotkey
        self.deadline = deadline
        self.until = math.inf if until is None else until
        self._clock = _Clock()
        try:
            self.http = httpx.Client(
                base_url=self.url,
                auth=BtAuth(wallet, miner_hotkey),
                timeout=timeout,
                # Our transport enforces the deadline, so no proxy from the environment may replace it.
                transport=_DeadlineTransport(self._clock),
                trust_env=False,
                # A compressed answer inflates ~1000× before the size cap sees it: ask for none, take none.
                headers={"Accept-Encoding": "identity"},
            )
        except httpx.InvalidURL as error:  # an axon published on chain is whatever its owner wrote
            raise MinerError(f"bad meta-miner address {url!r}: {error}") from None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> MinerClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _get(
        self, path: str, max_bytes: int, params: Optional[dict] = None, deadline: Optional[float] = None
    ) -> Optional[bytes]:
        """The body of a 200 answer to ``GET path`` (at most ``max_bytes``, all of it within the
        deadline), or None for any other status."""
        started = time.monotonic()
        end = min(started + (self.deadline if deadline is None else deadline), self.until)
        self._clock.end = end
        try:
            if end <= started:
                raise MinerError(f"{path}: no time left")
            with self.http.stream("GET", path, params=params) as response:
                if response.status_code != 200:
                    return None
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("identity", ""):
                    raise MinerError(f"{path}: answer encoded as {encoding!r}, not asked for")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise MinerError(f"{path}: answer of {declared} bytes exceeds {max_bytes}")
                body = bytearray()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) > max_bytes:  # a chunked or lying body: stop reading here
                        raise MinerError(f"{path}: answer exceeds {max_bytes} bytes")
                    if time.monotonic() > end:  # the sockets' bound stops a drip; this names it
                        raise MinerError(f"{path}: deadline of {end - started:.1f}s passed after {len(body)} bytes")
                return bytes(body)
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise MinerError(
                f"{path}: {type(error).__name__} after {time.monotonic() - started:.1f}s: {error}"
            ) from None
        finally:
            self._clock.end = math.inf  # a pooled connection's idle checks are not this request's

    def receipts(
        self, round: Optional[int] = None, since: int = 0, limit: int = 50, *, max_bytes: int = RECEIPTS_MAX_BYTES
    ) -> list[p.SignedReceipt]:
        """The miner's signed receipts: the one of ``round``, or up to ``limit`` from round ``since`` on
        (``max_bytes`` bounds the whole answer: raise it for long listings)."""
        params = {"round": round} if round is not None else {"since": since, "limit": limit}
        body = self._get("/v1/receipts", max_bytes, params)
        if body is None:
            return []
        data = _parse_json("/v1/receipts", body)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise MinerError(f"/v1/receipts: expected a list of receipts, got {type(data).__name__}")
        try:
            return [p.SignedReceipt.model_validate(item) for item in data]
        except ValueError as error:  # pydantic's ValidationError
            raise MinerError(f"/v1/receipts: invalid receipt: {error}") from None

    def receipt(self, round: int) -> Optional[p.SignedReceipt]:
        """The miner's signed receipt for ``round`` (the first one served), or None."""
        found = self.receipts(round=round)
        return found[0] if found else None

    def contribution(self, round: int, max_bytes: int, *, deadline: Optional[float] = None) -> Optional[bytes]:
        """The miner's compressed contribution for ``round`` as served (not checked here: the audit
        compares it with the receipt), or None. ``max_bytes``: the most the caller will read;
        ``deadline``: this request's (default the client's), sized by the caller from ``max_bytes``."""
        return self._get(f"/v1/contribution/{round}", max_bytes, deadline=deadline)

    def status(self) -> Optional[p.MinerStatus]:
        body = self._get("/v1/status", STATUS_MAX_BYTES)
        if body is None:
            return None
        data = _parse_json("/v1/status", body)
        if not isinstance(data, dict):
            raise MinerError(f"/v1/status: expected an object, got {type(data).__name__}")
        try:
            return p.MinerStatus.model_validate(data)
        except ValueError as error:
            raise MinerError(f"/v1/status: invalid status: {error}") from None
