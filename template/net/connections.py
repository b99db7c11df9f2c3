"""Which connections an HTTP server keeps: deadlines on each request's head, its body and its response, and a
cap per client address.

uvicorn starts no timer when a connection opens, while a request's head or body trickles in, or while a
client does not read its response (its keep-alive timeout runs only from a response to the next request's
first byte). A client that opens sockets and sends nothing, or a byte a second, or announces a body it never
sends, or never reads what it asked for, holds them forever, with a file descriptor each; a thousand of them
and the process can open nothing else: not its heartbeats, its log, or its own requests.

:func:`guarded_http` is uvicorn's protocol with these rules, each closing the connection:

- a request head not complete ``head_timeout_s`` after the connection opened or went idle;
- a request body from which no byte came for ``body_idle_s`` while the server was ready to read more (a slow
  upload that keeps coming is never cut; one the application has not asked for yet is not waited on);
- a response the client took no bytes of for ``write_stall_s``;
- a new connection from an address (an IPv6 /64: :func:`client_key`) that holds ``max_per_address``.

:func:`raise_fd_limit` takes the process's hard limit of file descriptors, as the soft one is often 1024.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

__all__ = [
    "BODY_IDLE_S",
    "HEAD_TIMEOUT_S",
    "MAX_PER_ADDRESS",
    "WRITE_STALL_S",
    "client_key",
    "guarded_http",
    "raise_fd_limit",
]

HEAD_TIMEOUT_S = 10.0  # a request head is a few hundred bytes: seconds are plenty on any link
BODY_IDLE_S = 30.0  # no byte of a body for this long: the sender is gone, or holding the socket
WRITE_STALL_S = 30.0  # a response the client reads none of for this long (a 64 KiB buffer: < 2 KB/s)
MAX_PER_ADDRESS = 64  # open connections from one address (an HTTP client pool holds a handful)
WARN_EVERY_S = 60.0  # refusals are logged at most this often (a flood must not fill the disk)


def guarded_http(
    head_timeout_s: float = HEAD_TIMEOUT_S,
    max_per_address: int = MAX_PER_ADDRESS,
    body_idle_s: float = BODY_IDLE_S,
    write_stall_s: float = WRITE_STALL_S,
) -> type:
    """A uvicorn HTTP protocol class (``uvicorn.Config(http=...)``) with the rules above; each call makes a
    class with its own count of connections per address, so give each server its own."""
    if min(head_timeout_s, body_idle_s, write_stall_s) <= 0 or max_per_address < 1:
        raise ValueError("timeouts must be > 0 and the cap per address >= 1")
    open_from: dict[str, int] = {}
    refused = {"count": 0, "warned_at": float("-inf")}

    class GuardedHttp(HttpToolsProtocol):
        _deadline = None  # the head's deadline, or the body's idle timer: one at a time
        _stall = None  # the response's write-stall timer
        _address = None  # the key this connection is counted under, until it is released
        _in_body = False  # between a request's head and the end of its body
        _body_at = 0.0  # when body bytes last came (read by the idle timer: no new timer per chunk)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            address = client_key(peer[0]) if peer else None
            if address is not None and open_from.get(address, 0) >= max_per_address:
                self._refuse(address)
                transport.abort()
                return
            if address is not None:
                open_from[address] = open_from.get(address, 0) + 1
                self._address = address
            self._arm(head_timeout_s)

        @staticmethod
        def _refuse(address: str) -> None:
            refused["count"] += 1
            now = time.monotonic()
            if now - refused["warned_at"] >= WARN_EVERY_S:
                log.warning(
                    "refused %d connection(s) in the last %.0fs from addresses holding %d open (last: %s)",
                    refused["count"],
                    WARN_EVERY_S,
                    max_per_address,
                    address,
                )
                refused["count"], refused["warned_at"] = 0, now

        def _release(self) -> None:
            if self._address is not None:
                left = open_from.get(self._address, 1) - 1
                if left > 0:
                    open_from[self._address] = left
                else:
                    open_from.pop(self._address, None)
                self._address = None

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if self._in_body:
                idle = self.loop.time() - self._body_at
                if idle < body_idle_s:  # bytes came meanwhile: wait out the rest from the last of them
                    self._arm(body_idle_s - idle)
                    return
                if self.flow is not None and self.flow.read_paused:
                    self._arm(body_idle_s)  # the application is not reading yet: not the client's doing
                    return
            if not self.transport.is_closing():
                self.transport.abort()

        def _stall_on(self) -> None:
            if self._stall is None:
                self._stall = self.loop.call_later(write_stall_s, self._stalled)

        def _stall_off(self) -> None:
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        def _stalled(self) -> None:
            self._stall = None
            self.transport.abort()

        def _idle(self) -> None:
            """No request in flight (its body all read, its response all sent, none queued): the next head has
            the head deadline. uvicorn's keep-alive timer is not enough: a body that ends after its response
            (an early 401 or 413) cancels it, and nothing arms it again."""
            if self._in_body or self.pipeline or self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                self._arm(head_timeout_s)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_body:  # body bytes came: the idle timer counts from now
                self._body_at = self.loop.time()

        def on_headers_complete(self) -> None:
            self._in_body, self._body_at = True, self.loop.time()
            self._arm(body_idle_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            self._disarm()
            super().on_message_complete()
            self._idle()  # an answer sent before the body ended (401, 413, "already here") is done now

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                self._stall_on()  # unsent bytes linger
            self._idle()

        def pause_writing(self) -> None:
            super().pause_writing()
            self._stall_on()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._stall_off()

        def handle_websocket_upgrade(self) -> None:
            # The socket goes to the WebSocket protocol: this one's connection_lost will never run.
            self._disarm()
            self._release()
            super().handle_websocket_upgrade()

        def connection_lost(self, exc) -> None:
            self._disarm()
            self._stall_off()
            self._release()
            super().connection_lost(exc)

    GuardedHttp.open_from = open_from  # read by tests: the live count per address
    return GuardedHttp


def client_key(host: str) -> str:
    """What one client's connections are counted under: its IPv4 address, or its IPv6 /64 (one host is
    commonly given a whole /64, so counting single IPv6 addresses would cap nothing)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:  # a v4 client on a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:  # e.g. an unlimited hard limit some kernels refuse
            log.warning("could not raise the open-file limit from %d: %s", soft, error)
    return soft
