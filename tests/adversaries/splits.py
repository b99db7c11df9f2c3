"""Test-only parts for the contribution agreement (never production flags): in-process agreements that
apply the orchestrator's pure decision, and the attackers around it — a sender that sends some peers
garbage or a second signed payload (it splits their views), a member that lies in its report.

- :class:`HubAgreement` (threads of one process) and :class:`StoreAgreement` (processes of one gloo
  group, through its TCPStore) play the orchestrator: every rank posts its report, waits for all, and
  applies :func:`orchestrator.agreement.decide_contributions` — after checking each reported signature,
  as the orchestrator does — so every rank gets the same decision.
- :class:`SplitView` wraps a rank's in-memory exchange so it sees what a splitting sender sends it: the
  ranks in ``victims`` get the sender's block corrupted (or a second payload it signed).
  :class:`SplittingSender` is the same attack in a real process group, over
  :class:`template.engine.exchange.DirectExchange`.
- :class:`LyingAgreement` reports None for chosen senders and then follows the decision.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Optional

from orchestrator.agreement import decide_contributions
from template.engine.agreement import AgreedSet, Agreement
from template.engine.exchange import DirectExchange, Entry, Exchange
from template.wire.signing import contribution_message, verify_signature


def decide(n: int, reports: dict[int, list], context: str, round_: int, peers: Sequence[str]):
    """The orchestrator's decision from raw reports (rank → [(sha256, signature hex) | None]): entries
    whose signature does not verify make the whole report refused, as ``POST /v1/contributions`` does."""
    checked = {}
    for reporter, vector in reports.items():
        ok = all(
            e is None or verify_signature(peers[s], contribution_message(context, round_, s, e[0]), bytes.fromhex(e[1]))
            for s, e in enumerate(vector)
        )
        if ok:
            checked[reporter] = [None if e is None else e[0] for e in vector]
    return decide_contributions(n, checked)


def _agreed(outcome) -> AgreedSet:
    return AgreedSet(list(outcome.included), [list(x) for x in outcome.lacking], list(outcome.reasons))


class HubAgreement:
    """All ranks are threads of this process; ``bind(rank)`` gives rank ``rank``'s :class:`Agreement`.
    ``outcomes[round]`` keeps the full decision (suspects included) for the test to inspect."""

    def __init__(self, n: int, context: str, peers: Sequence[str], timeout_s: float = 120.0):
        self.n, self.context, self.peers = n, context, list(peers)
        self.barrier = threading.Barrier(n, timeout=timeout_s)
        self.reports: dict[int, dict[int, list]] = {}
        self.outcomes: dict[int, object] = {}
        self.lock = threading.Lock()

    def bind(self, rank: int) -> Agreement:
        hub = self

        class _Rank:
            def decide(self, round_, received):
                with hub.lock:
                    hub.reports.setdefault(round_, {})[rank] = [
                        None if e is None else (e[0], e[1].hex()) for e in received
                    ]
                hub.barrier.wait()
                with hub.lock:
                    if round_ not in hub.outcomes:
                        hub.outcomes[round_] = decide(hub.n, hub.reports[round_], hub.context, round_, hub.peers)
                    outcome = hub.outcomes[round_]
                hub.barrier.wait()
                return _agreed(outcome)

        return _Rank()


class StoreAgreement:
    """Rank ``rank`` of a real process group: reports go through the group's store (as JSON, one key per
    rank and round); every rank reads all of them and applies the same pure decision. The store stands
    in for the trusted orchestrator; ``last`` keeps the latest full decision for the test."""

    def __init__(self, store, rank: int, n: int, context: str, peers: Sequence[str], timeout_s: float = 60.0):
        self.store, self.rank, self.n, self.context, self.peers = store, rank, n, context, list(peers)
        self.timeout_s = timeout_s
        self.last = None

    def decide(self, round_: int, received) -> AgreedSet:
        vector = [None if e is None else (e[0], e[1].hex()) for e in received]
        self.store.set(f"agree/{round_}/{self.rank}", json.dumps(vector))
        keys = [f"agree/{round_}/{r}" for r in range(self.n)]
        deadline = time.monotonic() + self.timeout_s
        while not all(self.store.check([k]) for k in keys):
            if time.monotonic() > deadline:
                raise TimeoutError("reports did not arrive")
            time.sleep(0.01)
        reports = {r: json.loads(self.store.get(k)) for r, k in enumerate(keys)}
        self.last = decide(self.n, reports, self.context, round_, self.peers)
        return _agreed(self.last)


class LyingAgreement:
    """Reports None for ``senders`` (it cannot forge a signature, so hiding is all a liar can do) in
    ``rounds``, then follows the decision like everyone else."""

    def __init__(self, inner: Agreement, senders: Sequence[int], rounds: Optional[Sequence[int]] = None):
        self.inner, self.senders = inner, set(senders)
        self.rounds = None if rounds is None else set(rounds)  # None: every round

    def decide(self, round_, received):
        if self.rounds is not None and round_ not in self.rounds:
            return self.inner.decide(round_, received)
        return self.inner.decide(round_, [None if s in self.senders else e for s, e in enumerate(received)])


class SplitView:
    """Rank ``rank``'s in-memory exchange as a splitting sender delivers it: when ``rank`` is one of
    ``victims``, the blocks of ``senders`` arrive as ``forge(sender, entry)`` (default: one payload byte
    flipped, so the signature no longer verifies); every other rank gets the real blocks."""

    def __init__(
        self,
        inner: Exchange,
        rank: int,
        senders: Sequence[int],
        victims: Sequence[int],
        forge: Optional[Callable[[int, Entry], Entry]] = None,
    ):
        self.inner, self.rank, self.senders, self.victims = inner, rank, set(senders), set(victims)
        self.forge = forge or (lambda _s, e: e._replace(payload=_flip(e.payload)))

    def all_gather(self, payload, signature):
        entries, sent = self.inner.all_gather(payload, signature)
        if self.rank not in self.victims:
            return entries, sent
        return [self.forge(s, e) if s in self.senders and s != self.rank else e for s, e in enumerate(entries)], sent

    def send_to(self, dst, data):
        self.inner.send_to(dst, data)

    def recv_from(self, src, nbytes):
        return self.inner.recv_from(src, nbytes)


class SplittingSender(DirectExchange):
    """A real sender that flips the first payload byte of the block it sends to the peers in
    ``victims`` (the others get its real block)."""

    victims: frozenset = frozenset()

    def outgoing(self, peer: int, block):
        if peer not in self.victims:
            return block
        forged = block.clone()
        forged[_PAYLOAD_AT] ^= 0xFF
        return forged


_PAYLOAD_AT = 16 + 64  # a block: two int64 lengths, the signature slot, then the payload


def _flip(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else b"\x01"
