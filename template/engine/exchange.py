"""How ranks swap their signed contributions each diloco round: the :class:`Exchange` protocol and its
implementations.

:class:`DirectExchange` is production on CPU (gloo): every rank sends its block straight to every other
rank, so nothing a rank receives passed through a third rank (a relay could corrupt it and leave the
receivers unable to tell who did). :class:`AllGatherExchange` is two all-gathers of raw bytes over the
default ``torch.distributed`` group (the trainer's default, and the nccl path on GPU: a ring inside the
library).
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

import datetime
import queue
import threading
import time
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
    "DirectExchange",
    "collective",
    "comm_device",
]


class GroupFailure(RuntimeError):
    """A collective failed or timed out (a peer died, stalled or broke the protocol). The process
    group is unusable afterwards and the trainer is mid-round: the caller reports it and exits with
    a distinct code; the next generation starts from a load()ed agreed state. ``missing``: the ranks
    this rank waited for in vain, where it can tell (a point-to-point receive names its peer).
    ``unnamed_connect``: the group never formed because gloo's connect timed out with no peer to name."""

    def __init__(self, message: str, missing: tuple[int, ...] = (), unnamed_connect: bool = False):
        super().__init__(message)
        self.missing = tuple(missing)
        self.unnamed_connect = unnamed_connect


def group_timeout() -> Optional[datetime.timedelta]:
    """The default group's timeout for a point-to-point wait on gloo, where a bare ``wait()`` would use the
    timeout the group connected with (``template.miner.group.connect_timeout_s``: shorter); None elsewhere."""
    if dist.get_backend() != "gloo":
        return None
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    return backend.options._timeout


def _left(deadline: Optional[float]) -> Optional[datetime.timedelta]:
    """What is left until ``deadline`` (``time.monotonic``), at least a millisecond: a link whose work is
    done by then still completes; None when there is no deadline."""
    if deadline is None:
        return None
    return datetime.timedelta(seconds=max(deadline - time.monotonic(), 0.001))


def _wait(work, timeout: Optional[datetime.timedelta]) -> None:
    if timeout is None:
        work.wait()
    else:
        work.wait(timeout)


@contextmanager
def collective(what: str, missing: tuple[int, ...] = ()) -> Iterator[None]:
    """Turn a failed collective (peer gone, timeout, size mismatch) into :class:`GroupFailure`
    (naming ``missing`` as the peers it waited for)."""
    try:
        yield
    except GroupFailure:
        raise
    except RuntimeError as e:  # DistBackendError, DistNetworkError, gloo/nccl errors, timeouts
        raise GroupFailure(f"{what} failed: {e}", missing) from e


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
        with collective(f"sending to rank {dst}", (dst,)):
            # dist.send is isend().wait(): the same, with the group's timeout
            _wait(
                dist.isend(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device), dst), group_timeout()
            )

    def recv_from(self, src: int, nbytes: int) -> bytes:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        with collective(f"receiving from rank {src}", (src,)):
            _wait(dist.irecv(buf, src), group_timeout())
        return buf.cpu().numpy().tobytes()


_HEADER = 16  # a block's claimed payload and signature lengths, two little-endian int64


