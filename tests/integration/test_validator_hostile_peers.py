"""A validator that one miner cannot stall, in a real swarm on the embedded chain: orchestrator, 4
meta-miners with their miners and a validator as real processes. Three miners are honest; the fourth
trains honestly too, but the axon its meta-miner publishes on chain (``--axon.external_port``) is a
hostile server this test runs, which answers each request with the next of: ``{}``, ``5``, a 100 MiB body,
a body dripped one byte a second. The validator samples all 4 members each round; rounds keep being
audited, the honest miners pass and score every audited round, the hostile one scores 0, and no round's
fetches take longer than their deadline (the validator's log) nor any hostile answer longer than a
receipt's deadline (the hostile server's own clock)."""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import datetime

import httpx
import pytest
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse

from template.net.http import ServerThread, free_port
from template.validator.evidence import RECEIPT_DEADLINE_S
from tests.conftest import small_corpus
from tests.integration.test_swarm_e2e import _spawn, _status, _wait, stop_all
from utils.localnet.bootstrap import create_wallet, fund, register

pytestmark = [pytest.mark.timeout(300)]
BEHAVIOURS = ("object", "number", "100 MiB", "drip")
DRIP_MAX_S = 120  # the drip ends by itself at last, whoever listens
LATE = 0.5  # past a fetch deadline: scheduling, closing connections
NOTICE = 1.5  # a dripping server notices a hang-up at its next write, a second later
AUDIT_MARGIN = 25.0  # the audit's own compute on a shared CPU (~15 s seen at load 15 on 2 cores)
FETCH_LINE = re.compile(
    r"^(\S+ \S+) .* round (\d+): evidence from (\d+)/(\d+) miner\(s\).* in ([\d.]+)s \(deadline ([\d.]+)s\)"
)
AUDITED_LINE = re.compile(r"^(\S+ \S+) .* round (\d+): audited (\d+) miner\(s\): (.*)$")
SCORED = re.compile(r"(?:^|; )(\w{8}) (\d+\.\d{3})")  # loop.py's summary: "<hotkey[:8]> <score> z=… (why)"


