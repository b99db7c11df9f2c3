"""How ranks swap their signed contributions each diloco round: the :class:`Exchange` protocol and its
implementations.

:class:`AllGatherExchange` is production: two all-gathers of raw bytes over the default
``torch.distributed`` group (gloo on CPU, nccl on GPU). :class:`RingExchange` is the same all-gather
spelled out as gloo runs it — a ring of point-to-point sends in which every rank relays its left
neighbour's blocks — so that what a relay forwards is visible (:meth:`RingExchange.relay`; a test
adversary overrides it to corrupt the blocks it relays, in a real process group).
:class:`InMemoryExchange` runs ranks as threads of one process, for tests and benchmarks that need many
ranks' real contributions cheaply; everything around the exchange (screening, aggregation, the outer
step) stays production code. All return the same entries.

Every exchange also offers a point-to-point channel (``send_to``/``recv_from``, fixed sizes): the
agreement's repair (:func:`template.engine.agreement.repair`) moves a contribution from a holder to a
rank that lacks it directly, never through a relay.

Trust: peers are untrusted. Nothing received is unpickled (``all_gather_object`` would be remote code
execution) and received lengths are capped before anything is allocated. A peer that dies or stalls makes
a collective fail or time out, which surfaces as :class:`GroupFailure` (see :func:`collective`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, Optional, Protocol

import torch
import torch.distributed as dist

from template.wire.signing import SIGNATURE_BYTES

__all__ = [
    "AllGatherExchange",
    "Entry",
    "Exchange",
    "GroupFailure",
    "InMemoryExchange",
    "RingExchange",
    "collective",
    "comm_device",
]


class GroupFailure(RuntimeError):
    """A collective failed or timed out (a peer died, stalled or broke the protocol). The process
    group is unusable afterwards and the trainer is mid-round: the caller reports it and exits with
    a distinct code; the next generation starts from a load()ed agreed state."""


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed collective (peer gone, timeout, size mismatch) into :class:`GroupFailure`."""
    try:
        yield
    except GroupFailure:
        raise
    except RuntimeError as e:  # DistBackendError, DistNetworkError, gloo/nccl errors, timeouts
        raise GroupFailure(f"{what} failed: {e}") from e


class Entry(NamedTuple):
    """What arrived from one rank: the lengths it claimed, and its (capped) payload and signature."""

    length: int
    sig_len: int
    payload: bytes
    signature: bytes


class Exchange(Protocol):
    def all_gather(self, payload: bytes, signature: bytes) -> tuple[list[Entry], int]:
        """Send this rank's (payload, signature) to every rank and receive everyone's. Returns one
        :class:`Entry` per rank, in rank order (this rank's included), and the bytes this rank sent."""
        ...

    def send_to(self, dst: int, data: bytes) -> None:
        """Send ``data`` to rank ``dst`` directly (the receiver names the same size)."""
        ...

    def recv_from(self, src: int, nbytes: int) -> bytes:
        """Receive exactly ``nbytes`` sent by rank ``src`` with :meth:`send_to`."""
        ...


