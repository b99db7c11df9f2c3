"""template.validator.evidence.fetch_round against real HTTP servers standing in for meta-miners, one per
miner hotkey: honest ones and hostile ones (a body of the wrong shape, 100 MiB, dripped a byte a second,
never answered, no server at all, no axon). The round's fetches run in parallel under one deadline: it
returns by then with every honest miner's evidence, and the others count as nothing served."""

from __future__ import annotations

import asyncio
import time

import pytest
from bittensor.sp_core import Keypair

from template.net.http import ServerThread, free_port
from template.validator.evidence import (
    MIN_RATE_BYTES_PER_S,
    fetch_round,
    round_deadline_s,
)
from tests.integration.test_miner_client import CONTRIBUTION, RECEIPT, ROUND, VALIDATOR, Peer, _raw

DEADLINE = 2.0
LATE = 0.5
HOSTILE = ["object", "number", "nested", "100 MiB", "drip"]


def _answers(peer: Peer, behaviour: str) -> dict:
    body = {"object": b"{}", "number": b"5", "nested": b"[" * 200_000 + b"]" * 200_000}
    if behaviour == "honest":
        peer.honest()
        return peer.answers
    if behaviour in body:
        return {"/v1/receipts": _raw(body[behaviour], "application/json")}
    return {"/v1/receipts": peer.huge() if behaviour == "100 MiB" else peer.drip()}


@pytest.fixture(scope="module")
def peers():
    """Meta-miners by behaviour, each for its own hotkey: (hotkey, axon, peer)."""
    made, threads = {}, []
    try:
        for behaviour in ["honest", "honest attester", "drip attester", *HOSTILE]:
            hotkey = Keypair.create_from_uri(f"//tensorswarm-fetch-round-{behaviour}").ss58_address
            peer = Peer(hotkey)
            threads.append(ServerThread(peer.app).start())
            made[behaviour] = (hotkey, threads[-1].url.removeprefix("http://"), peer)
        yield made
    finally:
        for thread in threads:
            thread.stop()


@pytest.fixture
def round_peers(peers):
    for behaviour, (_, _, peer) in peers.items():
        peer.callers = []
        peer.answers = _answers(peer, behaviour.removesuffix(" attester"))
    return peers


def test_one_deadline_for_the_round_and_every_honest_miner_audited(round_peers):
    names = ["honest", *HOSTILE, "unreachable", "no axon"]
    hotkeys = {name: round_peers[name][0] for name in names if name in round_peers}
    hotkeys["unreachable"] = Keypair.create_from_uri("//tensorswarm-fetch-round-unreachable").ss58_address
    hotkeys["no axon"] = Keypair.create_from_uri("//tensorswarm-fetch-round-no-axon").ss58_address
    axons = {hk: axon for hk, axon, _ in round_peers.values()}
    axons[hotkeys["unreachable"]] = f"127.0.0.1:{free_port()}"
    sample = [(rank, hotkeys[name]) for rank, name in enumerate(names)]
    attesters = [round_peers["drip attester"][0], round_peers["honest attester"][0]]

    started = time.monotonic()
    evidence, receipts = fetch_round(
        VALIDATOR, sample, attesters, axons, ROUND, max_bytes=len(CONTRIBUTION), deadline_s=DEADLINE
    )
    elapsed = time.monotonic() - started
    # Two drips, each of which alone holds its fetch to the deadline: in a row they would cost two.
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + LATE, elapsed
    assert [(e.rank, e.hotkey) for e in evidence] == sample
    assert (evidence[0].receipt, evidence[0].contribution) == (RECEIPT, CONTRIBUTION)
    for e in evidence[1:]:
        assert (e.receipt, e.contribution) == (None, None), e.hotkey
    assert receipts == [RECEIPT]  # the honest attester's; the dripping one's is left out
    # Every reachable miner was asked (signed by the validator), once for its receipt.
    for name in ["honest", *HOSTILE, "drip attester", "honest attester"]:
        asked = [hk for hk, _ in round_peers[name][2].callers]
        assert asked[:1] == [VALIDATOR.ss58_address], name
    assert len(round_peers["honest"][2].callers) == 2  # its receipt, then its contribution


def test_fetches_not_started_by_the_deadline_count_as_nothing_served(round_peers):
    # One fetch at a time: the drip holds the only worker until the deadline; the honest miner's fetch,
    # queued behind it, never starts, and the round still ends on time.
    sample = [(0, round_peers["drip"][0]), (1, round_peers["honest"][0])]
    axons = {hk: axon for hk, axon, _ in round_peers.values()}
    started = time.monotonic()
    evidence, receipts = fetch_round(
        VALIDATOR, sample, [], axons, ROUND, max_bytes=len(CONTRIBUTION), deadline_s=DEADLINE, max_parallel=1
    )
    assert time.monotonic() - started < DEADLINE + LATE
    assert [(e.receipt, e.contribution) for e in evidence] == [(None, None), (None, None)]
    assert receipts == [] and round_peers["honest"][2].callers == []


def test_an_honest_contribution_at_the_slowest_expected_rate_gets_through(round_peers):
    # 1 MiB served at MIN_RATE_BYTES_PER_S takes ~2 s: within the default deadline sized from the cap.
    hotkey, axon, peer = round_peers["honest"]
    blob = bytes(range(256)) * 4096
    block = 64 << 10

    async def paced():
        for i in range(0, len(blob), block):
            yield blob[i : i + block]
            await asyncio.sleep(block / MIN_RATE_BYTES_PER_S)

    peer.answers[f"/v1/contribution/{ROUND}"] = peer._streaming(paced, {"content-length": str(len(blob))})
    started = time.monotonic()
    evidence, _ = fetch_round(VALIDATOR, [(0, hotkey)], [], {hotkey: axon}, ROUND, max_bytes=len(blob))
    elapsed = time.monotonic() - started
    assert (evidence[0].receipt, evidence[0].contribution) == (RECEIPT, blob)
    assert len(blob) / MIN_RATE_BYTES_PER_S - 0.3 < elapsed < round_deadline_s(len(blob)), elapsed