class Hostile:
    """Answers every request with the next behaviour in turn; ``served`` records each one and, once the
    answer is over (sent, or the client hung up), how long it lasted."""

    def __init__(self):
        self.served: list[dict] = []
        self.app = FastAPI()

        @self.app.get("/{path:path}")
        async def answer(path: str) -> Response:
            record = {"behaviour": BEHAVIOURS[len(self.served) % len(BEHAVIOURS)], "path": "/" + path}
            self.served.append(record)
            started = time.monotonic()
            if record["behaviour"] in ("object", "number"):
                record["seconds"] = 0.0
                return Response(b"{}" if record["behaviour"] == "object" else b"5", media_type="application/json")

            async def body():
                try:
                    if record["behaviour"] == "drip":
                        for _ in range(DRIP_MAX_S):
                            yield b" "
                            await asyncio.sleep(1)
                    else:
                        block = bytes(64 << 10)
                        for _ in range((100 << 20) // len(block)):
                            yield block
                            await asyncio.sleep(0)
                finally:
                    record["seconds"] = time.monotonic() - started

            headers = {"content-length": str(100 << 20)} if record["behaviour"] == "100 MiB" else None
            return StreamingResponse(body(), media_type="application/json", headers=headers)


def _log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_hostile_axon_neither_stalls_the_validator_nor_earns(sim_chain, tmp_path):
    dev_chain = sim_chain
    netuid = dev_chain.subnet.netuid

    async def register_fourth():
        async with dev_chain.client() as client:
            wallet = create_wallet(dev_chain.wallets_dir, "miner-3")
            await fund(client, wallet.coldkeypub.ss58_address, 10)
            await register(client, wallet, netuid)
            return wallet

    hostile_wallet = asyncio.run(register_fourth())
    hostile_hotkey = hostile_wallet.hotkey.ss58_address
    honest = [w.hotkey.ss58_address for w in dev_chain.subnet.miners]
    small_corpus(tmp_path, size=256 * 1024)
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json"), "PYTHONUNBUFFERED": "1"}
    port, vport = free_port(), free_port()
    url, vurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{vport}"
    chain = [
        "--subtensor.chain_endpoint",
        dev_chain.endpoint,
        "--netuid",
        str(netuid),
        "--wallet.path",
        str(dev_chain.wallets_dir),
    ]
    # The run settings of test_swarm_e2e: the tiny preset, rounds of a few seconds.
    orchestrator = [
        *("-m", "orchestrator", *chain, "--wallet.name", "owner", "--state-dir", str(tmp_path / "orch")),
        *("--port", str(port), "--tcp-store-port", "0", "--dataset", str(tmp_path / "corpus.txt")),
        *("--shard-size-kb", "16", "--preset", "tiny", "--inner-steps", "8", "--batch-size", "8"),
        *("--seq-len", "32", "--inner-lr", "0.003", "--min-world-size", "4", "--heartbeat-timeout", "15"),
        *("--rejoin-cooldown", "1"),
    ]
    logs = [tmp_path / "orchestrator.log"]
    hostile = Hostile()
    server = ServerThread(hostile.app, host="127.0.0.2").start()
    procs = [_spawn(orchestrator, logs[0], env)]
    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        for w in [*dev_chain.subnet.miners, hostile_wallet]:
            logs.append(tmp_path / f"{w.name}.log")
            # The fourth meta-miner listens on its own port but publishes the hostile server's.
            published = ["--axon.external_port", str(server.port)] if w is hostile_wallet else []
            procs.append(
                _spawn(
                    [
                        *("neurons/meta_miner.py", *chain, "--wallet.name", w.name, "--orchestrator-url", url),
                        *("--work-dir", str(tmp_path / w.name), "--axon.ip", "127.0.0.2"),
                        *("--axon.port", str(free_port("127.0.0.2")), *published),
                        *("--timeout", "20", "--heartbeat-interval", "0.5"),
                    ],
                    logs[-1],
                    env,
                )
            )
        _wait(
            "training with all 4 members", lambda: (s := _status(url))["round"] >= 1 and s["world_size"] == 4, 150, logs
        )
        vlog = tmp_path / "validator" / "validator.log"
        logs.append(tmp_path / "validator.log")
        procs.append(
            _spawn(
                [
                    *("neurons/validator.py", *chain, "--wallet.name", "validator-0", "--orchestrator-url", url),
                    *("--state-dir", str(tmp_path / "validator"), "--port", str(vport), "--sample-size", "4"),
                    *("--poll-interval", "0.5"),
                ],
                logs[-1],
                env,
            )
        )
        logs.append(vlog)

        # Follow the validator's status: each round it audited completely (every audit written, then
        # last_round), as seen between its steps.
        audited: dict[int, dict] = {}
        seen_at: dict[int, float] = {}  # when each audited round first showed

        def watch():
            s = httpx.get(vurl + "/v1/status", timeout=5).json()
            rounds = {a["round"] for a in s["last_audits"].values()}
            if rounds and max(rounds) == s["last_round"]:
                audited[s["last_round"]] = s
                seen_at.setdefault(s["last_round"], time.monotonic())
            behaviours = {r["behaviour"] for r in hostile.served if "seconds" in r}
            return len(audited) >= 5 and behaviours == set(BEHAVIOURS)

        _wait("5 audited rounds and every hostile behaviour served", watch, 150, logs)
    finally:
        stop_all(procs)
        server.stop()

    # Every audited round audited all four: the honest ones served and passed (their usefulness, relative
    # to each other, may be 0 in a round), the hostile one served nothing, failed and stays at 0; over the
    # rounds every honest miner earned a score.
    for r, s in audited.items():
        audits = s["last_audits"]
        assert set(audits) == {*honest, hostile_hotkey}, (r, audits)
        assert all(a["round"] == r for a in audits.values()), (r, audits)
        for hk in honest:
            assert audits[hk]["passed"] and audits[hk]["served"], (r, hk, audits[hk])
            assert hk in s["scores"], (r, s["scores"])
        assert not audits[hostile_hotkey]["passed"] and not audits[hostile_hotkey]["served"], audits[hostile_hotkey]
        assert s["scores"].get(hostile_hotkey, 0.0) == 0.0, (r, s["scores"])
    final = audited[max(audited)]["scores"]
    assert all(final[hk] > 0 for hk in honest), final

    # The hostile axon was asked for receipts (the first piece of a miner's evidence) and cost each
    # fetch at most a receipt's deadline: the 100 MiB one was refused at once, the drip cut off.
    assert {r["path"] for r in hostile.served} == {"/v1/receipts"}, hostile.served
    for record in hostile.served:
        if "seconds" in record:
            assert record["seconds"] < RECEIPT_DEADLINE_S + NOTICE, record
    drips = [r["seconds"] for r in hostile.served if r["behaviour"] == "drip" and "seconds" in r]
    # Held about the deadline: it was the deadline that ended them (seen from the server: less the request's way).
    assert drips and all(d > RECEIPT_DEADLINE_S - 1 for d in drips), drips

    # The validator's log (template.validator.evidence.fetch_round's line, then the step's "audited"): every
    # round's fetches within their deadline, 3 of 4 miners serving evidence; every audit step (the fetches,
    # then the audit) within the deadline plus the audit's own margin.
    fetched, steps = {}, []
    for line in vlog.read_text(errors="replace").splitlines():
        if m := FETCH_LINE.match(line):
            stamp, r, served, sampled, elapsed, deadline = m.groups()
            fetched[int(r)] = (_log_time(stamp), float(elapsed), float(deadline))
            assert (int(served), int(sampled)) == (3, 4), line
            assert float(elapsed) <= float(deadline) + LATE, line
        elif (m := AUDITED_LINE.match(line)) and int(m.group(3)):
            assert int(m.group(2)) in fetched, f"no fetch_round line before: {line} (loop.py must call fetch_round)"
            done_at, elapsed, deadline = fetched[int(m.group(2))]
            steps.append(step := elapsed + _log_time(m.group(1)) - done_at)
            assert step <= deadline + AUDIT_MARGIN, line
            # The round's scores (hotkey prefixes): all four scored, the hostile one 0.
            scored = {hk: float(x) for hk, x in SCORED.findall(m.group(4))}
            assert set(scored) == {hk[:8] for hk in [*honest, hostile_hotkey]}, line
            assert scored[hostile_hotkey[:8]] == 0.0, line
    assert set(audited) <= set(fetched) and len(steps) >= len(audited), (steps, sorted(audited), sorted(fetched))
    # Rounds kept being audited: one at least every step's worth of time (a step audits the newest round).
    deadline = max(d for _, _, d in fetched.values())
    times = [seen_at[r] for r in sorted(seen_at)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap <= deadline + AUDIT_MARGIN + 1 for gap in gaps), gaps
    print(
        f"audited rounds {sorted(audited)}, {[round(g, 1) for g in gaps]} s apart; audit steps (deadline {deadline}"
        f" s): {[round(s, 2) for s in steps]} s; hostile answers: {hostile.served}"
    )
