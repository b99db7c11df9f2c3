"""Validators on an honest swarm, end to end (orchestrator, 3 meta-miners with their miners and 2
validators as real processes on the embedded chain, the run overlapped: ``--overlap``): audits pass,
weights land on chain and every miner earns incentive; two validators auditing independent samples agree (cosine ≥ 0.95); a
validator killed mid-run (kill -9) resumes its scores from disk."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time

import bittensor as bt
import httpx
import pytest
from bittensor.sp_core import Keypair

from template.net.http import free_port
from tests.conftest import small_corpus
from tests.integration.test_swarm_e2e import _spawn, _status, _wait, stop_all

pytestmark = [pytest.mark.timeout(480)]
SETTLE_AUDITS = 12  # rounds each validator audits after the restart before their weights are compared


def _cosine(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    dot = sum(a.get(k, 0.0) * b.get(k, 0.0) for k in keys)
    na = math.sqrt(sum(v * v for v in a.values()))
    nb = math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb) if na and nb else 0.0


def test_two_validators_agree_and_a_restart_keeps_scores(sim_chain_two_validators, tmp_path):
    dev_chain = sim_chain_two_validators
    netuid = dev_chain.subnet.netuid

    async def low_rate_limit():
        async with dev_chain.client() as client:
            inner = await client.compose(bt.calls.AdminUtils.sudo_set_weights_set_rate_limit(netuid, 4))
            result = await client.submit_call(bt.calls.Sudo.sudo(call=inner), Keypair.create_from_uri("//Alice"))
            assert result.success, result.message
            await client.wait_for_epoch(netuid, timeout=30)  # validator permits

    asyncio.run(low_rate_limit())
    small_corpus(tmp_path, size=256 * 1024)
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json"), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    chain = [
        "--subtensor.chain_endpoint",
        dev_chain.endpoint,
        "--netuid",
        str(netuid),
        "--wallet.path",
        str(dev_chain.wallets_dir),
    ]
    logs = [tmp_path / "orchestrator.log"]
    procs = [
        _spawn(
            [
                "-m",
                "orchestrator",
                *chain,
                "--wallet.name",
                "owner",
                "--state-dir",
                str(tmp_path / "orch"),
                "--port",
                str(port),
                "--tcp-store-port",
                "0",
                "--dataset",
                str(tmp_path / "corpus.txt"),
                "--shard-size-kb",
                "16",
                "--inner-steps",
                "8",
                "--batch-size",
                "8",
                "--seq-len",
                "32",
                "--min-world-size",
                "3",
                # Overlapped rounds: each round's inner steps start from the state before the previous
                # round's outer step, so the audits below pass only if miners and validators follow one rule.
                "--overlap",
                "speculative",
            ],
            logs[0],
            env,
        )
    ]
    vports = [free_port(), free_port()]
    vurls = [f"http://127.0.0.1:{p}" for p in vports]

    def validator(i: int):
        logs.append(tmp_path / f"validator-{i}.{len(logs)}.log")
        # Two of three miners per round: each validator's sample is its own (seeded by its hotkey).
        return _spawn(
            [
                "neurons/validator.py",
                *chain,
                "--wallet.name",
                f"validator-{i}",
                "--orchestrator-url",
                url,
                "--state-dir",
                str(tmp_path / f"validator-{i}"),
                "--port",
                str(vports[i]),
                "--weights-interval",
                "3",
                "--sample-size",
                "2",
            ],
            logs[-1],
            env,
        )

    def status(i: int) -> dict:
        return httpx.get(vurls[i] + "/v1/status", timeout=5).json()

    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        for w in dev_chain.subnet.miners:
            logs.append(tmp_path / f"{w.name}.log")
            procs.append(
                _spawn(
                    [
                        "neurons/meta_miner.py",
                        *chain,
                        "--wallet.name",
                        w.name,
                        "--orchestrator-url",
                        url,
                        "--work-dir",
                        str(tmp_path / w.name),
                        "--axon.ip",
                        "127.0.0.2",
                        "--axon.port",
                        str(free_port("127.0.0.2")),
                        "--heartbeat-interval",
                        "0.5",
                    ],
                    logs[-1],
                    env,
                )
            )
        _wait("training", lambda: _status(url)["round"] >= 2, 180, logs)
        assert json.loads((tmp_path / "orch" / "run.json").read_text())["training"]["overlap"] == "speculative"
        procs += [validator(0), validator(1)]
        for i in (0, 1):
            _wait(
                f"validator-{i}'s weights on chain",
                lambda i=i: (s := status(i))["last_weights_block"] and len(s["weights"]) == 3 and s,
                180,
                logs,
            )
        audits = {**status(0)["last_audits"], **status(1)["last_audits"]}
        assert len(audits) == 3 and all(a["passed"] for a in audits.values()), audits

        # kill -9 validator-0 mid-run; what it had saved is what it must resume from.
        victim = procs[-2]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        saved = json.loads((tmp_path / "validator-0" / "validator.json").read_text())
        assert saved["last_round"] >= 2 and len(saved["ema"]) == 3 and all(v > 0 for v in saved["ema"].values())
        procs[-2] = validator(0)
        restart_log = tmp_path / "validator-0" / "validator.log"  # its plain log file (the first run never resumed)

        def resumed():
            for line in restart_log.read_text(errors="replace").splitlines():
                if "resumed from" in line:
                    return json.loads(line.split(" with scores ", 1)[1])
            return None

        assert _wait("validator-0 to resume", resumed, 60, logs) == saved["ema"]
        # It goes on from there: later rounds, scores decaying from the saved ones at most by (1 − α) per audit.
        after = _wait(
            "validator-0 to audit again", lambda: (s := status(0))["last_round"] > saved["last_round"] and s, 60, logs
        )
        for hotkey, value in saved["ema"].items():
            assert after["scores"][hotkey] >= 0.7**3 * value, (hotkey, value, after["scores"])

        # Both set weights again after the restart, from enough audits that every honest miner's evidence
        # of work is established (template.validator.scoring: it accumulates over rounds, and the EMA
        # follows); independent samples, the same verdict.
        # Counted in audits, not rounds: a validator audits the newest round it sees, and rounds can go by
        # faster than audits (rounds got faster once miners stopped relaunching for every generation).
        settled = {i: status(i)["rounds_audited"] + SETTLE_AUDITS for i in (0, 1)}
        for i in (0, 1):
            _wait(
                f"validator-{i} to audit {SETTLE_AUDITS} more rounds",
                lambda i=i: status(i)["rounds_audited"] >= settled[i],
                240,
                logs,
            )
        blocks = {i: status(i)["last_weights_block"] for i in (0, 1)}
        for i in (0, 1):
            _wait(
                f"validator-{i} to set weights again",
                lambda i=i: status(i)["last_weights_block"] > blocks[i],
                120,
                logs,
            )
        time.sleep(4)  # one more weight-setting each from later rounds

        def agreed():
            # On a slow machine a validator can need a few more audits before every miner's evidence is in.
            w0, w1 = status(0)["weights"], status(1)["weights"]
            return len(w0) == len(w1) == 3 and _cosine(w0, w1) >= 0.95 and (w0, w1)

        _wait("both validators to weigh all 3 miners alike", agreed, 120, logs)

        async def incentives():
            async with dev_chain.client() as client:
                await client.wait_for_epoch(netuid, timeout=30)
                graph = await client.subnets.metagraph(netuid)
                return {w.name: graph.by_hotkey(w.hotkey.ss58_address).incentive for w in dev_chain.subnet.miners}

        earned = asyncio.run(incentives())
        assert all(v > 0 for v in earned.values()), earned
    finally:
        stop_all(procs)
