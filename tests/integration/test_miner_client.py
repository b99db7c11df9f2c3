"""template.net.miner_client against a real HTTP server standing in for a meta-miner: an honest one (the
API's answers, checking the btauth/1 signature) and a hostile one (bodies of the wrong shape, too large,
too slow, dripped a byte a second in the body or in the headers, never answered, never accepted). Whatever
a peer answers, the client raises only ``MinerError`` within its total deadline, and the validator's
fetches (``template.validator.evidence.fetch_evidence`` / ``fetch_receipt``) turn that into "nothing
served"."""

from __future__ import annotations

import asyncio
import json
import socket
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
from template.validator.evidence import RECEIPT_DEADLINE_S, fetch_evidence, fetch_receipt
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
    hotkey (``hotkey``, default MINER's); the signers' hotkeys are recorded in ``callers``."""

    def __init__(self, hotkey: str = MINER.ss58_address):
        self.answers: dict[str, object] = {}
        self.callers: list[tuple[str, str]] = []  # (hotkey, query)
        self.encodings: list[str | None] = []  # each request's Accept-Encoding
        self.streamed = 0  # bytes a streaming answer has produced
        self.stream_done = threading.Event()
        auth = Authenticator(hotkey, None)
        self.app = FastAPI()

        @self.app.get("/{path:path}")
        async def answer(path: str, request: Request) -> Response:
            caller = await auth.signed(request)
            self.callers.append((caller.hotkey, request.url.query))
            self.encodings.append(request.headers.get("accept-encoding"))
            make = self.answers.get("/" + path)
            return Response(status_code=404) if make is None else await make()

    def honest(self) -> None:
        self.answers = {
            "/v1/receipts": _json([RECEIPT.model_dump(mode="json")]),
            f"/v1/contribution/{ROUND}": _raw(CONTRIBUTION),
            "/v1/status": _json(STATUS.model_dump(mode="json")),
        }

    def _streaming(self, blocks, headers: dict | None = None):
        """An answer streaming ``blocks()`` (an async iterator); ``streamed`` counts what it produced and
        ``stream_done`` is set once it stopped (ended, or the client hung up)."""

        async def make():
            async def body():
                try:
                    async for block in blocks():
                        self.streamed += len(block)
                        yield block
                finally:
                    self.stream_done.set()

            self.streamed = 0
            self.stream_done.clear()
            return StreamingResponse(body(), media_type="application/json", headers=headers)

        return make

    def drip(self, interval: float = 1.0):
        """A 200 answer whose body never ends, one byte per ``interval`` seconds."""

        async def blocks():
            while True:
                yield b" "
                await asyncio.sleep(interval)

        return self._streaming(blocks)

    def huge(self, size: int = 100 << 20):
        """A 200 answer declaring (Content-Length) and streaming ``size`` bytes."""

        async def blocks():
            block = bytes(64 << 10)
            for _ in range(size // len(block)):
                yield block
                await asyncio.sleep(0)  # let the server notice the client hanging up

        return self._streaming(blocks, {"content-length": str(size)})

    def endless(self, chunk: int = 64 << 10):
        """A chunked answer (no Content-Length) that never ends: a client that does not stop reading
        at its cap never returns."""

        async def blocks():
            while True:
                yield bytes(chunk)
                await asyncio.sleep(0)  # let the server notice the client hanging up

        return self._streaming(blocks)


class RawPeer:
    """A TCP server below HTTP: each connection it accepts gets ``payload`` one byte per ``interval``
    seconds (nothing at all when empty), whatever was asked. ``hung_up`` is set once a client closed
    a connection it was dripping into."""

    def __init__(self, payload: bytes, interval: float = 1.0):
        self.payload, self.interval = payload, interval
        self.hung_up = threading.Event()
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawPeer:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            for byte in self.payload:
                if self._stop.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client hung up
                    self.hung_up.set()
                    return
            self._stop.wait(60)  # hold the connection open, silent


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


def _client(peer, timeout: float = 5.0, **kw) -> MinerClient:
    return MinerClient(peer.url, VALIDATOR, MINER.ss58_address, timeout=timeout, **kw)


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


def test_a_compressed_answer_is_refused_not_inflated(peer):
    """64 KiB of gzip inflates to 64 MiB before a size cap on decoded bytes sees it: the client asks for
    no encoding and refuses one it did not ask for, reading nothing."""
    import gzip

    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]", compresslevel=9)

    async def compressed():
        return Response(bomb, media_type="application/json", headers={"Content-Encoding": "gzip"})

    peer.honest()
    peer.answers["/v1/receipts"] = compressed
    peer.encodings = []
    with _client(peer) as miner, pytest.raises(MinerError, match="encoded as 'gzip', not asked for"):
        miner.receipt(ROUND)
    assert peer.encodings == ["identity"] and len(bomb) < RECEIPTS_MAX_BYTES
    # The honest answer is still read.
    peer.honest()
    with _client(peer) as miner:
        assert miner.receipt(ROUND) == RECEIPT


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


# A deadline well under httpx's per-operation timeout (30 s below): only the total deadline can end these.
DEADLINE = 1.5
LATE = 0.5  # how far past its deadline a request may end (scheduling, closing the connection)


def _costs_the_deadline(call, deadline: float = DEADLINE, match: str = "Timeout|deadline") -> float:
    started = time.monotonic()
    with pytest.raises(MinerError, match=match):
        call()
    elapsed = time.monotonic() - started
    assert deadline - 0.05 <= elapsed < deadline + LATE, elapsed
    return elapsed


def test_a_body_dripped_a_byte_a_second_costs_at_most_the_deadline(peer):
    peer.honest()
    peer.answers["/v1/receipts"] = peer.drip()
    with _client(peer, timeout=30, deadline=DEADLINE) as miner:
        _costs_the_deadline(lambda: miner.receipt(ROUND))
    assert peer.stream_done.wait(10), "the peer kept dripping after the client hung up"
    assert peer.streamed <= DEADLINE + 1
    # A contribution's own deadline, and the client's `until` over all its requests.
    peer.answers = {f"/v1/contribution/{ROUND}": peer.drip()}
    with _client(peer, timeout=30) as miner:
        _costs_the_deadline(lambda: miner.contribution(ROUND, 1 << 20, deadline=DEADLINE))
    until = time.monotonic() + DEADLINE
    with _client(peer, timeout=30, until=until) as miner:
        _costs_the_deadline(lambda: miner.contribution(ROUND, 1 << 20), deadline=until - time.monotonic())
    # The validator's fetches: nothing served, after the receipt's deadline or the caller's `until`.
    peer.answers = {"/v1/receipts": peer.drip()}
    started = time.monotonic()
    assert fetch_receipt(VALIDATOR, MINER.ss58_address, peer.axon, ROUND, timeout=30) is None
    assert time.monotonic() - started < RECEIPT_DEADLINE_S + LATE
    started = time.monotonic()
    evidence = fetch_evidence(
        VALIDATOR, MINER.ss58_address, 0, peer.axon, ROUND, 30, max_bytes=1 << 20, until=started + DEADLINE
    )
    assert (evidence.receipt, evidence.contribution) == (None, None)
    assert time.monotonic() - started < DEADLINE + LATE


def test_headers_dripped_a_byte_a_second_cost_at_most_the_deadline():
    # Below httpx: the status line and headers never end, so only a bound on every socket read helps.
    with RawPeer(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100) as raw:
        with MinerClient(raw.url, VALIDATOR, MINER.ss58_address, timeout=30, deadline=DEADLINE) as miner:
            _costs_the_deadline(miner.status)
        assert raw.hung_up.wait(5), "the client left the connection open"


def test_a_peer_that_never_answers_or_never_accepts_costs_at_most_the_deadline():
    with (
        RawPeer(b"") as silent,
        MinerClient(silent.url, VALIDATOR, MINER.ss58_address, timeout=30, deadline=DEADLINE) as miner,
    ):
        _costs_the_deadline(lambda: miner.receipt(ROUND))
    # A listen backlog that is full: the connect itself never completes.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(server.getsockname())
            with MinerClient(url, VALIDATOR, MINER.ss58_address, timeout=30, deadline=DEADLINE) as miner:
                _costs_the_deadline(lambda: miner.receipt(ROUND))
        finally:
            for filler in fillers:
                filler.close()


def test_no_time_left_means_no_request(peer):
    peer.honest()
    with _client(peer, until=time.monotonic() - 1) as miner, pytest.raises(MinerError, match="no time left"):
        miner.receipt(ROUND)
    assert peer.callers == []


def test_a_100_mib_answer_is_refused_without_reading_it(peer):
    peer.honest()
    calls = {
        "/v1/receipts": lambda miner: miner.receipt(ROUND),
        f"/v1/contribution/{ROUND}": lambda miner: miner.contribution(ROUND, max_bytes=len(CONTRIBUTION)),
    }
    for path, call in calls.items():
        peer.answers[path] = peer.huge(100 << 20)
        started = time.monotonic()
        with _client(peer) as miner, pytest.raises(MinerError, match=f"answer of {100 << 20} bytes exceeds"):
            call(miner)
        assert time.monotonic() - started < 2
        assert peer.stream_done.wait(10), "the peer kept streaming after the client hung up"
        # What it wrote before noticing filled the sockets' buffers, not the client's memory.
        assert peer.streamed < 32 << 20, peer.streamed
        print(f"{path}: the 100 MiB peer produced {peer.streamed >> 10} KiB before it noticed")
        peer.honest()
    evidence = fetch_evidence(VALIDATOR, MINER.ss58_address, 0, peer.axon, ROUND, max_bytes=len(CONTRIBUTION))
    assert (evidence.receipt, evidence.contribution) == (RECEIPT, CONTRIBUTION)
