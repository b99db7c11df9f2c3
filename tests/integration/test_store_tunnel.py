"""The generation's TCPStore is reached only through the orchestrator's members-only tunnel: a real
orchestrator (uvicorn in a thread, the embedded chain), raw TCP clients for the attackers, torch's
own TCPStore client through a :class:`StoreForwarder` for the members."""

from __future__ import annotations

import datetime
import json
import os
import socket
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch.distributed as dist

from orchestrator.store_protocol import MAX_VALUE, VALIDATION_MAGIC, Query
from orchestrator.store_tunnel import CONNECTIONS_PER_HOTKEY, Current, refusal
from template import wire as p
from template.net.store_tunnel import StoreForwarder, TunnelRefused, hello_signer, open_tunnel
from template.wire.orchestrator import TUNNEL_GREETING, TunnelHello, presence_message


def _store_keys(orchestrator) -> list[str]:
    """Every key in the orchestrator's TCPStore, read directly on loopback (where only the host reaches it)."""
    store = dist.TCPStore(
        "127.0.0.1", orchestrator.service.store.port, is_master=False, timeout=datetime.timedelta(seconds=10)
    )
    return store.list_keys()


def _join(orchestrator, wallet) -> p.Assignment:
    with orchestrator.client(wallet) as http:
        response = http.post("/v1/join", json={})
        assert response.status_code == 200, response.text
        return p.AssignmentResponse.model_validate(response.json()).assignment


@contextmanager
def _alive(orchestrator, *wallets):
    """Heartbeats for ``wallets`` while the block runs (the fixture removes a member silent for 5 s)."""
    stop = threading.Event()

    def beat():
        clients = [orchestrator.client(w) for w in wallets]
        while not stop.wait(1.0):
            for http in clients:
                http.post("/v1/heartbeat", json={})
        for http in clients:
            http.close()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _answer(orchestrator, wallet, a: p.Assignment):
    return hello_signer(wallet.hotkey.ss58_address, a.generation, a.run_id, orchestrator.hotkey, wallet.hotkey.sign)


def _forwarder(orchestrator, wallet, a: p.Assignment) -> StoreForwarder:
    return StoreForwarder(a.store_host, a.store_port, _answer(orchestrator, wallet, a), timeout_s=5)


def _client(port: int, timeout_s: float = 5) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))


