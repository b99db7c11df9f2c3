"""btauth/1 end to end: a real uvicorn server (ServerThread) guarded by
Authenticator dependencies, hit over sockets with httpx + BtAuth, authorized
against the embedded chain's metagraph. Plus the shared SQLite nonce store,
the MetagraphCache refresh rules and BodySizeLimitMiddleware."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time

import httpx
import pytest
from bittensor import http_auth
from bittensor.sp_core import Keypair
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from template.chain.client import client_for
from template.chain.metagraph import MetagraphCache
from template.net.auth import AuthedCaller, Authenticator, BtAuth, SqliteNonceStore
from template.net.http import BodySizeLimitMiddleware, ServerThread, free_port
from tests.conftest import run
from utils.localnet.bootstrap import create_wallet, fund, register

pytestmark = pytest.mark.timeout(60)

SERVER_KEY = Keypair.create_from_uri("//tensorswarm-test-server")
SERVER_HOTKEY = SERVER_KEY.ss58_address


def make_app(endpoint: str, netuid: int, *, nonce_store=None, refresh_s=60.0, miss_refresh_s=0.5):
    """The shape every tensorswarm server takes: the cache lives on the
    server's own event loop (lifespan), routes declare their guard."""

    cache = MetagraphCache(lambda: client_for(endpoint), netuid, refresh_s, miss_refresh_s)
    auth = Authenticator(SERVER_HOTKEY, cache, nonce_store=nonce_store)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await cache.start()
        yield
        await cache.stop()

    app = FastAPI(lifespan=lifespan)
    app.state.cache = cache

    def reply(caller: AuthedCaller, request: Request) -> dict:
        assert request.state.caller == caller
        return {"hotkey": caller.hotkey, "uid": caller.uid, "permit": caller.validator_permit}

    @app.post("/signed")
    async def signed(request: Request, caller: AuthedCaller = Depends(auth.signed)):
        return {**reply(caller, request), "body": (await request.body()).decode()}

    @app.get("/signed/{name:path}")
    async def signed_path(name: str, q: str = "", caller: AuthedCaller = Depends(auth.signed)):
        return {"name": name, "q": q, "hotkey": caller.hotkey}

    @app.post("/registered")
    async def registered(request: Request, caller: AuthedCaller = Depends(auth.registered)):
        return reply(caller, request)

    @app.post("/validator")
    async def validator(request: Request, caller: AuthedCaller = Depends(auth.validator)):
        return reply(caller, request)

    return app


@pytest.fixture
def server(dev_chain):
    with ServerThread(make_app(dev_chain.endpoint, dev_chain.subnet.netuid)) as srv:
        yield srv


def post_signed(srv, path: str, body: bytes, headers: dict) -> httpx.Response:
    return httpx.post(srv.url + path, content=body, headers=headers)


