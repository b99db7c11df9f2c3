"""How ranks swap their signed contributions each diloco round: the :class:`Exchange` protocol and its two
implementations.

:class:`AllGatherExchange` is production: two all-gathers of raw bytes over the default
``torch.distributed`` group (gloo on CPU, nccl on GPU). :class:`InMemoryExchange` runs ranks as threads of
one process, for tests and benchmarks that need many ranks' real contributions cheaply; everything around
the exchange (screening, aggregation, the outer step) stays production code. Both return the same entries.

Trust: peers are untrusted. Nothing received is unpickled (``all_gather_object`` would be remote code
execution) and received lengths are capped before anything is allocated. A peer that dies or stalls makes
a collective fail or time out, which surfaces as :class:`GroupFailure` (see :func:`collective`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, Protocol

import torch
import torch.distributed as dist

from template.wire.signing import SIGNATURE_BYTES

__all__ = [
    "AllGatherExchange",
    "Entry",
    "Exchange",
    "GroupFailure",
    "InMemoryExchange",
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


class InMemoryExchange:
    """Ranks as threads of one process, meeting at a barrier. ``bind(rank)`` gives rank ``rank``'s
    :class:`Exchange` (pass it as ``Trainer(..., exchange=...)``); ``barrier.abort()`` frees the
    others when one rank's thread fails. Sends uncapped and unpadded: bytes_sent is payload +
    signature."""

    def __init__(self, n: int, timeout_s: float = 120.0):
        self.slots: list = [None] * n
        self.barrier = threading.Barrier(n, timeout=timeout_s)

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
