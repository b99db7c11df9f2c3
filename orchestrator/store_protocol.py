"""What a member may ask the generation's TCPStore: torch's store protocol, parsed and filtered.

The tunnel (``store_tunnel.py``) admits only members, but a member is no more trusted than anyone:
piped byte for byte, one could pipeline thousands of ``MULTI_GET``\\ s of a large value and never read
the replies (torch's server queues them in the orchestrator's memory), delete or list keys, or write
keys outside its generation's prefix that no sweep sees. So the tunnel parses every request with
:class:`Requests` and forwards only what ranks use (``ALLOWED``: validate, ping, set, compare-set,
get, add, check, wait and cancel-wait), with keys under the generation's prefix, bounded keys, values
and key counts, and a rank's presence key and gloo address writable by that rank only. :class:`Replies` follows the
store's answers so that a connection has at most one request awaiting its reply (torch's client never
has more): what the store holds for a client that does not read is one reply.

The wire format (torch 2.x, ``TCPStoreBackend.hpp``/``TCPStore.cpp``): a request is a one-byte
``QueryType`` and its arguments; strings and byte vectors are a little-endian uint64 length and the
bytes; key lists a uint64 count and the keys. Replies are fixed-size (ping: uint32, add: int64, check
and wait: one byte) or a uint64 length and the bytes (get, compare-set); set and validate get none.
"""

from __future__ import annotations

import enum
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

MAX_KEY = 512  # bytes: generation prefix + a rank's key (gloo's are ~40)
MAX_VALUE = 16 * 1024  # bytes: gloo's address is ~170, nccl's unique id 128, a presence signature 128
MAX_KEYS = 256  # per check or wait
VALIDATION_MAGIC = 0x3C85F7CE
# gloo's key for a rank's listening address, under the generation's prefix: "<group>//<device>//<n>/<rank>"
GLOO_ADDRESS = re.compile(rb"\d+//\w+//\d+/(\d+)\Z")


class Query(enum.IntEnum):
    VALIDATE = 0
    SET = 1
    COMPARE_SET = 2
    GET = 3
    ADD = 4
    CHECK = 5
    WAIT = 6
    GETNUMKEYS = 7
    DELETE_KEY = 8
    APPEND = 9
    MULTI_GET = 10
    MULTI_SET = 11
    CANCEL_WAIT = 12
    PING = 13
    QUEUE_PUSH = 14
    QUEUE_POP = 15
    QUEUE_LEN = 16
    LIST_KEYS = 17
    BARRIER = 18


ALLOWED = frozenset(
    {
        Query.VALIDATE,
        Query.SET,
        Query.COMPARE_SET,
        Query.GET,
        Query.ADD,
        Query.CHECK,
        Query.WAIT,
        Query.CANCEL_WAIT,
        Query.PING,
    }
)
NO_REPLY = frozenset({Query.VALIDATE, Query.SET})


class Refused(ValueError):
    """A request the tunnel does not forward (the connection is closed); the message says why."""


@dataclass(frozen=True)
class Request:
    query: Query
    raw: bytes  # exactly the bytes to forward
    keys: tuple[bytes, ...] = ()
    # "presence" or "address": this rank's own rendezvous key, written (the orchestrator sees who came when)
    posted: str = ""


