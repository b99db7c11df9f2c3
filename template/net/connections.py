"""Which connections an HTTP server keeps: a deadline on each request's head and a cap per client address.

uvicorn starts no timer when a connection opens, nor while a request's head trickles in (its keep-alive
timeout runs only from a response to the next request's first byte). A client that opens sockets and sends
nothing, or a byte a second, holds them forever, with a file descriptor each; a thousand of them and the
process can open nothing else: not its heartbeats, its log, or its own requests.

:func:`guarded_http` is uvicorn's protocol with two rules: a connection whose request head is not complete
``head_timeout_s`` after it opened, or after its last response, is closed; and a connection from an
address (an IPv6 /64: :func:`client_key`) that already holds ``max_per_address`` is closed as it opens. A request body is not under the
deadline (routes bound their own bodies and waits). :func:`raise_fd_limit` takes the process's hard limit
of file descriptors, as the soft one is often 1024.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

__all__ = ["HEAD_TIMEOUT_S", "MAX_PER_ADDRESS", "client_key", "guarded_http", "raise_fd_limit"]

HEAD_TIMEOUT_S = 10.0  # a request head is a few hundred bytes: seconds are plenty on any link
MAX_PER_ADDRESS = 64  # open connections from one address (an HTTP client pool holds a handful)
WARN_EVERY_S = 60.0  # refusals are logged at most this often (a flood must not fill the disk)


def guarded_http(head_timeout_s: float = HEAD_TIMEOUT_S, max_per_address: int = MAX_PER_ADDRESS) -> type:
    """A uvicorn HTTP protocol class (``uvicorn.Config(http=...)``) with the two rules above; each call
    makes a class with its own count of connections per address, so give each server its own."""
    if head_timeout_s <= 0 or max_per_address < 1:
        raise ValueError("a head timeout must be > 0 and a cap per address >= 1")
    open_from: dict[str, int] = {}
    refused = {"count": 0, "warned_at": float("-inf")}

    class GuardedHttp(HttpToolsProtocol):
        _deadline = None
        _address = None

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
            self._arm()

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

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(head_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _head_late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.abort()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Idle (no pipelined request started): the next head has the same deadline.
            if self.timeout_keep_alive_task is not None and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._address is not None:
                left = open_from.get(self._address, 1) - 1
                if left > 0:
                    open_from[self._address] = left
                else:
                    open_from.pop(self._address, None)
                self._address = None
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
