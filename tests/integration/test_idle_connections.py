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
from fastapi import FastAPI, Request

from template.net.connections import HEAD_TIMEOUT_S, MAX_PER_ADDRESS, raise_fd_limit
from template.net.http import ServerThread, free_port
from tests.integration.test_swarm_e2e import REPO, _status, _wait

pytestmark = pytest.mark.timeout(180)


def _open(port: int, source: str, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