def _raw_answer(port: int, line: bytes) -> bytes:
    """What the tunnel answers a raw client that sends ``line`` after its greeting (b"" when it closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        greeting = sock.recv(200)
        assert greeting.startswith(TUNNEL_GREETING)
        sock.sendall(line)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


def test_refusal_is_a_pure_decision():
    hello = TunnelHello(hotkey="5Member", generation=3, signature="ab" * 64)
    now = Current(3, "ts/3/abc", {"5Member": 0, "5Other": 1})
    assert refusal(hello, now, 0) is None
    assert refusal(hello, None, 0) == "no generation is training"
    assert "not the current one" in refusal(hello, Current(4, now.prefix, now.ranks), 0)
    assert "not a member" in refusal(hello.model_copy(update={"hotkey": "5Stranger"}), now, 0)
    assert "already" in refusal(hello, now, CONNECTIONS_PER_HOTKEY)


def test_the_store_itself_listens_on_loopback_only(orchestrator):
    store = orchestrator.service.store
    assert store.address[0] == "127.0.0.1"
    assert store.port != orchestrator.service.tunnel.port


def test_a_non_member_reaches_no_key_and_a_member_does(orchestrator):
    miners = orchestrator.chain.subnet.miners
    member, stranger = miners[0], miners[-1]  # the stranger is registered, but never joined
    a = _join(orchestrator, member)
    port = a.store_port
    assert port == orchestrator.service.tunnel.port

    with _alive(orchestrator, member), _forwarder(orchestrator, member, a) as forwarder:
        store = _client(forwarder.port)
        dist.PrefixStore(a.store_prefix, store).set("rank0/addr", "10.0.0.1:1234")
        assert dist.PrefixStore(a.store_prefix, store).get("rank0/addr") == b"10.0.0.1:1234"
        assert f"{a.store_prefix}/rank0/addr" in _store_keys(orchestrator)

        # torch's own client, straight at the tunnel's port: no key, no list, just a failure
        with pytest.raises((RuntimeError, dist.DistError)):
            _client(port, timeout_s=3).get(f"{a.store_prefix}/rank0/addr")
        # garbage, an oversized line, a registered non-member's signed hello, a replayed hello
        assert _raw_answer(port, b"hello?\n").startswith(b"DENIED malformed hello")
        assert _raw_answer(port, b"x" * 5000).startswith(b"DENIED handshake line over")
        stranger_hello = _answer(orchestrator, stranger, a)("whatever") + b"\n"
        assert _raw_answer(port, stranger_hello) == b"DENIED not a member of the current generation\n"
        replayed = _answer(orchestrator, member, a)("an old challenge") + b"\n"
        assert _raw_answer(port, replayed) == b"DENIED bad signature\n"
        forged = json.loads(replayed)
        forged["generation"] = a.generation + 1
        assert b"not the current one" in _raw_answer(port, json.dumps(forged).encode() + b"\n")
        with pytest.raises(TunnelRefused, match="not a member"):
            open_tunnel(a.store_host, port, _answer(orchestrator, stranger, a))

        # none of that touched the member's key, and the member still reads it
        assert dist.PrefixStore(a.store_prefix, store).get("rank0/addr") == b"10.0.0.1:1234"

        # the orchestrator sees the member's presence and gloo address come through (when it came to the
        # rendezvous, and went on into gloo), and only those keys count
        coordinator, me = orchestrator.service.coordinator, member.hotkey.ss58_address
        assert coordinator.posts.get(a.generation, {}) == {}
        # a presence its peers would not accept (not its signature) does not pass: the connection is closed
        with _forwarder(orchestrator, member, a) as second:
            junk = dist.PrefixStore(a.store_prefix, _client(second.port, timeout_s=3))
            with pytest.raises((RuntimeError, dist.DistError)):
                junk.set(f"present/{a.rank}", b"junk")  # a set has no reply: the next request sees the close
                junk.get(f"present/{a.rank}")
        assert coordinator.posts.get(a.generation, {}) == {}
        member_store = dist.PrefixStore(a.store_prefix, store)
        signed = member.hotkey.sign(presence_message(a.run_id, a.generation, a.rank))
        member_store.set(f"present/{a.rank}", bytes(signed).hex())
        member_store.set(f"0//cpu//0/{a.rank}", b"an address")
        assert member_store.get(f"0//cpu//0/{a.rank}") == b"an address"
        assert set(coordinator.posts[a.generation]) == {"presence", "address"}
        assert all(set(seen) == {me} for seen in coordinator.posts[a.generation].values())


def test_an_ended_generation_is_cut_off_and_its_keys_deleted(orchestrator):
    m0, m1 = orchestrator.chain.subnet.miners[:2]
    first = _join(orchestrator, m0)
    with _alive(orchestrator, m0, m1), _forwarder(orchestrator, m0, first) as forwarder:
        store = _client(forwarder.port)
        dist.PrefixStore(first.store_prefix, store).set("rank0/addr", "10.0.0.1:1234")
        assert dist.PrefixStore(first.store_prefix, store).check(["rank0/addr"])  # (a set is not answered)
        assert f"{first.store_prefix}/rank0/addr" in _store_keys(orchestrator)

        _join(orchestrator, m1)  # a new generation: the first one's keys go, its connections are closed
        with orchestrator.client(m0) as http:
            http.post("/v1/leave", json={})
        second = p.AssignmentResponse.model_validate(orchestrator.client(m1).get("/v1/assignment").json()).assignment
        assert second.generation != first.generation
        deadline = time.time() + 10
        while time.time() < deadline and any(k.startswith(first.store_prefix) for k in _store_keys(orchestrator)):
            time.sleep(0.1)
        assert not any(k.startswith(first.store_prefix) for k in _store_keys(orchestrator))
        with pytest.raises((RuntimeError, dist.DistError)):  # the old connection was closed
            store.check(["rank0/again"])
    with pytest.raises(TunnelRefused, match="not the current one"):
        _forwarder(orchestrator, m0, first)
    with _forwarder(orchestrator, m1, second) as forwarder:
        store = dist.PrefixStore(second.store_prefix, _client(forwarder.port))
        store.set("rank0/addr", "10.0.0.2:1234")
        assert store.check(["rank0/addr"])
        assert f"{second.store_prefix}/rank0/addr" in _store_keys(orchestrator)


def test_a_member_cannot_fill_the_orchestrators_memory_through_the_store(orchestrator):
    m0 = orchestrator.chain.subnet.miners[0]
    a = _join(orchestrator, m0)
    budget = orchestrator.service.tunnel.bytes_per_hotkey = 16 * MAX_VALUE  # (4 MiB in production)
    value = b"x" * MAX_VALUE
    with _alive(orchestrator, m0):
        with _forwarder(orchestrator, m0, a) as forwarder:
            store = dist.PrefixStore(a.store_prefix, _client(forwarder.port))
            with pytest.raises((RuntimeError, dist.DistError)):
                for i in range(budget // MAX_VALUE + 2):
                    store.set(f"blob{i}", value)
                    store.check([f"blob{i}"])
        stored = sum(1 for k in _store_keys(orchestrator) if "/blob" in k)
        assert 0 < stored <= budget // MAX_VALUE
        # the hotkey's budget is spent for this generation: a new connection is cut as soon as it writes
        with _forwarder(orchestrator, m0, a) as again, pytest.raises((RuntimeError, dist.DistError)):
            dist.PrefixStore(a.store_prefix, _client(again.port)).set("more", b"y")


def _request(query: int, *parts: bytes) -> bytes:
    """A raw TCPStore request: the query byte, then length-prefixed parts."""
    return bytes([query]) + b"".join(struct.pack("<Q", len(x)) + x for x in parts)


def _closed(sock: socket.socket, timeout_s: float = 10) -> bool:
    sock.settimeout(timeout_s)
    try:
        while sock.recv(1 << 16):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_a_member_gets_only_what_ranks_ask_and_cannot_make_the_store_pile_up_replies(orchestrator):
    m0 = orchestrator.chain.subnet.miners[0]
    a = _join(orchestrator, m0)
    key = f"/{a.store_prefix}/big".encode()
    with _alive(orchestrator, m0):

        def member() -> socket.socket:
            sock = open_tunnel(a.store_host, a.store_port, _answer(orchestrator, m0, a))
            sock.sendall(bytes([Query.VALIDATE]) + struct.pack("<I", VALIDATION_MAGIC))
            return sock

        refused = {
            "list keys": bytes([Query.LIST_KEYS]),
            "delete a key": _request(Query.DELETE_KEY, key),
            "multi-get": bytes([Query.MULTI_GET]) + struct.pack("<Q", 1) + _request(0, key)[1:],
            "a key outside the prefix": _request(Query.SET, b"/elsewhere", b"1"),
            "a value over the cap": _request(Query.SET, key, b"x" * (MAX_VALUE + 1)),
            "another rank's presence": _request(Query.SET, f"/{a.store_prefix}/present/1".encode(), b"sig"),
            "another rank's gloo address": _request(Query.SET, f"/{a.store_prefix}/0//cpu//0/1".encode(), b"addr"),
        }
        for what, request in refused.items():
            with member() as sock:
                sock.sendall(request)
                assert _closed(sock), what
        # Its own gloo address and presence are written once: an address swapped after the peers failed
        # to reach the first would leave nothing to name the rank by.
        own = f"/{a.store_prefix}/0//cpu//0/{a.rank}".encode()
        with member() as sock:
            sock.sendall(_request(Query.SET, own, b"first"))
            assert not _closed(sock, 1.0)
        with member() as sock:
            sock.sendall(_request(Query.SET, own, b"swapped"))
            assert _closed(sock), "a second write of its own address"
        with _forwarder(orchestrator, m0, a) as forwarder:
            assert dist.PrefixStore(a.store_prefix, _client(forwarder.port)).get(f"0//cpu//0/{a.rank}") == b"first"
        # Pipelined GETs of the largest value, never read: the tunnel forwards one at a time and cuts
        # the connection off once a MiB of replies is unread; the orchestrator's memory stays put.
        with member() as sock:
            sock.sendall(_request(Query.SET, key, b"z" * MAX_VALUE))
        rss = _rss()
        with member() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                sock.sendall(_request(Query.GET, key) * 20000)  # 320 MiB of replies if all were answered
            except (BrokenPipeError, ConnectionResetError):
                pass
            time.sleep(1.0)
            grown = _rss() - rss
        print(f"orchestrator RSS grew {grown / 2**20:.1f} MiB")
        assert grown < 64 * 2**20, grown / 2**20
        with _forwarder(orchestrator, m0, a) as forwarder:  # and the store still serves a rank
            assert dist.PrefixStore(a.store_prefix, _client(forwarder.port)).get("big") == b"z" * MAX_VALUE


def _rss() -> int:
    """This process's resident memory (the orchestrator under test runs in it), bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_store_process_that_never_starts_is_refused_within_the_bound(monkeypatch):
    """The orchestrator waits for its store's process's first line at most START_TIMEOUT_S, then stops it."""
    import sys

    from orchestrator import store_host

    monkeypatch.setattr(store_host, "START_TIMEOUT_S", 1.0)
    monkeypatch.setattr(store_host.StoreHost, "command", [sys.executable, "-c", "import time; time.sleep(60)"])
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="did not start.*no line within 1s"):
        store_host.StoreHost()
    assert time.monotonic() - began < 10
