"""Authenticate before reading (the orchestrator over real HTTP on the embedded chain): what a checkpoint
upload costs the orchestrator before it is known to be a member's, and what a member's costs.

Requests are written on raw sockets, so the test controls exactly which bytes the server was sent: a
refusal that arrives while the body is still unsent was decided from the headers alone.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from urllib.parse import urlparse

import bittensor as bt
import pytest

from template.net.gate import DIGEST_HEADER, content_digest

pytestmark = pytest.mark.timeout(180)
HUGE = 512 << 20  # what an unauthenticated upload announces
PARALLEL = 20
RSS_GROWTH_LIMIT = 64 << 20


def _rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _request(url: str, method: str, path: str, headers: dict, body_len: int, send_body: int = 0):
    """Send the request line and headers (and ``send_body`` zero bytes of the announced body, in 1 MiB
    pieces, stopping when the server closes); returns (status, the response text, body bytes sent)."""
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sent = 0
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Length: {body_len}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode())
        piece = bytes(1 << 20)
        try:
            while sent < send_body:
                sock.sendall(piece[: min(len(piece), send_body - sent)])
                sent += min(len(piece), send_body - sent)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what we want to see
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
        return status, data.decode("latin-1"), sent
    finally:
        sock.close()


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _signed(wallet, receiver: str, path: str, body_sha256_of: bytes) -> dict:
    headers = bt.http_auth.sign(wallet, method="PUT", path=path, body=body_sha256_of, receiver_ss58=receiver)
    return {**headers, DIGEST_HEADER: content_digest(body_sha256_of)}


def test_unauthenticated_uploads_cost_nothing_and_a_wrong_size_is_refused_unread(orchestrator):
    url, path = orchestrator.url, "/v1/checkpoint/" + "ab" * 32
    # Warm up the server's code paths (first requests allocate), then measure.
    _request(url, "PUT", path, {}, 1024, send_body=1024)
    before = _rss()
    status, text, sent = _request(url, "PUT", path, {}, HUGE, send_body=HUGE)
    assert status == 401, text
    results = []

    def attack():
        results.append(_request(url, "PUT", path, {"X-Bittensor-Version": "1"}, HUGE, send_body=HUGE))

    threads = [threading.Thread(target=attack) for _ in range(PARALLEL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    grown = _rss() - before
    assert [r[0] for r in results] == [401] * PARALLEL, [r[1][:200] for r in results]
    # The server answered from the headers and closed: the clients could not push the bodies through.
    assert max(r[2] for r in [*results, (status, text, sent)]) < HUGE
    assert grown < RSS_GROWTH_LIMIT, f"resident memory grew by {grown >> 20} MiB"

    # A forged signature (a registered hotkey's name, another key's signature) is refused unread too.
    miner, other = orchestrator.chain.subnet.miners[:2]
    forged = _signed(miner, orchestrator.hotkey, path, b"x")
    forged["X-Bittensor-Signature"] = _signed(other, orchestrator.hotkey, path, b"x")["X-Bittensor-Signature"]
    status, text, _ = _request(url, "PUT", path, forged, HUGE)
    assert status == 401 and "signature" in text, text

    # A member's upload: only states the members agreed on, only the size they said, decided unread.
    with orchestrator.client(miner) as http:
        a = http.post("/v1/join", json={}).json()["assignment"]
        state = os.urandom(50_000)
        sha = hashlib.sha256(state).hexdigest()
        report = {"generation": a["generation"], "round": 0, "state": sha, "state_bytes": len(state)}
        assert http.post("/v1/round", json=report).json()["agreed"] == sha
    path = f"/v1/checkpoint/{sha}"
    for size in (len(state) + 1, len(state) - 1, HUGE):
        status, text, _ = _request(url, "PUT", path, _signed(miner, orchestrator.hotkey, path, state), size)
        assert status == 413 and f"{len(state)} bytes" in text, text
    stranger_path = "/v1/checkpoint/" + "cd" * 32
    status, text, _ = _request(url, "PUT", stranger_path, _signed(miner, orchestrator.hotkey, stranger_path, state), 10)
    assert status == 409, text  # no round produced it
    status, text, _ = _request(url, "PUT", path, _signed(other, orchestrator.hotkey, path, state), len(state))
    assert status == 403, text  # not a member
    # Bytes that are not the signed ones are refused once they are in (and not kept).
    wrong = bytes(len(state))
    with orchestrator.client(miner) as http:
        tampered = _signed(miner, orchestrator.hotkey, path, state)
        response = http.put(path, content=wrong, headers=tampered, auth=None)
        assert response.status_code == 400 and "Content-Digest" in response.json()["detail"], response.text
        assert http.get(path).status_code == 404
        stored = http.put(path, content=state)
        assert stored.status_code == 200 and stored.json()["size"] == len(state), stored.text
        assert http.get(path).content == state
    # Stored already: answered from the headers (nothing of the body is sent or read).
    status, text, _ = _request(url, "PUT", path, _signed(miner, orchestrator.hotkey, path, state), len(state))
    assert status == 200 and sha in text, text
    assert not list(orchestrator.service.checkpoint_dir.glob(".upload.*"))  # no temporary file left behind


def test_a_download_loop_is_rate_limited_and_does_not_starve_heartbeats(orchestrator):
    from orchestrator.app import RATE_LIMITS

    burst, _ = RATE_LIMITS["checkpoint download"]
    miner = orchestrator.chain.subnet.miners[0]
    with orchestrator.client(miner) as http:
        assert http.post("/v1/join", json={}).status_code == 200
        answers = [http.get("/v1/checkpoint/latest") for _ in range(int(burst) + 4)]
        codes = [a.status_code for a in answers]
        # No checkpoint yet (404) is still a download asked for: the burst, then 429 with a Retry-After.
        assert codes[: int(burst)] == [404] * int(burst) and set(codes[int(burst) :]) == {429}, codes
        assert int(answers[-1].headers["Retry-After"]) >= 1
        started = time.monotonic()
        beat = http.post("/v1/heartbeat", json={})
        assert beat.status_code == 200 and time.monotonic() - started < 2.0
    # Another hotkey has its own budget.
    with orchestrator.client(orchestrator.chain.subnet.miners[1]) as http:
        assert http.get("/v1/checkpoint/latest").status_code == 404