class DirectExchange(AllGatherExchange):
    """The all-gather with no relays: every rank sends its own block straight to every other rank
    (point-to-point over the default group, all links at once: ``dist.batch_isend_irecv``), so every
    byte a rank receives comes from the rank that signed it.

    Why not the ring that gloo's all-gather runs (rank k forwards k−1's blocks to k+1): there every
    rank relays the others' contributions, and a relay that corrupts a block hands the ranks after it
    something its sender never sent — the receivers cannot prove which of sender and relay did it, and
    two adjacent colluders can make an honest relay look guilty. Sent directly, a block that fails its
    signature is its sender's doing (or its link's), and what a sender sends is its own business: the
    agreement (:mod:`template.engine.agreement`) includes it only when a majority holds it. The cost
    is the same: a rank sends its block to n − 1 peers where the ring sends n − 1 blocks to one
    (``scripts/bench/exchange.py`` measures both against gloo's all-gather), in one step instead of
    n − 1 sequential ones.

    A block is the claimed lengths, the signature slot and the payload, padded to a fixed width (16 +
    64 + the cap): no size is negotiated, so one collective carries it all and no peer makes another
    allocate more than n blocks. :meth:`outgoing` is what this rank sends to one peer: its own block
    to every peer (a test adversary overrides it to send some peers something else).

    ``straggler`` (floor seconds, factor), on gloo: once a strict majority's blocks are in (this rank's
    own counts), the rest get the longer of the floor and factor × this rank's time since its previous
    exchange (its round), not the group's whole timeout; a peer whose block is later is named as
    missing. A member that sends just inside the timeout every round would otherwise hold every round
    that long and never be named. The first exchange of a group (no round to measure yet) waits the
    timeout.
    """

    def __init__(
        self,
        world_size: int,
        max_bytes: int,
        device: torch.device,
        straggler: Optional[tuple[float, float]] = None,
    ):
        super().__init__(world_size, max_bytes, device)
        self.straggler = straggler
        self.last_end: Optional[float] = None  # when this rank's previous exchange ended
        # Seconds added to the next exchange's deadline, then cleared: a rank that skipped the round's inner steps
        # (a round carried across a re-form) waits as long for a peer that trains them as it would have trained.
        self.allowance_s = 0.0

    def all_gather(self, payload: bytes, signature: bytes) -> tuple[list[Entry], int]:
        n, cap, dev = self.world_size, self.max_bytes, self.device
        rank = dist.get_rank()
        width = _HEADER + SIGNATURE_BYTES + cap
        mine = len(payload).to_bytes(8, "little", signed=True) + len(signature).to_bytes(8, "little", signed=True)
        mine += signature[:SIGNATURE_BYTES].ljust(SIGNATURE_BYTES, b"\0") + payload[:cap].ljust(cap, b"\0")
        block = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(dev)
        blocks: list[torch.Tensor] = [
            block if r == rank else torch.empty(width, dtype=torch.uint8, device=dev) for r in range(n)
        ]
        peers = [peer for peer in range(n) if peer != rank]
        ops = []
        for peer in peers:
            ops.append(dist.P2POp(dist.isend, self.outgoing(peer, block), peer))
            ops.append(dist.P2POp(dist.irecv, blocks[peer], peer))
        if ops:
            failed: dict[int, str] = {}
            if dist.get_backend() == "gloo":
                # Issued one by one: a link already broken when this rank gets to it (a peer that died) fails
                # that link alone, and this rank's block still reaches every other peer — which would
                # otherwise name this rank as missing too, next to the dead one.
                works = []
                for op in ops:
                    try:
                        works.append(op.op(op.tensor, op.peer))
                    except RuntimeError as error:
                        failed.setdefault(op.peer, str(error))
                        works.append(None)
            else:
                with collective("contribution exchange"):
                    works = dist.batch_isend_irecv(ops)
                if len(works) != len(ops):  # coalesced into one work (nccl): no link to tell apart
                    with collective("contribution exchange"):
                        for work in works:
                            work.wait()
                    return [self._entry(b.cpu().numpy().tobytes()) for b in blocks], width * (n - 1)
            # gloo: each link on its own. A peer that never sends (or never takes what it is sent) fails
            # only its own link's operations, after the group's timeout, so this rank knows by name whom it
            # waited for in vain.
            # One deadline for the whole exchange: k colluders each sending just inside a fresh timeout
            # would otherwise hold this rank k timeouts, with nobody named.
            timeout = group_timeout()
            began = time.monotonic()
            deadline = None if timeout is None else began + timeout.total_seconds() + self.allowance_s
            self.allowance_s = 0.0
            links: dict[int, list] = {}
            for i, work in enumerate(works):
                if work is not None:
                    links.setdefault(peers[i // 2], []).append(work)
            grace = self._grace(began)
            if grace is None:
                for peer, peer_works in links.items():
                    for work in peer_works:
                        try:
                            _wait(work, _left(deadline))
                        except RuntimeError as error:
                            failed.setdefault(peer, str(error))
            else:
                failed.update(_wait_links(links, deadline, grace, quorum=n // 2 + 1) | failed)
            self.last_end = time.monotonic()
            if failed:
                raise GroupFailure(
                    f"contribution exchange: no block from rank(s) {sorted(failed)} within the timeout "
                    f"({next(iter(failed.values()))[:200]})",
                    tuple(sorted(failed)),
                )
        return [self._entry(b.cpu().numpy().tobytes()) for b in blocks], width * (n - 1)

    def _grace(self, began: float) -> Optional[float]:
        if self.straggler is None or self.last_end is None:
            return None
        floor_s, factor = self.straggler
        return max(floor_s, factor * (began - self.last_end))

    def outgoing(self, peer: int, block: torch.Tensor) -> torch.Tensor:
        """What this rank sends to ``peer`` (uint8, the fixed width; honest: its own block to all)."""
        return block

    def _entry(self, block: bytes) -> Entry:
        length = int.from_bytes(block[:8], "little", signed=True)
        sig_len = int.from_bytes(block[8:16], "little", signed=True)
        body = block[_HEADER + SIGNATURE_BYTES :][: min(max(length, 0), self.max_bytes)]
        return Entry(length, sig_len, body, block[_HEADER : _HEADER + min(max(sig_len, 0), SIGNATURE_BYTES)])


def _wait_links(links: dict[int, list], deadline: Optional[float], grace: float, quorum: int) -> dict[int, str]:
    """Wait for every peer's links (its send and receive works) at once, one thread per peer (a gloo work
    cannot be polled, and one whose wait timed out never completes), until each is done or failed, or
    ``grace`` after this rank and the peers done make ``quorum``. Returns the peers that failed, or were
    not done by then (named as stragglers), with why. A straggler's thread waits on to the group's
    deadline in the background: its work holds the gloo context it needs, so the group may go meanwhile."""
    finished: dict[int, Optional[str]] = {}
    done = threading.Condition()

    def wait_peer(peer: int, works: list) -> None:
        error = None
        for work in works:
            try:
                _wait(work, _left(deadline))
            except RuntimeError as e:
                error = error or str(e)
        with done:
            finished[peer] = error
            done.notify_all()

    for peer, works in links.items():
        threading.Thread(target=wait_peer, args=(peer, works), name=f"link-{peer}", daemon=True).start()
    cut: Optional[float] = None
    with done:
        while len(finished) < len(links):
            if cut is None and 1 + sum(1 for e in finished.values() if e is None) >= quorum:
                cut = time.monotonic() + grace if deadline is None else min(deadline, time.monotonic() + grace)
            limit = cut if cut is not None else deadline
            left = None if limit is None else limit - time.monotonic()
            if left is not None and left <= 0:
                break
            done.wait(left)
        failed = {peer: error for peer, error in finished.items() if error is not None}
    for peer in links:
        if peer not in finished:
            failed[peer] = f"its block came no sooner than {grace:.1f}s after a majority's (a straggler)"
    return failed


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