def assert_error(resp: httpx.Response, status: int, detail: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"] == detail


# --------------------------------------------------------------------------- #
# The 401 matrix (authentication)
# --------------------------------------------------------------------------- #


def test_unsigned_request_is_401(server):
    resp = httpx.post(server.url + "/signed", content=b"{}")
    assert_error(resp, 401, "missing or unsupported X-Bittensor-Version (expected '1')")
    assert resp.headers["www-authenticate"] == "btauth/1"


def test_forged_signature_is_401(server, dev_chain):
    miner = dev_chain.subnet.miners[0]
    body = b'{"x": 1}'
    # Signed by another key, but claiming the miner's hotkey.
    headers = http_auth.sign(
        Keypair.create_from_uri("//Mallory"), method="POST", path="/registered", body=body, receiver_ss58=SERVER_HOTKEY
    )
    headers[http_auth.HEADER_HOTKEY] = miner.hotkey.ss58_address
    resp = post_signed(server, "/registered", body, headers)
    assert_error(resp, 401, "signature does not verify against the claimed hotkey")


def test_replayed_request_is_401(server, dev_chain):
    miner = dev_chain.subnet.miners[0]
    body = b"payload"
    headers = http_auth.sign(miner, method="POST", path="/registered", body=body, receiver_ss58=SERVER_HOTKEY)
    assert post_signed(server, "/registered", body, headers).status_code == 200
    resp = post_signed(server, "/registered", body, headers)
    assert_error(resp, 401, "this nonce was already accepted from this hotkey")


def test_stale_and_future_nonces_are_401(server, dev_chain):
    miner = dev_chain.subnet.miners[0]
    old = http_auth.sign(
        miner,
        method="POST",
        path="/signed",
        body=b"",
        receiver_ss58=SERVER_HOTKEY,
        nonce_ns=time.time_ns() - 60 * 10**9,
    )
    assert_error(post_signed(server, "/signed", b"", old), 401, "nonce is older than the 10s freshness window")
    ahead = http_auth.sign(
        miner,
        method="POST",
        path="/signed",
        body=b"",
        receiver_ss58=SERVER_HOTKEY,
        nonce_ns=time.time_ns() + 60 * 10**9,
    )
    assert_error(post_signed(server, "/signed", b"", ahead), 401, "nonce is more than 2s in the future")


def test_wrong_or_missing_receiver_is_401(server, dev_chain):
    miner = dev_chain.subnet.miners[0]
    other = Keypair.create_from_uri("//SomeOtherServer").ss58_address
    with httpx.Client(base_url=server.url, auth=BtAuth(miner, other)) as http:
        assert_error(http.post("/signed", content=b"x"), 401, "request was signed for a different receiving hotkey")
    unbound = http_auth.sign(miner, method="POST", path="/signed", body=b"x")
    assert_error(
        post_signed(server, "/signed", b"x", unbound),
        401,
        "missing X-Bittensor-Receiver: this server requires receiver-bound requests",
    )


def test_tampered_body_is_401(server, dev_chain):
    miner = dev_chain.subnet.miners[0]
    headers = http_auth.sign(miner, method="POST", path="/signed", body=b'{"amount": 1}', receiver_ss58=SERVER_HOTKEY)
    resp = post_signed(server, "/signed", b'{"amount": 1000}', headers)
    assert_error(resp, 401, "signature does not verify against the claimed hotkey")


def test_tampered_path_query_or_method_is_401(server, dev_chain):
    miner = dev_chain.subnet.miners[0]
    bad = "signature does not verify against the claimed hotkey"
    headers = http_auth.sign(miner, method="POST", path="/signed?round=1", body=b"", receiver_ss58=SERVER_HOTKEY)
    assert_error(post_signed(server, "/signed?round=2", b"", headers), 401, bad)
    headers = http_auth.sign(miner, method="POST", path="/registered", body=b"", receiver_ss58=SERVER_HOTKEY)
    assert_error(post_signed(server, "/signed", b"", headers), 401, bad)
    headers = http_auth.sign(miner, method="GET", path="/signed", body=b"", receiver_ss58=SERVER_HOTKEY)
    assert_error(post_signed(server, "/signed", b"", headers), 401, bad)


def test_malformed_headers_are_401(server, dev_chain):
    miner = dev_chain.subnet.miners[0]
    headers = http_auth.sign(miner, method="POST", path="/signed", body=b"", receiver_ss58=SERVER_HOTKEY)
    headers[http_auth.HEADER_NONCE] = "yesterday"
    assert_error(post_signed(server, "/signed", b"", headers), 401, "X-Bittensor-Nonce is not a decimal integer")
    headers = http_auth.sign(miner, method="POST", path="/signed", body=b"", receiver_ss58=SERVER_HOTKEY)
    headers[http_auth.HEADER_HOTKEY] = "not-an-address"
    assert_error(post_signed(server, "/signed", b"", headers), 401, "invalid hotkey address or signature encoding")


# --------------------------------------------------------------------------- #
# Authorization (403) and the OK paths
# --------------------------------------------------------------------------- #


def test_unregistered_hotkey_is_403_but_may_use_signed_routes(server, dev_chain):
    netuid = dev_chain.subnet.netuid
    stranger = Keypair.create_from_uri("//Stranger")
    with httpx.Client(base_url=server.url, auth=BtAuth(stranger, SERVER_HOTKEY)) as http:
        for route in ("/registered", "/validator"):
            assert_error(
                http.post(route, content=b"{}"),
                403,
                f"hotkey {stranger.ss58_address} is not registered on netuid {netuid}",
            )
        ok = http.post("/signed", content=b"hello")
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"hotkey": stranger.ss58_address, "uid": None, "permit": False, "body": "hello"}


