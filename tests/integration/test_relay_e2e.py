"""A Byzantine ring relay in a real swarm: the orchestrator, three honest meta-miners and one whose miner
corrupts every block it relays (``tests/adversaries/relay_miner.py``), as real processes on the embedded
chain over a real gloo group (the miners' ring exchange, ``template.engine.exchange.RingExchange``).

With four ranks and the relay last (rank 3), gloo's ring sends sender 2's block 2 → 3 → 0 → 1 and
sender 1's 1 → 2 → 3 → 0. So ranks 0 and 1 lack sender 2's block (held by 2 of 4: excluded for everyone,
relay 3 counted by two witnesses) and rank 0 lacks sender 1's (held by 3 of 4: included, fetched point to
point). Training must go on in one generation — no rank diverges, no group breaks — with every rank on
the same state, and the relay, never a sender, counted in ``GET /v1/status``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3

import pytest

from template.net.http import free_port
from tests.conftest import small_corpus
from tests.integration.test_swarm_e2e import REPO, _receipts, _spawn, _status, _wait, stop_all
from utils.localnet.bootstrap import create_wallet, fund, register

pytestmark = [pytest.mark.timeout(480)]
ROUNDS = 3


def test_a_corrupting_relay_neither_splits_the_swarm_nor_hides(sim_chain, tmp_path):
    dev_chain = sim_chain
    netuid = dev_chain.subnet.netuid

    async def setup():
        async with dev_chain.client() as client:
            w = create_wallet(dev_chain.wallets_dir, "adv-relay")
            await fund(client, w.coldkeypub.ss58_address, 10)
            await register(client, w, netuid)
            return w

    relay = asyncio.run(setup())
    small_corpus(tmp_path, size=256 * 1024)
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json"), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    chain = ["--subtensor.chain_endpoint", dev_chain.endpoint, "--netuid", str(netuid)]
    chain += ["--wallet.path", str(dev_chain.wallets_dir)]
    logs = [tmp_path / "orchestrator.log"]
    orchestrator = ["-m", "orchestrator", *chain, "--wallet.name", "owner", "--state-dir", str(tmp_path / "orch")]
    orchestrator += ["--port", str(port), "--tcp-store-port", "0", "--dataset", str(tmp_path / "corpus.txt")]
    orchestrator += ["--shard-size-kb", "16", "--inner-steps", "4", "--batch-size", "4", "--seq-len", "32"]
    orchestrator += ["--min-world-size", "4", "--heartbeat-timeout", "30"]
    procs = [_spawn(orchestrator, logs[0], env)]
    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        for w in [*dev_chain.subnet.miners, relay]:
            extra = ["--miner-script", str(REPO / "tests" / "adversaries" / "relay_miner.py")] if w is relay else []
            logs.append(tmp_path / f"{w.name}.log")
            procs.append(
                _spawn(
                    ["neurons/meta_miner.py", *chain, "--wallet.name", w.name, "--orchestrator-url", url]
                    + ["--work-dir", str(tmp_path / w.name), "--axon.ip", "127.0.0.2"]
                    + ["--axon.port", str(free_port("127.0.0.2")), "--heartbeat-interval", "0.5", "--timeout", "30"]
                    + extra,
                    logs[-1],
                    env,
                )
            )
            logs.append(tmp_path / w.name / "miner" / "stdout.log")
            if w is not relay:  # honest ones first: the relay joins last and ranks 3

                def joined(w=w):
                    s = _status(url)
                    return w.hotkey.ss58_address in {m["hotkey"] for m in s["members"] + s["waiting"]}

                _wait(f"{w.name} to join", joined, 120, logs)

        first = _wait("a generation of four", lambda: (s := _status(url))["world_size"] == 4 and s, 180, logs)
        ranks = {m["hotkey"]: m["rank"] for m in first["members"]}
        assert ranks[relay.hotkey.ss58_address] == 3
        status = _wait(f"{ROUNDS} agreed rounds", lambda: (s := _status(url))["round"] >= ROUNDS and s, 240, logs)
        assert status["generation"] == first["generation"], "the swarm re-formed: a rank diverged or the group broke"
        receipts = {w.name: _receipts(tmp_path / w.name) for w in [*dev_chain.subnet.miners, relay]}
        for r in range(ROUNDS):
            assert len({rec[r]["end_state"] for rec in receipts.values()}) == 1, r

        by_rank = {m["rank"]: m["hotkey"] for m in status["members"]}
        reports = {m["hotkey"]: m["reports"] for m in status["members"]}
        assert reports[relay.hotkey.ss58_address] == 2  # ranks 0 and 1 witnessed it relaying sender 2
        assert all(reports[by_rank[r]] == 0 for r in range(3))  # no sender is blamed

        db = sqlite3.connect(tmp_path / "orch" / "orchestrator.sqlite")
        rows = db.execute("SELECT round, decision FROM contribution_decisions ORDER BY round").fetchall()
        decisions = {r: json.loads(d) for r, d in rows}
        for r in range(ROUNDS):
            d = decisions[r]
            assert d["included"][2] is None and "2 of 4" in d["reasons"][2]  # corrupted for the majority
            assert d["included"][1] is not None and d["lacking"][1] == [0]  # repaired point to point
            assert [[s["sender"], s["relay"], s["witnesses"], s["counted"]] for s in d["suspects"]] == [
                [1, 3, [0], False],
                [2, 3, [0, 1], True],
            ]
        rank0 = next(w for w in dev_chain.subnet.miners if ranks[w.hotkey.ss58_address] == 0)
        assert "point to point" in (tmp_path / rank0.name / "miner" / "stdout.log").read_text()
    finally:
        stop_all(procs)
