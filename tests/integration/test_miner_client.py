"""template.net.miner_client against a real HTTP server standing in for a meta-miner: an honest one (the
API's answers, checking the btauth/1 signature) and a hostile one (bodies of the wrong shape, too large,
too slow). Whatever a peer answers, the client raises only ``MinerError`` and the validator's fetches
(``template.validator.evidence.fetch_evidence`` / ``fetch_receipt``) turn that into "nothing served"."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from bittensor.sp_core import Keypair
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from template import wire as p
from template.net.auth import Authenticator
from template.net.http import ServerThread, free_port
from template.net.miner_client import RECEIPTS_MAX_BYTES, MinerClient, MinerError
from template.validator.evidence import fetch_evidence, fetch_receipt
from template.wire.signing import sign_receipt

MINER = Keypair.create_from_uri("//tensorswarm-miner-client-miner")
VALIDATOR = Keypair.create_from_uri("//tensorswarm-miner-client-validator")
ROUND = 3
CONTRIBUTION = bytes(range(256)) * 40
STATUS = p.MinerStatus(hotkey=MINER.ss58_address, generation=1, rank=0, world_size=2, round=ROUND, state="training")


def _receipt() -> p.SignedReceipt:
    receipt = p.Receipt(
        hotkey=MINER.ss58_address,
        run_id="run-client",
        generation=1,
        round=ROUND,
        rank=0,
        start_state="a" * 64,
        end_state="b" * 64,
        seed=7,
        losses=[3.5, 3.25],
        contribution_sha256="c" * 64,
        contribution_norm=1.5,
        contribution_bytes=len(CONTRIBUTION),
        dropped={1: "late"},
        received_sha256=["c" * 64, None],
        created_at=1.0,
    )
    return sign_receipt(receipt, MINER.sign)


RECEIPT = _receipt()


class Peer:
    """A meta-miner's address whose answers the test sets per path: ``answers[path]`` is a callable
    returning a Response (missing: 404). Every request must carry a valid signature for the miner's
    hotkey; the signers' hotkeys are recorded in ``callers``."""

    def __init__(self):
        self.answers: dict[str, object] = {}
        self.callers: list[tuple[str, str]] = []  # (hotkey, query)
        self.streamed = 0  # bytes a streaming answer has produced
        self.stream_done = threading.Event()
        auth = Authenticator(MINER.ss58_address, None)
        self.app = FastAPI()

        @self.app.get("/{path:path}")
        async def answer(path: str, request: Request) -> Response:
            caller = await auth.signed(request)
            self.callers.append((caller.hotkey, request.url.query))
            make = self.answers.get("/" + path)
            return Response(status_code=404) if make is None else await make()

    def honest(self) -> None:
        self.answers = {
            "/v1/receipts": _json([RECEIPT.model_dump(mode="json")]),
            f"/v1/contribution/{ROUND}": _raw(CONTRIBUTION),
            "/v1/status": _json(STATUS.model_dump(mode="json")),
        }

    def endless(self, chunk: int = 64 << 10):
        """A chunked answer (no Content-Length) that never ends: a client that does not stop reading
        at its cap never returns."""

        async def make():
            async def body():
                try:
                    block = bytes(chunk)
                    while True:
                        self.streamed += chunk
                        yield block
                        await asyncio.sleep(0)  # let the server notice the client hanging up
                finally:
                    self.stream_done.set()

            self.streamed = 0
            self.stream_done.clear()
            return StreamingResponse(body(), media_type="application/json")

        return make


def _raw(body: bytes, media_type: str = "application/octet-stream"):
    async def make():
        return Response(body, media_type=media_type)

    return make


def _json(value) -> object:
    return _raw(json.dumps(value).encode(), "application/json")


@pytest.fixture(scope="module")
def server():
    peer = Peer()
    with ServerThread(peer.app) as thread:
        peer.url = thread.url
        peer.axon = thread.url.removeprefix("http://")
        yield peer


@pytest.fixture
def peer(server):
    server.answers, server.callers = {}, []
    return server


def _client(peer, timeout: float = 5.0) -> MinerClient:
    return MinerClient(peer.url, VALIDATOR, MINER.ss58_address, timeout=timeout)


def test_an_honest_miner_is_read_into_wire_models(peer):
    peer.honest()
    with _client(peer) as miner:
        assert miner.receipt(ROUND) == RECEIPT
        assert miner.receipts(since=0, limit=5) == [RECEIPT]
        assert miner.contribution(ROUND, max_bytes=len(CONTRIBUTION)) == CONTRIBUTION  # the cap is inclusive
        assert miner.status() == STATUS
    # Every request was signed by the validator, for the miner's hotkey (the server verified it).
    assert [hk for hk, _ in peer.callers] == [VALIDATOR.ss58_address] * 4
    assert peer.callers[0][1] == f"round={ROUND}" and peer.callers[1][1] == "since=0&limit=5"
    evidence = fetch_evidence(VALIDATOR, MINER.ss58_address, 0, peer.axon, ROUND, max_bytes=len(CONTRIBUTION))
    assert (evidence.receipt, evidence.contribution) == (RECEIPT, CONTRIBUTION)
    assert fetch_receipt(VALIDATOR, MINER.ss58_address, peer.axon, ROUND) == RECEIPT


