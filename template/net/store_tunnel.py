"""A rank's way into its generation's TCPStore: the orchestrator's members-only tunnel.

The orchestrator's store listens on its loopback only; its tunnel admits a connection once the
client answers a fresh challenge with its hotkey's signature as a member of the current generation
(``orchestrator/store_tunnel.py`` has the protocol). torch's TCPStore client cannot do that, so the
rank runs a :class:`StoreForwarder`: a port on this machine's loopback whose every connection is
carried through its own tunnel connection, byte for byte once admitted. torch connects to the
forwarder as if it were the store.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Optional

from template.wire.orchestrator import TUNNEL_GREETING, TUNNEL_LINE_MAX, TunnelHello

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class TunnelRefused(ConnectionError):
    """The orchestrator did not let this connection reach the store (the reason is its words)."""


def hello_signer(hotkey: str, generation: int, run_id: str, orchestrator: str, sign) -> Callable[[str], bytes]:
    """The answer to a challenge: ``hotkey`` signs it for ``generation`` of ``run_id`` at ``orchestrator``."""

    def answer(challenge: str) -> bytes:
        signature = bytes(sign(TunnelHello.message(run_id, orchestrator, generation, challenge))).hex()
        return TunnelHello(hotkey=hotkey, generation=generation, signature=signature).model_dump_json().encode()

    return answer


class TunnelDenied(TunnelRefused):
    """The orchestrator answered ``DENIED`` (not a member, wrong generation, ...): asking again will
    not help."""


def open_tunnel(host: str, port: int, answer: Callable[[str], bytes], timeout_s: float = 10.0) -> socket.socket:
    """A connection to the orchestrator's store, through the tunnel's handshake, all within
    ``timeout_s`` (raises :class:`TunnelDenied` with the orchestrator's reason, :class:`TunnelRefused`,
    or ``OSError``)."""
    deadline = time.monotonic() + timeout_s
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        greeting = _read_line(sock, deadline)
        if not greeting.startswith(TUNNEL_GREETING):
            raise TunnelRefused(f"{host}:{port} is not a tensorswarm store tunnel (it sent {greeting[:40]!r})")
        challenge = greeting[len(TUNNEL_GREETING) :].decode("ascii", "replace")
        sock.sendall(answer(challenge) + b"\n")
        verdict = _read_line(sock, deadline)
        if verdict.startswith(b"DENIED"):
            raise TunnelDenied(verdict.decode("utf-8", "replace"))
        if verdict != b"OK":
            raise TunnelRefused(verdict.decode("utf-8", "replace")[:200] or "closed without an answer")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """One handshake line, read a byte at a time (nothing after it may be consumed), by ``deadline``."""
    line = bytearray()
    while len(line) < TUNNEL_LINE_MAX:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TunnelRefused("the store tunnel's handshake timed out")
        sock.settimeout(left)
        byte = sock.recv(1)
        if not byte or byte == b"\n":
            return bytes(line)
        line += byte
    raise TunnelRefused(f"handshake line over {TUNNEL_LINE_MAX} bytes")


class StoreForwarder:
    """Listens on ``127.0.0.1:port``; every connection it accepts is carried to the orchestrator's
    store through its own tunnel connection. ``refused`` holds the orchestrator's last refusal, for
    the rank to say why its store connection failed.

    The first tunnel connection is opened at construction, so a refusal raises here, at once, with
    the orchestrator's reason (torch's client would retry a closed connection until its timeout)."""

    def __init__(self, host: str, port: int, answer: Callable[[str], bytes], timeout_s: float = 10.0):
        self.host, self.remote_port, self.answer, self.timeout_s = host, port, answer, timeout_s
        self.refused: Optional[str] = None
        self._first: Optional[socket.socket] = self._open_first(timeout_s)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="store-forwarder", daemon=True).start()

    def _open_first(self, timeout_s: float) -> socket.socket:
        """The first tunnel connection; a connection cut off before its verdict (the orchestrator was
        busy, or someone was flooding it) is tried again, with jitter, until ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return open_tunnel(self.host, self.remote_port, self.answer, max(0.5, deadline - time.monotonic()))
            except TunnelDenied:
                raise
            except OSError as error:  # TunnelRefused is one
                if time.monotonic() + 0.5 >= deadline:
                    raise
                log.info("store tunnel: %s; trying again", error)
                time.sleep(random.uniform(0.1, 0.5))

    def __enter__(self) -> StoreForwarder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._first is not None:
            self._first.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._carry, args=(local,), daemon=True).start()

    def _carry(self, local: socket.socket) -> None:
        remote, self._first = self._first, None
        try:
            remote = remote or open_tunnel(self.host, self.remote_port, self.answer, self.timeout_s)
        except (OSError, ValueError) as error:
            self.refused = f"{self.host}:{self.remote_port}: {error}"
            log.warning("store tunnel: %s", self.refused)
            local.close()
            return
        threading.Thread(target=_pump, args=(remote, local), daemon=True).start()
        _pump(local, remote)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
