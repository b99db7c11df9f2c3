"""Ranks find each other across hosts with no hand-set environment: the orchestrator on a bridge and
three meta-miners, each in its own network namespace with its own address (``utils/netns.py``), as a new
user would run them on separate machines. Inside a namespace the host name resolves to a loopback
address, so gloo's default would advertise an address no peer can reach; the miner binds gloo to the
interface that routes to the orchestrator (``template.miner.group.route_interface``) instead. The
swarm must form one generation and agree rounds, every miner on its own host's interface. A fourth host,
no member, attacks the store meanwhile: the TCPStore's own port is closed to it (it listens on the
orchestrator's loopback), torch's client gets nothing through the members-only tunnel, junk and
unsigned handshakes are denied, and the generation goes on unchanged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from template.net.http import free_port
from tests.conftest import small_corpus
from tests.integration.test_swarm_e2e import REPO, _receipts, _status, _wait, stop_all
from utils import netns

pytestmark = [pytest.mark.timeout(300)]
ROUNDS = 3
ATTACKER = """
import datetime, json, socket, sys
import torch.distributed as dist
host, tunnel, internal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = {}
try:
    socket.create_connection((host, internal), timeout=5).close()
    seen["internal"] = "connected"
except ConnectionRefusedError:
    seen["internal"] = "refused"
try:
    store = dist.TCPStore(host, tunnel, is_master=False, timeout=datetime.timedelta(seconds=3))
    seen["torch"] = "keys: %s" % store.list_keys()
except Exception as error:
    seen["torch"] = "failed: %s" % type(error).__name__
seen["junk"] = []
for i in range(20):
    with socket.create_connection((host, tunnel), timeout=10) as s:
        s.recv(200)
        s.sendall(b'{"hotkey": "5x", "generation": 0, "signature": "%s"}\\n' % (b"00" * 64) if i % 2 else b"junk\\n")
        seen["junk"].append(s.recv(200).split(b" ")[0].decode())
print(json.dumps(seen))
"""


def _store_ports(log) -> tuple[int, int]:
    """The store tunnel's port and the TCPStore's own, from the orchestrator's start line."""
    found = re.search(r"store tunnel \S+:(\d+) \(TCPStore on 127\.0\.0\.1:(\d+)\)", log.read_text())
    assert found, log.read_text()[-2000:]
    return int(found[1]), int(found[2])


@pytest.fixture
def hosts():
    why = netns.unavailable()
    if why:
        pytest.skip(f"multi-host test skipped: {why}")
    with netns.Hosts(4) as made:  # 3 miners' hosts and an attacker's
        yield made


def test_miners_on_separate_hosts_form_a_group_and_agree(sim_chain, tmp_path, hosts):
    dev_chain = sim_chain
    netuid = dev_chain.subnet.netuid
    small_corpus(tmp_path, size=256 * 1024)
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json"), "PYTHONUNBUFFERED": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)  # nothing set by hand
    port = free_port(hosts.bridge_ip)
    url = f"http://{hosts.bridge_ip}:{port}"
    chain = ["--subtensor.chain_endpoint", dev_chain.endpoint, "--netuid", str(netuid)]
    chain += ["--wallet.path", str(dev_chain.wallets_dir)]
    logs = [tmp_path / "orchestrator.log"]

    def spawn(argv, log, host=None):
        command = [sys.executable, *argv] if host is None else hosts.command(host, [sys.executable, *argv])
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
        )

    orchestrator = ["-m", "orchestrator", *chain, "--wallet.name", "owner", "--state-dir", str(tmp_path / "orch")]
    orchestrator += ["--host", hosts.bridge_ip, "--port", str(port), "--tcp-store-host", hosts.bridge_ip]
    orchestrator += ["--tcp-store-port", "0", "--dataset", str(tmp_path / "corpus.txt"), "--shard-size-kb", "16"]
    orchestrator += ["--inner-steps", "4", "--batch-size", "4", "--seq-len", "32", "--min-world-size", "3"]
    procs = [spawn(orchestrator, logs[0])]
    miners = list(dev_chain.subnet.miners)
    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        for i, w in enumerate(miners):
            logs.append(tmp_path / f"{w.name}.log")
            argv = ["neurons/meta_miner.py", *chain, "--wallet.name", w.name, "--orchestrator-url", url]
            argv += ["--work-dir", str(tmp_path / w.name), "--axon.ip", hosts.ip(i), "--axon.port", "8091"]
            argv += ["--heartbeat-interval", "0.5", "--timeout", "30"]
            procs.append(spawn(argv, logs[-1], host=i))
            logs.append(tmp_path / w.name / "miner" / "stdout.log")
        formed = _wait("a generation of 3", lambda: (s := _status(url))["world_size"] == 3 and s, 180, logs)
        # A host that is no member, on the same network, while the swarm trains: the store's own port is
        # closed to it, torch's client gets nothing from the tunnel, and junk handshakes change nothing.
        tunnel, internal = _store_ports(logs[0])
        attack = subprocess.run(
            hosts.command(3, [sys.executable, "-c", ATTACKER, hosts.bridge_ip, str(tunnel), str(internal)]),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert attack.returncode == 0, attack.stderr[-3000:]
        seen = json.loads(attack.stdout.strip().splitlines()[-1])
        assert seen["internal"] == "refused", seen
        assert seen["torch"].startswith("failed"), seen
        assert seen["junk"] == ["DENIED"] * 20, seen
        status = _wait(
            f"{ROUNDS} rounds agreed by 3 hosts", lambda: (s := _status(url))["round"] >= ROUNDS and s, 240, logs
        )
        assert status["world_size"] == 3 and status["generation"] == formed["generation"]
        receipts = {w.name: _receipts(tmp_path / w.name) for w in miners}
        for r in range(ROUNDS):
            assert len({rec[r]["end_state"] for rec in receipts.values() if r in rec}) == 1, r
        for i, w in enumerate(miners):
            text = (tmp_path / w.name / "miner" / "stdout.log").read_text(errors="replace")
            assert f"gloo binds to {hosts.names[i]}i" in text, text[-2000:]
            assert "exited: 3" not in (tmp_path / f"{w.name}.log").read_text(errors="replace")
    finally:
        stop_all(procs)
