"""Sockets that send nothing, or a request head a byte at a time, cannot pin a server's file descriptors.

Every tensorswarm HTTP server (``ServerThread``: the meta-miner's API and the validator's; the orchestrator's
``uvicorn.run``) closes a connection whose request head is not complete ``HEAD_TIMEOUT_S`` after it opened
or after its last response, and one from an address that already holds its cap, while clients from other
addresses are served and a slow request *body* is left alone. Raw sockets from other loopback addresses
play the attacker (127.0.0.0/8 is all loopback on Linux).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from template.net.connections import HEAD_TIMEOUT_S, MAX_PER_ADDRESS, guarded_http, raise_fd_limit
from template.net.http import ServerThread, free_port
from tests.integration.test_swarm_e2e import REPO, _status, _wait

pytestmark = pytest.mark.timeout(180)


def _open(port: int, source: str, count: int, rcvbuf: int = 0) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # a client that reads nothing fills this and the server's send buffer
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def _closed(s: socket.socket, wait: float = 0.5) -> bool:
    """True once the server closed or reset the connection; False while it is still open."""
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _drip(port: int, source: str, until: float, out: dict) -> None:
    """A request head sent a byte a second: never complete. Records when the server cut it off."""
    s = _open(port, source, 1)[0]
    start = time.monotonic()
    try:
        for byte in b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000:
            if time.monotonic() > until:
                break
            s.sendall(bytes([byte]))
            time.sleep(1.0)
    except (ConnectionResetError, BrokenPipeError):
        out["cut_after_s"] = time.monotonic() - start
    finally:
        s.close()


def _slow_body(port: int, out: dict) -> None:
    """An honest request whose body takes longer than the head deadline to arrive."""
    s = _open(port, "127.0.0.1", 1)[0]
    body = b"x" * 12
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    for byte in body:
        time.sleep((HEAD_TIMEOUT_S + 2) / len(body))
        s.sendall(bytes([byte]))
    s.settimeout(10)
    out["answer"] = s.recv(4096)
    s.close()


def test_idle_and_dripping_sockets_are_closed_and_others_are_served():
    raise_fd_limit()
    app = FastAPI()

    @app.get("/ping")
    def ping():
        return {"ok": True}

    @app.post("/echo")
    async def echo(request: Request):
        return {"length": len(await request.body())}

    with ServerThread(app) as server:
        port = server.port
        idle = _open(port, "127.0.0.3", MAX_PER_ADDRESS)
        opened = time.monotonic()
        extra = _open(port, "127.0.0.3", 6)
        # Past the cap: closed as they open; the first MAX_PER_ADDRESS are still held.
        assert all(_closed(s, wait=2.0) for s in extra)
        assert not any(_closed(s, wait=0.01) for s in idle[:8])
        dripped, slow = {}, {}
        threads = [
            threading.Thread(target=_drip, args=(port, "127.0.0.4", time.monotonic() + HEAD_TIMEOUT_S + 8, dripped)),
            threading.Thread(target=_slow_body, args=(port, slow)),
        ]
        for t in threads:
            t.start()
        # Another address is served meanwhile, on fresh and on kept-alive connections.
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(3):
                assert client.get("/ping").json() == {"ok": True}
        time.sleep(max(0.0, HEAD_TIMEOUT_S + 1.5 - (time.monotonic() - opened)))
        for t in threads:
            t.join(30)
        assert all(_closed(s, wait=1.0) for s in idle), "idle sockets outlived the head deadline"
        assert HEAD_TIMEOUT_S - 1 <= dripped.get("cut_after_s", float("inf")) <= HEAD_TIMEOUT_S + 3, dripped
        assert slow.get("answer", b"").startswith(b"HTTP/1.1 200") and b'"length":12' in slow["answer"], slow
        # The count per address went back to nothing: the cap is not used up by closed sockets.
        assert _open(port, "127.0.0.3", 1) and httpx.get(server.url + "/ping", timeout=5).status_code == 200
        for s in idle + extra:
            s.close()


def test_the_orchestrator_process_caps_idle_sockets_per_address(sim_chain, tmp_path):
    """``python -m orchestrator`` wires the same rules (its cap per address is higher: members may share one)."""
    dev_chain = sim_chain
    from orchestrator.__main__ import ORCHESTRATOR_PER_ADDRESS
    from tests.conftest import small_corpus

    raise_fd_limit()
    port = free_port()
    log = tmp_path / "orchestrator.log"
    args = [sys.executable, "-m", "orchestrator", "--subtensor.chain_endpoint", dev_chain.endpoint]
    args += ["--netuid", str(dev_chain.subnet.netuid), "--wallet.path", str(dev_chain.wallets_dir)]
    args += ["--wallet.name", "owner", "--state-dir", str(tmp_path / "orch"), "--port", str(port)]
    args += ["--tcp-store-port", "0", "--dataset", str(small_corpus(tmp_path)), "--shard-size-kb", "8"]
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("orchestrator", lambda: _status(url), 60, [log])
        idle = _open(port, "127.0.0.5", ORCHESTRATOR_PER_ADDRESS)
        extra = _open(port, "127.0.0.5", 4)
        assert all(_closed(s, wait=2.0) for s in extra)
        assert _status(url)["round"] >= 0  # another address is served while this one is at its cap
        time.sleep(HEAD_TIMEOUT_S + 1.5)
        assert all(_closed(s, wait=1.0) for s in idle)
        assert "refused 1 connection(s) in the last 60s from addresses holding" in log.read_text(errors="replace")
        for s in idle + extra:
            s.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_connections_are_counted_per_ipv4_address_and_per_ipv6_64():
    from template.net.connections import client_key

    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"  # a v4 client on a dual-stack socket
    one_host = {client_key(f"2001:db8:1:2::{i:x}") for i in range(1, 500)}
    assert one_host == {"2001:db8:1:2::/64"}
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64" and client_key("not-an-ip") == "not-an-ip"


def test_bodies_never_sent_answers_never_read_and_upgrades_hold_nothing():
    """The other ways to hold a socket (found by an attacker review of the head deadline alone): a body
    announced and never sent, a streamed or a large answer never read (with ``Connection: close``, and two
    pipelined), and WebSocket upgrade attempts (their sockets left uvicorn's HTTP protocol uncounted back,
    until the address was locked out). Short timers here; the servers use the module's defaults. An upload
    that keeps coming, to a route that answered before reading it, is not cut."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request):
        return {"length": len(await request.body())}

    @app.post("/early")
    def early():
        return {"ok": True}

    @app.get("/stream")
    def stream():
        return StreamingResponse((b"x" * 65536 for _ in range(2000)), media_type="application/octet-stream")

    @app.get("/big")
    def big():
        return Response(b"x" * (32 << 20), media_type="application/octet-stream")

    http = guarded_http(head_timeout_s=2.0, max_per_address=8, body_idle_s=3.0, write_stall_s=3.0)
    with ServerThread(app, http=http) as server:
        port = server.port
        (unsent,) = _open(port, "127.0.0.11", 1)
        unsent.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        unread = []
        for source, head in [
            ("127.0.0.12", b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("127.0.0.13", b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            ("127.0.0.14", b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 2),
        ]:
            (s,) = _open(port, source, 1, rcvbuf=4096)
            s.sendall(head)
            unread.append(s)
        uploaded = {}

        def upload():
            (s,) = _open(port, "127.0.0.15", 1)
            s.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
            try:
                for _ in range(10):  # 5 s: longer than every timer, a piece every 0.5 s
                    s.sendall(b"y" * 1000)
                    time.sleep(0.5)
                s.settimeout(5)
                uploaded["answer"] = s.recv(4096)
            except OSError as error:
                uploaded["error"] = repr(error)
            finally:
                s.close()

        sender = threading.Thread(target=upload)
        sender.start()
        for _ in range(3 * 8):  # three times the cap of upgrade attempts from one address
            (ws,) = _open(port, "127.0.0.16", 1)
            ws.sendall(
                b"GET /nows HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            ws.settimeout(5)
            while ws.recv(65536):
                pass
            ws.close()
        time.sleep(0.5)
        assert "127.0.0.16" not in http.open_from, http.open_from
        (honest,) = _open(port, "127.0.0.16", 1)
        honest.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        honest.settimeout(5)
        assert honest.recv(4096).startswith(b"HTTP/1.1 200")
        honest.close()
        sender.join(30)
        assert uploaded.get("answer", b"").startswith(b"HTTP/1.1 200"), uploaded
        time.sleep(2.0)  # past every timer, counted from when these went quiet
        assert _closed(unsent, wait=2.0), "a body never sent held its socket"
        for s in unread:
            assert _closed_after_draining(s), "an answer never read held its socket"
        time.sleep(0.5)
        assert http.open_from == {}, http.open_from
        for s in [unsent, *unread]:
            s.close()


def _closed_after_draining(s: socket.socket) -> bool:
    """Read what the server had sent before it gave up; True once the stream ends or was reset."""
    s.settimeout(2.0)
    try:
        while True:
            if not s.recv(1 << 20):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