def test_registered_miner_gets_its_uid_and_validator_route_needs_permit(server, dev_chain):
    subnet = dev_chain.subnet
    miner, validator = subnet.miners[1], subnet.validators[0]

    async def chain_facts():
        async with dev_chain.client() as client:
            await client.wait_for_epoch(subnet.netuid, timeout=30)  # permits are assigned
            graph = await client.subnets.metagraph(subnet.netuid)
            return graph.by_hotkey(miner.hotkey.ss58_address).uid, graph.by_hotkey(validator.hotkey.ss58_address).uid

    miner_uid, validator_uid = run(chain_facts())
    with httpx.Client(base_url=server.url, auth=BtAuth(miner, SERVER_HOTKEY)) as http:
        resp = http.post("/registered", content=b"{}")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"hotkey": miner.hotkey.ss58_address, "uid": miner_uid, "permit": False}
        assert_error(
            http.post("/validator", content=b"{}"),
            403,
            f"hotkey {miner.hotkey.ss58_address} has no validator permit on netuid {subnet.netuid}",
        )

    # The cache was loaded before the epoch; the permit miss refreshes it.
    deadline = time.monotonic() + 5
    with httpx.Client(base_url=server.url, auth=BtAuth(validator, SERVER_HOTKEY)) as http:
        while True:
            resp = http.post("/validator", content=b"{}")
            if resp.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"hotkey": validator.hotkey.ss58_address, "uid": validator_uid, "permit": True}
        assert http.post("/registered", content=b"{}").json()["permit"] is True


