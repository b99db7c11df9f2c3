"""Small HTTP plumbing shared by every tensorswarm server (orchestrator,
meta-miner, validator): a request-body size cap and a real uvicorn server in a
background thread (tests and benchmarks talk to it over real sockets).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

import uvicorn
from starlette.exceptions import HTTPException

from template.net.connections import guarded_http

log = logging.getLogger(__name__)

__all__ = [
    "BodySizeLimitMiddleware",
    "BodyTooLarge",
    "RateLimit",
    "ServerThread",
    "free_port",
    "install_error_handlers",
]


# --------------------------------------------------------------------------- #
# Body size limit
# --------------------------------------------------------------------------- #


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit.

    An ``HTTPException`` so that frameworks that wrap body-read errors (FastAPI
    turns any other exception into "400 error parsing the body") let it
    through; the middleware rewrites whatever response follows into its own 413.
    """

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=_too_large(limit))
        self.limit = limit


def _too_large(limit: int) -> str:
    return f"request body exceeds {limit} bytes"


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: reject request bodies over ``max_bytes`` with 413.

    Checked twice: up front from ``Content-Length`` (the app never runs, the
    body is never read), and while the body streams in, which catches chunked
    uploads and lying/absent lengths. ``overrides`` maps a path prefix to its
    own limit (longest prefix wins), e.g. ``{"/v1/checkpoints": 2 << 30}``.

    The 413 goes out before the body is read. If the connection were then
    closed with the body still unread, the kernel would answer the client's
    pending bytes with a RST, which can destroy the 413 before the client reads
    it (httpx: "Connection reset by peer"). So the connection stays open and
    uvicorn reads and discards the rest of the body, keeping keep-alive usable.
    Only a declared body more than ``drain_bytes`` over the limit is refused
    with ``Connection: close``; reading it all would cost more than the
    clean error is worth.

    Usage: ``app.add_middleware(BodySizeLimitMiddleware, max_bytes=1 << 20)``.
    """

    def __init__(
        self,
        app,
        max_bytes: int,
        overrides: Optional[Mapping[str, int]] = None,
        drain_bytes: int = 64 << 20,
    ):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = int(max_bytes)
        self.drain_bytes = int(drain_bytes)
        # Longest prefix first so "/v1/ckpt/big" beats "/v1/ckpt".
        self.overrides = sorted(
            ((str(p), int(n)) for p, n in (overrides or {}).items()),
            key=lambda item: len(item[0]),
            reverse=True,
        )

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.overrides:
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, limit, close=declared - limit > self.drain_bytes)
            return

        received = 0
        exceeded = False
        started = False
        answered = False  # our 413 went out in place of the app's response

        async def limited_receive():
            nonlocal received, exceeded
            if exceeded:  # an app that swallowed the first error must not read on
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message):
            nonlocal started, answered
            if exceeded:
                # Whatever the app answers after an overflow (its own 413, a
                # 400 from a framework, a 500) becomes our canonical 413.
                if message["type"] == "http.response.start" and not started:
                    started = answered = True
                    await _send_413(send, limit)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if answered:
                return
            if started:
                raise  # the app had already answered 2xx/...: let the server drop the connection
            await _send_413(send, limit)


def _content_length(scope) -> Optional[int]:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server's HTTP parser rejects these anyway
    return None


async def _send_413(send, limit: int, close: bool = False) -> None:
    body = json.dumps({"detail": _too_large(limit)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- #
# Real server in a thread
# --------------------------------------------------------------------------- #


class RateLimit:
    """A token bucket per key (e.g. per hotkey on one expensive route): ``burst`` requests at once, then
    ``per_s`` a second. :meth:`wait` takes a token and returns 0, or returns how many seconds until one
    is free (the caller answers 429 with ``Retry-After``). Keys idle long enough to be full again are
    forgotten, so memory follows the keys active in the last ``burst / per_s`` seconds."""

    def __init__(self, burst: float, per_s: float):
        if burst < 1 or per_s <= 0:
            raise ValueError("a rate limit needs burst >= 1 and per_s > 0")
        self.burst, self.per_s = float(burst), float(per_s)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def wait(self, key: str, now: float) -> float:
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.per_s)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                if len(self._buckets) > 1024:
                    full = (self.burst - 1) / self.per_s
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.per_s


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (racy by nature; ServerThread with
    port 0 binds first and is race-free)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class ServerThread:
    """Run an ASGI app under a real ``uvicorn.Server`` in a background thread.

    ``start()`` binds the listening socket itself (port 0 → the OS picks) and
    hands it to uvicorn, so ``.port``/``.url`` are known before the server
    runs and nothing can steal the port in between.
    ``start()`` returns once uvicorn accepts connections (lifespan startup
    included) or raises ``RuntimeError``; ``stop()`` shuts down gracefully.
    Logs are quiet (warnings only, no access log) and the process-wide logging
    config is left alone.
    """

    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        **uvicorn_options: Any,
    ):
        self.app = app
        self.host = host
        self._requested_port = port
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._options = dict(log_level=log_level, access_log=False, log_config=None, lifespan="auto")
        # A head deadline and a cap per address (template.net.connections): idle sockets cannot pin it.
        self._options["http"] = guarded_http()
        self._options.update(uvicorn_options)
        self._socket: Optional[socket.socket] = None
        self._server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self.port: Optional[int] = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def server(self) -> Optional[uvicorn.Server]:
        return self._server

    def start(self) -> ServerThread:
        if self._thread is not None:
            raise RuntimeError("server already started")
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose
        # proto says TCP; without it every response waited ~40 ms (Nagle).
        sock = socket.socket(_family(self.host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"cannot bind {self.host}:{self._requested_port}: {exc}") from exc
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]

        config = uvicorn.Config(self.app, host=self.host, port=self.port, **self._options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()

        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup_socket()
                raise RuntimeError(f"server on {self.url} exited during startup: {self._error!r}") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start within {self.startup_timeout:g}s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # SystemExit on lifespan failure included
            self._error = exc
            log.error("server on port %s failed: %r", self.port, exc)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(self.shutdown_timeout)
        if self._thread.is_alive():
            # Graceful shutdown waits on open connections; stop waiting.
            self._server.force_exit = True
            self._thread.join(self.shutdown_timeout)
        if self._thread.is_alive():
            log.warning("server thread on port %s did not stop", self.port)
        self._thread = None
        self._cleanup_socket()

    def _cleanup_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


async def _validation_error(_request, exc):
    """422 with where and why, never echoing the input: it may be huge or not
    JSON-encodable (NaN, Infinity), which crashed FastAPI's default handler."""
    from fastapi.responses import JSONResponse

    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def install_error_handlers(app) -> None:
    """Shared error shape for every tensorswarm server."""
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, _validation_error)
