"""The TCPStore's only door: members of the current generation, each proving its hotkey on a fresh
challenge.

torch's TCPStore has no authentication: whoever reaches its port can list the generation's prefix,
delete or overwrite rendezvous keys (so honest ranks never meet) and store values until the
orchestrator runs out of memory. So the store listens on loopback only (``store_host.py``) and ranks
reach it through this tunnel, listening on ``--tcp-store-host:--tcp-store-port``:

1. the orchestrator sends ``TUNNEL_GREETING`` and a fresh random challenge;
2. the client answers one :class:`~template.wire.orchestrator.TunnelHello` line: its hotkey, its
   generation and its hotkey's signature over the challenge (bound to the run and this orchestrator);
3. :func:`refusal` decides: a connection is admitted only for a member of the current generation,
   within a few connections per hotkey, and only then is the signature checked (a non-member costs
   no signature check); a refused connection gets ``DENIED <reason>`` and is closed without ever
   reaching the store;
4. an admitted one gets ``OK``; its requests are parsed and filtered (``store_protocol.py``: only
   what ranks use, keys under the generation's prefix, bounded sizes, one request awaiting its reply
   at a time, a rank's presence key written by that rank only) within a byte budget per hotkey and
   generation (rendezvous traffic is a few KiB), a client that leaves replies unread is cut off, and
   the connection is closed as soon as its generation ends.

Handshakes are bounded in time, line length and number in flight, in all and per source address. The tunnel authenticates its
peers; it does not encrypt: the store's bytes (the generation's prefix, peers' gloo addresses) are
not secrets worth more than the HTTP API's responses, which are signed but not encrypted either.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from template.wire.orchestrator import TUNNEL_GREETING, TUNNEL_LINE_MAX, TunnelHello, presence_message
from template.wire.signing import verify_signature

from .store_protocol import NO_REPLY, Query, Refused, Replies, Requests

log = logging.getLogger(__name__)

HANDSHAKE_S = 2.0  # to answer the challenge (one signature)
MAX_HANDSHAKES = 256  # in flight at once: more are closed unread
HANDSHAKES_PER_ADDRESS = 4  # in flight from one source address: a slow-loris host cannot fill the table
REPLY_BUFFER_MAX = 1 << 20  # replies a client has not read: more and the connection is closed
CONNECTIONS_PER_HOTKEY = 4  # a rank holds one (its TCPStore client); reconnects overlap briefly
BYTES_PER_HOTKEY = 4 * 2**20  # per generation, client to store: rendezvous takes a few KiB
PIPE_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Current:
    """The generation a connection may be admitted to: its id, its store prefix and its members'
    ranks by hotkey."""

    generation: int
    prefix: str
    ranks: dict[str, int]


def refusal(hello: TunnelHello, current: Optional[Current], open_connections: int) -> Optional[str]:
    """Why ``hello`` may not reach the store (None: it may, once its signature checks out). Pure;
    the signature is checked after this, so that only members cost a verification."""
    if current is None:
        return "no generation is training"
    if hello.generation != current.generation:
        return f"generation {hello.generation} is not the current one ({current.generation})"
    if hello.hotkey not in current.ranks:
        return "not a member of the current generation"
    if open_connections >= CONNECTIONS_PER_HOTKEY:
        return f"already {open_connections} store connections open for this hotkey"
    return None


@dataclass(eq=False)  # identity: a set of live pipes
class _Pipe:
    generation: int
    hotkey: str
    transports: tuple


class StoreTunnel:
    """Admits members' connections to the store at ``127.0.0.1:store_port`` (see the module's doc).

    ``current`` returns the generation connections may join now (called on the event loop; a cheap
    read); ``admitted`` is told each member that got through (the rendezvous it came to), and ``posted``
    each member's presence and gloo address as they pass (``"presence"``, ``"address"``: when it came to
    the rendezvous, and when it went on into gloo's connect).
    ``generation_changed`` may be called from any thread: it closes the pipes of every other
    generation."""

    def __init__(
        self,
        sock: socket.socket,
        store_port: int,
        *,
        run_id: str,
        orchestrator: str,
        current: Callable[[], Optional[Current]],
        admitted: Callable[[int, str], None] = lambda generation, hotkey: None,
        posted: Callable[[int, str, str], None] = lambda generation, hotkey, what: None,
        bytes_per_hotkey: int = BYTES_PER_HOTKEY,
    ):
        self._sock, self.store_port = sock, store_port
        self.run_id, self.orchestrator, self._current, self._admitted = run_id, orchestrator, current, admitted
        self._posted = posted
        self.bytes_per_hotkey = bytes_per_hotkey
        self.port = sock.getsockname()[1]
        self._server: Optional[asyncio.AbstractServer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._handshakes = 0
        self._handshaking: dict[str, int] = {}  # source address -> handshakes in flight
        self._connections: dict[str, int] = {}  # hotkey -> admitted (or being admitted) connections
        self._pipes: set[_Pipe] = set()  # admitted connections, piped to the store
        self._sent: dict[tuple[int, str], int] = {}  # bytes sent to the store per (generation, hotkey)
        self._written: dict[tuple[int, str], set] = {}  # write-once keys written, per (generation, hotkey)

    @staticmethod
    def listen(host: str, port: int) -> socket.socket:
        """Bind the tunnel's port now (before anything is assigned: port 0 picks a free one)."""
        sock = socket.create_server((host, port), reuse_port=False, backlog=128)
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, sock=self._sock, limit=TUNNEL_LINE_MAX)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            _abort(pipe)
        if self._server is not None:
            await self._server.wait_closed()

    def generation_changed(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._drop_stale)

    def _drop_stale(self) -> None:
        current = self._current()
        keep = current.generation if current else None
        for pipe in list(self._pipes):
            if pipe.generation != keep:
                _abort(pipe)
        self._sent = {k: v for k, v in self._sent.items() if k[0] == keep}
        self._written = {k: v for k, v in self._written.items() if k[0] == keep}

    def open_connections(self, hotkey: str) -> int:
        return self._connections.get(hotkey, 0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if self._handshakes >= MAX_HANDSHAKES or self._handshaking.get(address, 0) >= HANDSHAKES_PER_ADDRESS:
            writer.transport.abort()
            return
        self._handshakes += 1
        self._handshaking[address] = self._handshaking.get(address, 0) + 1
        try:
            hello, reason = await self._handshake(reader, writer)
        finally:
            self._handshakes -= 1
            self._handshaking[address] -= 1
            if not self._handshaking[address]:
                del self._handshaking[address]
        if reason is not None:
            log.info("store tunnel: refused %s (%r): %s", peer, hello.hotkey if hello else "no hello", reason)
            try:
                writer.write(b"DENIED " + reason.encode()[:200] + b"\n")
                await asyncio.wait_for(writer.drain(), 1.0)
            except (OSError, RuntimeError, asyncio.TimeoutError):  # uvloop: RuntimeError once closed
                pass
            writer.transport.abort()
            return
        try:  # the handshake reserved this connection for the hotkey (released below)
            try:
                store_reader, store_writer = await asyncio.open_connection("127.0.0.1", self.store_port)
            except OSError as error:
                log.warning("store tunnel: cannot reach the store: %s", error)
                writer.transport.abort()
                return
            pipe = _Pipe(hello.generation, hello.hotkey, (writer.transport, store_writer.transport))
            current = self._current()
            if current is None or current.generation != hello.generation:  # it ended during the handshake
                _abort(pipe)
                return
            self._pipes.add(pipe)
            self._admitted(hello.generation, hello.hotkey)
            try:
                writer.write(b"OK\n")
                key = (hello.generation, hello.hotkey)
                rank = current.ranks[hello.hotkey]
                requests = Requests(
                    current.prefix,
                    rank,
                    self._written.setdefault(key, set()),
                    _presence_check(self.run_id, hello, rank),
                )
                replies, answered = Replies(), asyncio.Event()
                up = asyncio.ensure_future(self._requests(reader, store_writer, requests, replies, answered, key))
                down = asyncio.ensure_future(self._replies(store_reader, writer, replies, answered, key))
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
                for task in (up, down):
                    task.cancel()
            finally:
                self._pipes.discard(pipe)
                _abort(pipe)
        finally:
            self._connections[hello.hotkey] -= 1
            if not self._connections[hello.hotkey]:
                del self._connections[hello.hotkey]

    async def _handshake(self, reader, writer) -> tuple[Optional[TunnelHello], Optional[str]]:
        challenge = secrets.token_hex(32)
        try:
            writer.write(TUNNEL_GREETING + challenge.encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), HANDSHAKE_S)
            if not line.endswith(b"\n"):
                return None, "closed before answering the challenge"
        except asyncio.TimeoutError:
            return None, f"no answer to the challenge within {HANDSHAKE_S:g}s"
        except (ValueError, asyncio.LimitOverrunError):  # a line longer than the limit
            return None, f"handshake line over {TUNNEL_LINE_MAX} bytes"
        except (OSError, RuntimeError) as error:
            return None, f"connection failed: {error}"
        try:
            hello = TunnelHello.model_validate_json(line)
        except ValueError:
            return None, "malformed hello (expected a TunnelHello JSON line)"
        reason = refusal(hello, self._current(), self.open_connections(hello.hotkey))
        if reason is not None:
            return hello, reason
        message = TunnelHello.message(self.run_id, self.orchestrator, hello.generation, challenge)
        if not verify_signature(hello.hotkey, message, bytes.fromhex(hello.signature)):
            return hello, "bad signature"
        # Reserved before any await: hellos racing in cannot all pass the per-hotkey limit.
        self._connections[hello.hotkey] = self._connections.get(hello.hotkey, 0) + 1
        return hello, None

    async def _requests(self, reader, store_writer, requests: Requests, replies: Replies, answered, key) -> None:
        """Client to store: each request parsed and checked; one awaiting its reply at a time."""
        try:
            while data := await reader.read(PIPE_CHUNK):
                sent = self._sent.get(key, 0) + len(data)
                self._sent[key] = sent
                if sent > self.bytes_per_hotkey:
                    raise Refused(f"over {self.bytes_per_hotkey} bytes sent to the store in this generation")
                requests.feed(data)
                while (request := requests.next()) is not None:
                    if request.query not in NO_REPLY and request.query is not Query.CANCEL_WAIT:
                        while replies.pending:  # torch's client waits for each reply; so does the tunnel
                            answered.clear()
                            await answered.wait()
                    replies.expect(request.query)
                    store_writer.write(request.raw)
                    if request.posted:
                        self._posted(*key, request.posted)
                await store_writer.drain()
        except Refused as why:
            log.warning("store tunnel: %s (generation %d): %s: closed", key[1], key[0], why)
        except (OSError, RuntimeError):
            return

    async def _replies(self, store_reader, writer, replies: Replies, answered, key) -> None:
        """Store to client: replies followed (so the requests side knows when one is answered), and a
        client that does not read them is cut off instead of piling them up here."""
        try:
            while data := await store_reader.read(PIPE_CHUNK):
                replies.feed(data)
                writer.write(data)
                answered.set()
                if writer.transport.get_write_buffer_size() > REPLY_BUFFER_MAX:
                    raise Refused(f"over {REPLY_BUFFER_MAX} bytes of replies unread")
        except Refused as why:
            log.warning("store tunnel: %s (generation %d): %s: closed", key[1], key[0], why)
        except (OSError, RuntimeError):
            return


def _presence_check(run_id: str, hello: TunnelHello, rank: int):
    """Whether a presence value is ``hello``'s hotkey's signature for ``rank`` of its generation (the hex
    its peers check: :func:`template.miner.group._present`)."""
    message = presence_message(run_id, hello.generation, rank)

    def ok(value: bytes) -> bool:
        try:
            signature = bytes.fromhex(value.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return False
        return verify_signature(hello.hotkey, message, signature)

    return ok


def _abort(pipe: _Pipe) -> None:
    for transport in pipe.transports:
        transport.abort()