def test_btauth_signs_raw_target_and_streamed_bodies(server, dev_chain):
    """Percent-encoding must survive: the server verifies the raw target, not
    the decoded path. Async client + async-generator body is signed too."""
    miner = dev_chain.subnet.miners[0]
    with httpx.Client(base_url=server.url, auth=BtAuth(miner, SERVER_HOTKEY)) as http:
        resp = http.get("/signed/a%20b%2Fc", params={"q": "x/y z&é"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"name": "a b/c", "q": "x/y z&é", "hotkey": miner.hotkey.ss58_address}

    async def chunks():
        for part in (b"stream", b"ed-", b"body"):
            yield part

    async def go():
        async with httpx.AsyncClient(base_url=server.url, auth=BtAuth(miner, SERVER_HOTKEY)) as http:
            first = await http.post("/signed", content=chunks())
            second = await http.post("/signed", content=b"again")  # fresh nonce per request
            return first, second

    first, second = run(go())
    assert first.status_code == 200, first.text
    assert first.json()["body"] == "streamed-body"
    assert second.status_code == 200, second.text


def test_new_registration_is_admitted_within_seconds(server, dev_chain):
    subnet = dev_chain.subnet
    newcomer = create_wallet(dev_chain.wallets_dir.parent / "late", "newcomer")
    with httpx.Client(base_url=server.url, auth=BtAuth(newcomer, SERVER_HOTKEY)) as http:
        assert http.post("/registered", content=b"").status_code == 403

        async def join():
            async with dev_chain.client() as client:
                await fund(client, newcomer.coldkeypub.ss58_address, 10)
                await register(client, newcomer, subnet.netuid)

        run(join())
        registered_at = time.monotonic()
        while True:
            resp = http.post("/registered", content=b"")
            if resp.status_code == 200 or time.monotonic() - registered_at > 5:
                break
            time.sleep(0.05)
        assert resp.status_code == 200, resp.text
        assert resp.json()["uid"] is not None
        # Background refresh is 60 s here: only the miss refresh can explain this.
        assert time.monotonic() - registered_at < 3


# --------------------------------------------------------------------------- #
# Shared nonce store
# --------------------------------------------------------------------------- #


def test_replay_rejected_across_two_servers_sharing_a_nonce_file(dev_chain, tmp_path):
    miner = dev_chain.subnet.miners[0]
    path = tmp_path / "shared" / "nonces.sqlite"
    # Two store objects on one file: what two server processes would hold.
    apps = [make_app(dev_chain.endpoint, dev_chain.subnet.netuid, nonce_store=SqliteNonceStore(path)) for _ in range(2)]
    with ServerThread(apps[0]) as a, ServerThread(apps[1]) as b:
        body = b'{"work": 7}'
        headers = http_auth.sign(miner, method="POST", path="/registered", body=body, receiver_ss58=SERVER_HOTKEY)
        assert post_signed(a, "/registered", body, headers).status_code == 200
        assert_error(
            post_signed(b, "/registered", body, headers), 401, "this nonce was already accepted from this hotkey"
        )
        assert_error(
            post_signed(a, "/registered", body, headers), 401, "this nonce was already accepted from this hotkey"
        )
        # Normal traffic keeps working on both.
        for srv in (a, b):
            with httpx.Client(base_url=srv.url, auth=BtAuth(miner, SERVER_HOTKEY)) as http:
                assert http.post("/registered", content=body).status_code == 200


def _hammer_store(path: str, base: int, start, results) -> None:
    store = SqliteNonceStore(path, prune_interval_s=0)  # prune on every insert: worst case
    start.wait()
    accepted = [n for n in range(300) if store.check_and_store("5Hammer", base + n)]
    results.put(accepted)


def test_sqlite_nonce_store_concurrent_processes_accept_each_nonce_once(tmp_path):
    path = str(tmp_path / "nonces.sqlite")
    ctx = multiprocessing.get_context("spawn")  # no inherited sqlite/thread state
    start, results = ctx.Event(), ctx.Queue()
    base = time.time_ns()  # realistic nonces: anything older is pruned as stale
    procs = [ctx.Process(target=_hammer_store, args=(path, base, start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    accepted = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0  # no "database is locked" escaped
    winners = sorted(n for batch in accepted for n in batch)
    assert winners == list(range(300))  # every nonce exactly once, across processes


def test_sqlite_nonce_store_prunes_outside_window(tmp_path):
    store = SqliteNonceStore(tmp_path / "n.sqlite", prune_interval_s=0)
    assert store.retention >= http_auth.DEFAULT_MAX_AGE + http_auth.DEFAULT_ALLOWED_SKEW
    now = time.time_ns()
    assert store.check_and_store("5A", now - 10**12)  # far older than retention
    assert store.check_and_store("5A", now)  # this insert prunes the old one
    assert len(store) == 1
    assert not store.check_and_store("5A", now)
    assert store.check_and_store("5B", now)  # nonces are per hotkey
    store.close()


# --------------------------------------------------------------------------- #
# MetagraphCache refresh policy
# --------------------------------------------------------------------------- #


def _counting_factory(endpoint: str, counter: list):
    def factory():
        client = client_for(endpoint)
        fetch = client.subnets.metagraph

        async def counted(*args, **kwargs):
            counter.append(time.monotonic())
            return await fetch(*args, **kwargs)

        client.subnets.metagraph = counted
        return client

    return factory


def test_metagraph_cache_ensure_admits_new_hotkey_quickly(dev_chain):
    subnet = dev_chain.subnet
    newcomer = create_wallet(dev_chain.wallets_dir.parent / "late", "cache-newcomer")
    hotkey = newcomer.hotkey.ss58_address

    async def flow():
        fetches: list = []
        async with MetagraphCache(
            _counting_factory(dev_chain.endpoint, fetches), subnet.netuid, refresh_s=60, miss_refresh_s=0.3
        ) as cache:
            assert cache.loaded and cache.block is not None and cache.age_s < 5
            miner = subnet.miners[0].hotkey.ss58_address
            assert cache.lookup(miner).hotkey == miner
            assert cache.lookup(miner).coldkey == subnet.miners[0].coldkeypub.ss58_address
            assert await cache.ensure(hotkey) is None
            async with dev_chain.client() as client:
                await fund(client, newcomer.coldkeypub.ss58_address, 10)
                await register(client, newcomer, subnet.netuid)
            t0 = time.monotonic()
            while (neuron := await cache.ensure(hotkey)) is None and time.monotonic() - t0 < 5:
                await asyncio.sleep(0.05)
            assert neuron is not None and neuron.hotkey == hotkey
            assert time.monotonic() - t0 < 1.5
            assert cache.lookup(hotkey) == neuron  # cached now: no more fetches for it
            before = len(fetches)
            for _ in range(20):
                assert await cache.ensure(hotkey) == neuron
            assert len(fetches) == before

    run(flow())


def test_metagraph_cache_miss_storm_is_rate_limited(dev_chain):
    subnet = dev_chain.subnet

    async def flow():
        fetches: list = []
        cache = MetagraphCache(
            _counting_factory(dev_chain.endpoint, fetches), subnet.netuid, refresh_s=60, miss_refresh_s=1.0
        )
        await cache.start()
        try:
            assert len(fetches) == 1
            stop = time.monotonic() + 2.5
            calls = 0

            async def hammer(i):
                nonlocal calls
                while time.monotonic() < stop:
                    assert await cache.ensure(f"5Unregistered{i}") is None
                    calls += 1
                    await asyncio.sleep(0)

            await asyncio.gather(*(hammer(i) for i in range(50)))
            assert calls > 1000
            # Start + at most one miss refresh per second over 2.5 s.
            assert 2 <= len(fetches) <= 4, fetches
            gaps = [b - a for a, b in zip(fetches, fetches[1:])]
            # The limit counts from each attempt's start; the wrapper stamps a little later
            # (after the client is fetched), by a varying amount on a loaded machine.
            assert min(gaps) >= 0.9, gaps
            assert cache.refresh_count == len(fetches)
        finally:
            await cache.stop()

    run(flow())


def test_metagraph_cache_keeps_last_good_graph_when_refresh_fails(dev_chain, tmp_path):
    subnet = dev_chain.subnet
    endpoints = iter([dev_chain.endpoint])  # then: a chain directory that does not exist

    async def flow():
        cache = MetagraphCache(
            lambda: client_for(next(endpoints, f"sim://{tmp_path}/gone")),
            subnet.netuid,
            refresh_s=0.05,
            miss_refresh_s=0.05,
        )
        await cache.start()
        try:
            assert cache.loaded
            validator = subnet.validators[0].hotkey.ss58_address
            assert cache.lookup(validator).stake == pytest.approx(1000.0)
            # Drop the good client: the next refreshes build broken ones and fail.
            await cache._drop_client()
            await asyncio.sleep(0.4)
            assert cache.error_count >= 2
            assert cache.last_error.startswith("LocalnetError:") and "gone" in cache.last_error
            assert cache.lookup(validator) is not None  # the last good metagraph survives
            assert not await cache.refresh()  # failures are reported, not raised
            assert cache._task is not None and not cache._task.done()  # loop still alive
        finally:
            await cache.stop()

    run(flow())


def test_unknown_metagraph_is_503_not_403(tmp_path):
    """If the chain was never reachable we cannot tell who is registered:
    say so (503) rather than telling a real miner it is unregistered."""
    app = make_app(f"sim://{tmp_path / 'no-chain'}", 1, miss_refresh_s=0.05)
    caller = Keypair.create_from_uri("//Somebody")
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, auth=BtAuth(caller, SERVER_HOTKEY)) as http:
        assert_error(http.post("/registered", content=b""), 503, "metagraph not available yet; retry shortly")
        assert_error(http.post("/validator", content=b""), 503, "metagraph not available yet; retry shortly")
        assert http.post("/signed", content=b"").json()["uid"] is None  # signature-only routes still work
        assert app.state.cache.error_count >= 1


def test_metagraph_cache_validators_after_epoch(dev_chain):
    subnet = dev_chain.subnet

    async def flow():
        async with dev_chain.client() as client:
            await client.wait_for_epoch(subnet.netuid, timeout=30)
            async with MetagraphCache(client, subnet.netuid, refresh_s=60) as cache:
                hotkeys = {n.hotkey for n in cache.validators()}
                assert subnet.validators[0].hotkey.ss58_address in hotkeys
                assert not hotkeys & {m.hotkey.ss58_address for m in subnet.miners}
            # A borrowed client is not closed by the cache.
            assert await client.block() > 0

    run(flow())


# --------------------------------------------------------------------------- #
# Body size limit
# --------------------------------------------------------------------------- #


class Item(BaseModel):
    data: str


def body_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=1024, overrides={"/big": 10_000, "/big/tiny": 10})

    @app.post("/upload")
    @app.post("/big/upload")
    @app.post("/big/tiny/upload")
    async def upload(request: Request):
        return {"size": len(await request.body())}

    @app.post("/item")
    async def item(body: Item):  # FastAPI parses the body itself
        return {"size": len(body.data)}

    return app


@pytest.fixture(scope="module")
def body_server():
    with ServerThread(body_app()) as srv:
        yield srv


def _chunked(total: int, chunk: int = 256):
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sent += n
        yield b"x" * n


def test_body_limit_content_length(body_server):
    url = body_server.url
    assert httpx.post(url + "/upload", content=b"x" * 1024).json() == {"size": 1024}
    assert_error(httpx.post(url + "/upload", content=b"x" * 1025), 413, "request body exceeds 1024 bytes")


def test_body_limit_chunked(body_server):
    url = body_server.url
    resp = httpx.post(url + "/upload", content=_chunked(1000))
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert resp.json() == {"size": 1000}
    assert_error(httpx.post(url + "/upload", content=_chunked(4096)), 413, "request body exceeds 1024 bytes")
    # FastAPI would turn a body-read error into 400; the limit still answers 413.
    big_item = ('{"data": "' + "y" * 2000 + '"}').encode()
    assert_error(
        httpx.post(
            url + "/item", content=iter([big_item[:700], big_item[700:]]), headers={"content-type": "application/json"}
        ),
        413,
        "request body exceeds 1024 bytes",
    )
    assert httpx.post(url + "/item", json={"data": "ok"}).json() == {"size": 2}


def test_body_limit_keeps_keepalive_connections_usable(body_server):
    """The 413 is sent before the body is read; closing then would make the
    kernel reset the connection under the client, losing the 413. Repeated on
    one keep-alive connection, because that is where it used to break."""
    with httpx.Client(base_url=body_server.url) as http:
        for _ in range(10):
            for content in (b"x" * 300_000, _chunked(300_000, 65536)):
                assert_error(http.post("/upload", content=content), 413, "request body exceeds 1024 bytes")
                assert http.post("/upload", content=b"fine").json() == {"size": 4}


def test_body_limit_per_path_override(body_server):
    url = body_server.url
    assert httpx.post(url + "/big/upload", content=b"x" * 5000).json() == {"size": 5000}
    assert httpx.post(url + "/big/upload", content=_chunked(9000)).json() == {"size": 9000}
    assert_error(httpx.post(url + "/big/upload", content=b"x" * 10_001), 413, "request body exceeds 10000 bytes")
    assert_error(httpx.post(url + "/big/upload", content=_chunked(20_000)), 413, "request body exceeds 10000 bytes")
    # Longest prefix wins.
    assert_error(httpx.post(url + "/big/tiny/upload", content=b"x" * 11), 413, "request body exceeds 10 bytes")


def test_body_limit_applies_before_signature_check(body_server, dev_chain):
    """Auth reads the body, so an oversized signed upload is a 413, never a 401/500."""
    app = make_app(dev_chain.endpoint, dev_chain.subnet.netuid)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=100)
    miner = dev_chain.subnet.miners[0]
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, auth=BtAuth(miner, SERVER_HOTKEY)) as http:
        assert http.post("/registered", content=b"x" * 100).status_code == 200
        assert_error(http.post("/registered", content=b"x" * 101), 413, "request body exceeds 100 bytes")
        assert_error(http.post("/registered", content=_chunked(500, 50)), 413, "request body exceeds 100 bytes")


# --------------------------------------------------------------------------- #
# ServerThread
# --------------------------------------------------------------------------- #


def test_server_thread_ports_and_startup_failure():
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return "pong"

    port = free_port()
    with ServerThread(app, port=port) as srv:
        assert srv.port == port and srv.url == f"http://127.0.0.1:{port}"
        assert httpx.get(srv.url + "/ping").json() == "pong"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/ping")

    @contextlib.asynccontextmanager
    async def broken(_app):
        raise RuntimeError("no config")
        yield

    with pytest.raises(RuntimeError, match="exited during startup"):
        ServerThread(FastAPI(lifespan=broken), startup_timeout=5).start()