class Requests:
    """Incremental parser and filter of one connection's requests: ``feed`` bytes, then take each
    complete :class:`Request` from ``next()`` (None: more bytes needed). Raises :class:`Refused`."""

    def __init__(
        self,
        prefix: str,
        own_rank: int,
        written: Optional[set] = None,
        presence_ok: Callable[[bytes], bool] = lambda value: True,
    ):
        self.prefix = b"/" + prefix.encode() + b"/"
        self.own_rank = own_rank
        # Whether a value is this rank's signed presence: the orchestrator takes a presence that passes for
        # the rank's arrival at the rendezvous, so one its peers would not accept must not pass.
        self.presence_ok = presence_ok
        # This rank's presence and gloo address keys already written in this generation, shared by all
        # its connections: each is written once (an address swapped after the peers failed to reach the
        # first would leave nothing to name the rank by).
        self.written = set() if written is None else written
        self.own_presence = self.prefix + f"present/{own_rank}".encode()
        self.presence = self.prefix + b"present/"
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> Optional[Request]:
        buf = self._buf
        if not buf:
            return None
        try:
            query = Query(buf[0])
        except ValueError:
            raise Refused(f"unknown store request type {buf[0]}") from None
        if query not in ALLOWED:
            raise Refused(f"store request {query.name} is not one ranks make")
        at = 1
        keys: list[bytes] = []
        value = b""
        try:
            if query in (Query.VALIDATE, Query.PING):
                if len(buf) < at + 4:
                    return None
                if query is Query.VALIDATE and struct.unpack_from("<I", buf, at)[0] != VALIDATION_MAGIC:
                    raise Refused("not a TCPStore client (bad validation number)")
                at += 4
            elif query is Query.CANCEL_WAIT:
                pass
            elif query in (Query.CHECK, Query.WAIT):
                count, at = _u64(buf, at)
                if count > MAX_KEYS:
                    raise Refused(f"{query.name} of {count} keys (at most {MAX_KEYS})")
                for _ in range(count):
                    key, at = _bytes(buf, at, MAX_KEY, "key")
                    keys.append(key)
            else:  # SET, COMPARE_SET, GET, ADD: a key first
                key, at = _bytes(buf, at, MAX_KEY, "key")
                keys.append(key)
                if query is Query.SET:
                    value, at = _bytes(buf, at, MAX_VALUE, "value")
                elif query is Query.COMPARE_SET:
                    _, at = _bytes(buf, at, MAX_VALUE, "value")
                    _, at = _bytes(buf, at, MAX_VALUE, "value")
                elif query is Query.ADD:
                    if len(buf) < at + 8:
                        raise _Short
                    at += 8
        except _Short:
            return None
        for key in keys:
            if not key.startswith(self.prefix):
                raise Refused("a key outside the generation's prefix")
        posted = ""
        if query in (Query.SET, Query.COMPARE_SET, Query.ADD):
            if keys[0].startswith(self.presence) and keys[0] != self.own_presence:
                raise Refused("a presence key of another rank")
            owner = GLOO_ADDRESS.match(keys[0][len(self.prefix) :])
            if owner and int(owner[1]) != self.own_rank:  # a peer's listening address: a relay in the making
                raise Refused("another rank's gloo address")
            if keys[0] == self.own_presence and not (query is Query.SET and self.presence_ok(bytes(value))):
                raise Refused("a presence that is not this rank's signature")
            if owner or keys[0] == self.own_presence:
                if keys[0] in self.written:
                    raise Refused("this rank's presence or gloo address again (each is written once)")
                self.written.add(keys[0])
                posted = "address" if owner else "presence"
        raw = bytes(buf[:at])
        del buf[:at]
        return Request(query, raw, tuple(keys), posted)


class Replies:
    """Follows one connection's replies: ``expect`` the reply to each forwarded request, ``feed`` what
    the store sends; ``pending`` is how many requests await theirs. Raises :class:`Refused` on bytes
    no outstanding request explains (the store and the tunnel disagree: close)."""

    def __init__(self):
        self._expected: deque[Query] = deque()
        self._buf = bytearray()
        self._cancelled = False

    @property
    def pending(self) -> int:
        return len(self._expected)

    def expect(self, query: Query) -> None:
        if query in NO_REPLY:
            return
        if query is Query.CANCEL_WAIT and self._expected and self._expected[-1] is Query.WAIT:
            # torch's client cancels a wait it gave up on: the store answers WAIT_CANCELED, after the
            # STOP_WAITING it may already have sent for the wait itself.
            self._cancelled = True
            return
        self._expected.append(query)

    def feed(self, data: bytes) -> None:
        self._buf += data
        while self._expected and self._take(self._expected[0]):
            self._expected.popleft()
        if self._buf and not self._expected:
            raise Refused("the store sent bytes no request asked for")

    def _take(self, query: Query) -> bool:
        buf = self._buf
        if query is Query.PING:
            size = 4
        elif query is Query.ADD:
            size = 8
        elif query is Query.CHECK:
            size = 1
        elif query in (Query.WAIT, Query.CANCEL_WAIT):
            if not buf:
                return False
            if query is Query.WAIT and self._cancelled and buf[0] == 0 and len(buf) < 2:
                return False  # STOP_WAITING then the cancel's WAIT_CANCELED: wait for both
            size = 2 if query is Query.WAIT and self._cancelled and buf[0] == 0 else 1
            if query is Query.WAIT:
                self._cancelled = False
        else:  # GET, COMPARE_SET: a length-prefixed value
            if len(buf) < 8:
                return False
            size = 8 + struct.unpack_from("<Q", buf, 0)[0]
        if len(buf) < size:
            return False
        del buf[:size]
        return True


class _Short(Exception):
    pass


def _u64(buf: bytearray, at: int) -> tuple[int, int]:
    if len(buf) < at + 8:
        raise _Short
    return struct.unpack_from("<Q", buf, at)[0], at + 8


def _bytes(buf: bytearray, at: int, limit: int, what: str) -> tuple[bytes, int]:
    n, at = _u64(buf, at)
    if n > limit:
        raise Refused(f"a {what} of {n} bytes (at most {limit})")
    if len(buf) < at + n:
        raise _Short
    return bytes(buf[at : at + n]), at + n