def comm_device(device: torch.device) -> torch.device:
    """Where collectives' tensors must live: nccl moves only GPU tensors, gloo takes CPU tensors.
    Needs the default process group."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


class AllGatherExchange:
    """All-gather every rank's (payload, signature) as raw bytes over the default process group.

    Step 1 gathers each rank's claimed lengths as int64. Step 2 gathers one uint8 buffer per rank: a
    fixed 64-byte signature slot, then the payload, padded to the longest claimed length *after
    capping it* at ``max_bytes``, so a peer cannot make the others allocate more than
    world_size × (cap + 64) bytes. Every rank computes the same padded width from the same gathered
    lengths. ``device`` is the collectives' device (:func:`comm_device`).
    """

    def __init__(self, world_size: int, max_bytes: int, device: torch.device):
        self.world_size, self.max_bytes, self.device = world_size, max_bytes, device

    def all_gather(self, payload: bytes, signature: bytes) -> tuple[list[Entry], int]:
        n, cap, dev = self.world_size, self.max_bytes, self.device
        header = torch.tensor([len(payload), len(signature)], dtype=torch.int64, device=dev)
        headers = [torch.empty(2, dtype=torch.int64, device=dev) for _ in range(n)]
        with collective("contribution length exchange"):
            dist.all_gather(headers, header)
        claims = [(int(h[0]), int(h[1])) for h in headers]
        width = SIGNATURE_BYTES + max(min(max(length, 0), cap) for length, _ in claims)

        # This rank's slot: signature (zero-padded to 64) + payload (capped, zero-padded to width).
        mine = signature[:SIGNATURE_BYTES].ljust(SIGNATURE_BYTES, b"\0")
        mine += payload[: width - SIGNATURE_BYTES].ljust(width - SIGNATURE_BYTES, b"\0")
        buf = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(dev)
        bufs = [torch.empty(width, dtype=torch.uint8, device=dev) for _ in range(n)]
        with collective("contribution exchange"):
            dist.all_gather(bufs, buf)

        entries = []
        for (length, sig_len), b in zip(claims, bufs):
            raw = b.cpu().numpy().tobytes()
            body_len = min(max(length, 0), cap)
            sig = raw[: min(max(sig_len, 0), SIGNATURE_BYTES)]
            entries.append(Entry(length, sig_len, raw[SIGNATURE_BYTES : SIGNATURE_BYTES + body_len], sig))
        return entries, header.numel() * 8 + width

    def send_to(self, dst: int, data: bytes) -> None:
        with collective(f"sending to rank {dst}"):
            dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device), dst)

    def recv_from(self, src: int, nbytes: int) -> bytes:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        with collective(f"receiving from rank {src}"):
            dist.recv(buf, src)
        return buf.cpu().numpy().tobytes()


_HEADER = 16  # a ring block's claimed payload and signature lengths, two little-endian int64


class RingExchange(AllGatherExchange):
    """The all-gather as gloo's ring runs it (``gloo::allgather``: rank k receives from k−1 and sends
    to k+1, n−1 steps, each forwarding the block received in the step before), over point-to-point
    sends on the default group. A block is one rank's claimed lengths, signature slot and payload,
    padded to a fixed width (16 + 64 + the cap): no size is negotiated, so one collective carries it
    all and no peer makes another allocate more than n blocks. Same bytes per link and step as gloo's
    all-gather of the padded slots; ``scripts/bench/ring_exchange.py`` measures the two.

    :meth:`relay` is what this rank forwards of another rank's block: the block itself. Honest ranks
    never change it; a test adversary overrides it to corrupt what the ranks after it receive.
    """

    def all_gather(self, payload: bytes, signature: bytes) -> tuple[list[Entry], int]:
        n, cap, dev = self.world_size, self.max_bytes, self.device
        rank = dist.get_rank()
        width = _HEADER + SIGNATURE_BYTES + cap
        mine = len(payload).to_bytes(8, "little", signed=True) + len(signature).to_bytes(8, "little", signed=True)
        mine += signature[:SIGNATURE_BYTES].ljust(SIGNATURE_BYTES, b"\0") + payload[:cap].ljust(cap, b"\0")
        blocks: list[Optional[torch.Tensor]] = [None] * n
        blocks[rank] = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(dev)
        right, left = (rank + 1) % n, (rank - 1) % n
        for step in range(n - 1):
            out_of, into = (rank - step) % n, (rank - step - 1) % n
            # The block received in the step before goes on unchanged (tensors in, tensors out: no copy).
            outgoing = blocks[out_of] if step == 0 else self.relay(out_of, blocks[out_of])
            buf = torch.empty(width, dtype=torch.uint8, device=dev)
            with collective("contribution ring exchange"):
                sending = dist.isend(outgoing, right)
                receiving = dist.irecv(buf, left)
                receiving.wait()
                sending.wait()
            blocks[into] = buf
        return [self._entry(b.cpu().numpy().tobytes()) for b in blocks], width

    def relay(self, sender: int, block: torch.Tensor) -> torch.Tensor:
        """What this rank forwards of ``sender``'s block (uint8, the fixed width; honest: itself)."""
        return block

    def _entry(self, block: bytes) -> Entry:
        length = int.from_bytes(block[:8], "little", signed=True)
        sig_len = int.from_bytes(block[8:16], "little", signed=True)
        body = block[_HEADER + SIGNATURE_BYTES :][: min(max(length, 0), self.max_bytes)]
        return Entry(length, sig_len, body, block[_HEADER : _HEADER + min(max(sig_len, 0), SIGNATURE_BYTES)])


class InMemoryExchange:
    """Ranks as threads of one process, meeting at a barrier. ``bind(rank)`` gives rank ``rank``'s
    :class:`Exchange` (pass it as ``Trainer(..., exchange=...)``); ``barrier.abort()`` frees the
    others when one rank's thread fails. Sends uncapped and unpadded: bytes_sent is payload +
    signature."""

    def __init__(self, n: int, timeout_s: float = 120.0):
        self.slots: list = [None] * n
        self.barrier = threading.Barrier(n, timeout=timeout_s)
        self.timeout_s = timeout_s
        # One mailbox per ordered pair of ranks: the point-to-point channel (FIFO, like a socket).
        self.mail = {(a, b): queue.Queue() for a in range(n) for b in range(n)}

    def bind(self, rank: int) -> Exchange:
        return _InMemoryRank(self, rank)


class _InMemoryRank:
    def __init__(self, hub: InMemoryExchange, rank: int):
        self.hub, self.rank = hub, rank

    def all_gather(self, payload: bytes, signature: bytes) -> tuple[list[Entry], int]:
        self.hub.slots[self.rank] = (payload, signature)
        self.hub.barrier.wait()
        entries = [Entry(len(p), len(s), p, s) for p, s in self.hub.slots]
        self.hub.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return entries, len(payload) + len(signature)

    def send_to(self, dst: int, data: bytes) -> None:
        self.hub.mail[(self.rank, dst)].put(bytes(data))

    def recv_from(self, src: int, nbytes: int) -> bytes:
        try:
            data = self.hub.mail[(src, self.rank)].get(timeout=self.hub.timeout_s)
        except queue.Empty:
            raise GroupFailure(f"receiving from rank {src} timed out") from None
        if len(data) != nbytes:  # gloo refuses a send and receive of different sizes too
            raise GroupFailure(f"rank {src} sent {len(data)} bytes, {nbytes} expected")
        return data
