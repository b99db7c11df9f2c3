"""Ranks find each other across hosts with no hand-set environment: the orchestrator on a bridge and
three meta-miners, each in its own network namespace with its own address (``utils/netns.py``), as a new
user would run them on separate machines. Inside a namespace the host name resolves to a loopback
address, so gloo's default would advertise an address no peer can reach; the miner binds gloo to the
interface that routes to the orchestrator (``template.miner.group.route_interface``) instead. The
swarm must form one generation and agree rounds, every miner on its own host's interface.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from template.net.http import free_port
from tests.conftest import small_corpus
from tests.integration.test_swarm_e2e import REPO, _receipts, _status, _wait, stop_all
from utils import netns

pytestmark = [pytest.mark.timeout(300)]
ROUNDS = 3


@pytest.fixture
def hosts():
    why = netns.unavailable()
    if why:
        pytest.skip(f"multi-host test skipped: {why}")
    with netns.Hosts(3) as made:
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
        status = _wait(
            f"{ROUNDS} rounds agreed by 3 hosts", lambda: (s := _status(url))["round"] >= ROUNDS and s, 240, logs
        )
        assert status["world_size"] == 3
        receipts = {w.name: _receipts(tmp_path / w.name) for w in miners}
        for r in range(ROUNDS):
            assert len({rec[r]["end_state"] for rec in receipts.values() if r in rec}) == 1, r
        for i, w in enumerate(miners):
            text = (tmp_path / w.name / "miner" / "stdout.log").read_text(errors="replace")
            assert f"gloo binds to {hosts.names[i]}i" in text, text[-2000:]
            assert "exited: 3" not in (tmp_path / f"{w.name}.log").read_text(errors="replace")
    finally:
        stop_all(procs)
