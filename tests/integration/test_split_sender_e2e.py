"""A sender that splits its peers' views in a real swarm: the orchestrator, three honest meta-miners and
one whose miner sends its block intact to rank 0 only and with a flipped byte to the others
(``tests/adversaries/split_miner.py``), as real processes on the embedded chain over a real gloo group
(the miners' exchange, ``template.engine.exchange.DirectExchange``: every block straight from its sender).

With the splitter last (rank 3), ranks 0 and 3 hold its contribution and ranks 1 and 2 do not: 2 of 4,
not a majority, so the agreement leaves it out for everyone. Without the agreement rank 0 would aggregate
four contributions and ranks 1, 2 three, and the group would split. Training must go on in one
generation — no rank diverges, no group breaks — with every rank on the same state, every honest
contribution included, and nobody reported: a bad signature on a block that came straight from its
sender is the sender's own loss (its work is left out), never an honest rank's fault.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from template.net.http import free_port
from tests.integration.test_swarm_e2e import (
    REPO,
    _receipts,
    _spawn,
    _status,
    _wait,
    register_extra,
    small_swarm,
    stop_all,
)

pytestmark = [pytest.mark.timeout(480)]
ROUNDS = 3


def test_a_splitting_sender_neither_splits_the_swarm_nor_gets_in(sim_chain, tmp_path):
    dev_chain = sim_chain
    [splitter] = register_extra(dev_chain, "adv-split")
    orchestrator, url, chain, env = small_swarm(
        dev_chain, tmp_path, "--min-world-size", "4", "--heartbeat-timeout", "30"
    )
    logs = [tmp_path / "orchestrator.log"]
    procs = [_spawn(orchestrator, logs[0], env)]
    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        for w in [*dev_chain.subnet.miners, splitter]:
            extra = ["--miner-script", str(REPO / "tests" / "adversaries" / "split_miner.py")] if w is splitter else []
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
            if w is not splitter:  # honest ones first: the splitter joins last and ranks 3

                def joined(w=w):
                    s = _status(url)
                    return w.hotkey.ss58_address in {m["hotkey"] for m in s["members"] + s["waiting"]}

                _wait(f"{w.name} to join", joined, 120, logs)

        first = _wait("a generation of four", lambda: (s := _status(url))["world_size"] == 4 and s, 180, logs)
        ranks = {m["hotkey"]: m["rank"] for m in first["members"]}
        assert ranks[splitter.hotkey.ss58_address] == 3
        status = _wait(f"{ROUNDS} agreed rounds", lambda: (s := _status(url))["round"] >= ROUNDS and s, 240, logs)
        assert status["generation"] == first["generation"], "the swarm re-formed: a rank diverged or the group broke"
        receipts = {w.name: _receipts(tmp_path / w.name) for w in [*dev_chain.subnet.miners, splitter]}
        for r in range(ROUNDS):
            assert len({rec[r]["end_state"] for rec in receipts.values()}) == 1, r

        reports = {m["hotkey"]: m["reports"] for m in status["members"]}
        assert all(n == 0 for n in reports.values()), reports  # nobody is blamed, the splitter included

        db = sqlite3.connect(tmp_path / "orch" / "orchestrator.sqlite")
        rows = db.execute("SELECT round, decision FROM contribution_decisions ORDER BY round").fetchall()
        decisions = {r: json.loads(d) for r, d in rows}
        for r in range(ROUNDS):
            d = decisions[r]
            assert d["included"][3] is None and "2 of 4" in d["reasons"][3], d  # held by ranks 0 and 3 only
            assert all(d["included"][k] is not None and d["lacking"][k] == [] for k in range(3)), d
        # Rank 0 aggregated what everyone did, not the four contributions it received.
        rank0 = next(w for w in dev_chain.subnet.miners if ranks[w.hotkey.ss58_address] == 0)
        assert "not agreed" in (tmp_path / rank0.name / "miner" / "stdout.log").read_text().lower()
    finally:
        stop_all(procs)