def test_what_is_not_there_is_none(peer):
    with _client(peer) as miner:
        assert miner.receipts(round=ROUND) == [] and miner.receipt(ROUND) is None
        assert miner.contribution(ROUND, max_bytes=1 << 20) is None
        assert miner.status() is None
    peer.answers = {"/v1/receipts": _json([])}
    assert fetch_receipt(VALIDATOR, MINER.ss58_address, peer.axon, ROUND) is None
    # A receipt but no contribution: the receipt is kept (its step-0 claim can still be checked).
    peer.honest()
    del peer.answers[f"/v1/contribution/{ROUND}"]
    evidence = fetch_evidence(VALIDATOR, MINER.ss58_address, 0, peer.axon, ROUND, max_bytes=1 << 20)
    assert (evidence.receipt, evidence.contribution) == (RECEIPT, None)


BAD_RECEIPTS = {
    "object": b"{}",
    "number": b"5",
    "null": b"null",
    "string": b'"receipts"',
    "numbers": b"[5, 6]",
    "strings": b'["x"]',
    "lists": b"[[]]",
    "empty object": b"[{}]",
    "wrong fields": json.dumps([{"receipt": 1, "signature": "00"}]).encode(),
    "extra field": json.dumps([{**RECEIPT.model_dump(mode="json"), "extra": 1}]).encode(),
    "not json": b"<html>hello</html>",
    "not utf-8": b"\xff\xfe[",
    "nested": b"[" * 200_000 + b"]" * 200_000,
}


@pytest.mark.parametrize("body", BAD_RECEIPTS.values(), ids=BAD_RECEIPTS.keys())
def test_receipts_of_the_wrong_shape_are_refused(peer, body):
    peer.honest()
    peer.answers["/v1/receipts"] = _raw(body, "application/json")
    with _client(peer) as miner, pytest.raises(MinerError, match="/v1/receipts"):
        miner.receipt(ROUND)
    # The validator sees nothing served, and nothing escapes.
    assert fetch_receipt(VALIDATOR, MINER.ss58_address, peer.axon, ROUND) is None
    evidence = fetch_evidence(VALIDATOR, MINER.ss58_address, 0, peer.axon, ROUND, max_bytes=1 << 20)
    assert (evidence.receipt, evidence.contribution) == (None, None)


@pytest.mark.parametrize("body", [b"[]", b"5", b"{}", b'{"hotkey": 5}', b"nope"])
def test_a_status_of_the_wrong_shape_is_refused(peer, body):
    peer.answers = {"/v1/status": _raw(body, "application/json")}
    with _client(peer) as miner, pytest.raises(MinerError, match="/v1/status"):
        miner.status()


def test_oversized_answers_are_cut_off(peer):
    peer.honest()
    # Declared too large: refused before reading the body.
    peer.answers["/v1/receipts"] = _raw(b" " * (RECEIPTS_MAX_BYTES + 1), "application/json")
    with _client(peer) as miner, pytest.raises(MinerError, match="exceeds"):
        miner.receipt(ROUND)
    with _client(peer) as miner, pytest.raises(MinerError, match="exceeds"):
        miner.contribution(ROUND, max_bytes=len(CONTRIBUTION) - 1)
    evidence = fetch_evidence(VALIDATOR, MINER.ss58_address, 0, peer.axon, ROUND, max_bytes=len(CONTRIBUTION) - 1)
    assert (evidence.receipt, evidence.contribution) == (None, None)
    # Chunked, with no length and no end: reading stops at the cap.
    peer.answers["/v1/receipts"] = peer.endless()
    started = time.monotonic()
    with _client(peer) as miner, pytest.raises(MinerError, match=f"exceeds {RECEIPTS_MAX_BYTES} bytes"):
        miner.receipt(ROUND)
    assert time.monotonic() - started < 10
    assert peer.stream_done.wait(10), "the peer kept streaming after the client hung up"
    print(f"the endless peer produced {peer.streamed >> 20} MiB before it noticed")


def test_slow_and_absent_peers_are_errors_not_hangs(peer):
    async def slow():
        await asyncio.sleep(3)
        return Response(b"[]", media_type="application/json")

    peer.answers = {"/v1/receipts": slow}
    started = time.monotonic()
    with _client(peer, timeout=0.5) as miner, pytest.raises(MinerError, match="Timeout"):
        miner.receipt(ROUND)
    assert time.monotonic() - started < 2.5
    nobody = f"127.0.0.1:{free_port()}"
    with MinerClient(f"http://{nobody}", VALIDATOR, MINER.ss58_address) as miner, pytest.raises(MinerError):
        miner.receipt(ROUND)
    assert fetch_receipt(VALIDATOR, MINER.ss58_address, nobody, ROUND) is None
    # An axon published on chain can be any string.
    assert fetch_receipt(VALIDATOR, MINER.ss58_address, "[::1", ROUND) is None
    evidence = fetch_evidence(VALIDATOR, MINER.ss58_address, 0, "host:1:2", ROUND, max_bytes=1)
    assert (evidence.receipt, evidence.contribution) == (None, None)
