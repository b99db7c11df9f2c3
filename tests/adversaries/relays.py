"""Test-only parts for the contribution agreement (never production flags): in-process agreements that
apply the orchestrator's pure decision, and the attackers around it — a ring relay that corrupts the
blocks it forwards, a member that lies in its report, a sender that equivocates through a colluding relay.

- :class:`HubAgreement` (threads of one process) and :class:`StoreAgreement` (processes of one gloo
  group, through its TCPStore) play the orchestrator: every rank posts its report, waits for all, and
  applies :func:`orchestrator.agreement.decide_contributions` — after checking each reported signature,
  as the orchestrator does — so every rank gets the same decision.
- :class:`RingView` wraps a rank's in-memory exchange so it sees what gloo's ring would deliver when rank
  ``relay`` corrupts (or substitutes) a sender's block: ranks after the relay on the sender's ring path
  get the relay's version. :class:`CorruptingRing` is the same attack in a real process group, over
  :class:`template.engine.exchange.RingExchange`.
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
from template.engine.exchange import Entry, Exchange, RingExchange
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


def behind(relay: int, sender: int, rank: int, n: int) -> bool:
    """Whether ``rank`` receives ``sender``'s block through ``relay`` on gloo's ring (k−1 → k)."""
    return (rank - sender) % n > (relay - sender) % n > 0


class RingView:
    """Rank ``rank``'s in-memory exchange as the ring delivers it when ``relay`` replaces the blocks
    of ``senders`` that it forwards with ``forge(sender, entry)`` (default: one payload byte flipped,
    so the signature no longer verifies)."""

    def __init__(
        self,
        inner: Exchange,
        rank: int,
        n: int,
        relay: int,
        senders: Sequence[int],
        forge: Optional[Callable[[int, Entry], Entry]] = None,
    ):
        self.inner, self.rank, self.n, self.relay, self.senders = inner, rank, n, relay, set(senders)
        self.forge = forge or (lambda _s, e: e._replace(payload=_flip(e.payload)))

    def all_gather(self, payload, signature):
        entries, sent = self.inner.all_gather(payload, signature)
        return [
            self.forge(s, e) if s in self.senders and behind(self.relay, s, self.rank, self.n) else e
            for s, e in enumerate(entries)
        ], sent

    def send_to(self, dst, data):
        self.inner.send_to(dst, data)

    def recv_from(self, src, nbytes):
        return self.inner.recv_from(src, nbytes)


class CorruptingRing(RingExchange):
    """A real ring relay that flips the first payload byte of every block it forwards for ``senders``."""

    senders: frozenset = frozenset()

    def relay(self, sender: int, block):
        if sender not in self.senders:
            return block
        forged = block.clone()
        forged[_PAYLOAD_AT] ^= 0xFF
        return forged


_PAYLOAD_AT = 16 + 64  # a ring block: two int64 lengths, the signature slot, then the payload


def _flip(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else b"\x01"
