"""The meta-miner's restart policy and the signed receipts it serves."""

from __future__ import annotations

import threading
import time

import pytest
from bittensor.sp_core import Keypair
from fastapi import Request

from template import wire as p
from template.miner import exit_codes
from template.miner.receipts import ReceiptStore
from template.miner.supervisor import CrashLoop, counts_as_crash, restart_delay
from template.wire.signing import sign_receipt, verify_receipt


def test_restart_delay_backs_off_exponentially_to_a_cap():
    assert restart_delay(0) == 0
    assert [restart_delay(n) for n in (1, 2, 3, 4, 5)] == [0, 1, 2, 4, 8]  # a first crash restarts at once
    assert restart_delay(20, cap_s=60) == 60


def test_handovers_are_not_crashes():
    assert not counts_as_crash(exit_codes.REASSIGN)
    assert not counts_as_crash(exit_codes.GROUP_FAILURE)
    assert not counts_as_crash(exit_codes.OK)
    for code in (exit_codes.ERROR, exit_codes.DIVERGED, -9, 137):
        assert counts_as_crash(code)


def test_crash_loop_cap_counts_only_the_window():
    loop = CrashLoop(max_crashes=3, window_s=100)
    for t in (0, 10, 20):
        loop.record(t)
    assert not loop.exceeded(20)
    loop.record(30)
    assert loop.exceeded(30)
    assert loop.recent(125) == 1 and not loop.exceeded(125)


def _receipt(hotkey: str, round_: int) -> p.Receipt:
    return p.Receipt(
        hotkey=hotkey,
        run_id="r",
        generation=1,
        round=round_,
        rank=0,
        start_state=None,
        end_state="a" * 64,
        seed=0,
        losses=[3.0, 2.5],
        contribution_sha256="b" * 64,
        contribution_norm=1.5,
        contribution_bytes=3,
        created_at=time.time(),
    )


def test_receipts_are_signed_stored_and_tamper_evident(tmp_path):
    key = Keypair.create_from_uri("//Miner")
    signed = sign_receipt(_receipt(key.ss58_address, 0), key.sign)
    assert verify_receipt(signed)
    forged = signed.model_copy(update={"receipt": signed.receipt.model_copy(update={"losses": [0.1, 0.1]})})
    assert not verify_receipt(forged)
    impostor = sign_receipt(_receipt(key.ss58_address, 0), Keypair.create_from_uri("//Other").sign)
    assert not verify_receipt(impostor)
    store = ReceiptStore(tmp_path, keep=3)
    for r in range(5):
        store.put(sign_receipt(_receipt(key.ss58_address, r), key.sign), b"abc")
    assert store.rounds() == [2, 3, 4]
    assert store.get(4).receipt.round == 4 and store.contribution(4) == b"abc"
    assert store.get(0) is None and store.contribution(0) is None
    # A rollback to round 1 (or a new run in the same work dir): the new rounds are kept, the abandoned
    # ones above them dropped (sorted by round, 2–4 would have had every new receipt pruned at once).
    for r in (1, 2):
        store.put(sign_receipt(_receipt(key.ss58_address, r), key.sign), b"new")
    assert store.rounds() == [1, 2] and store.contribution(2) == b"new"
    assert store.contribution(4) is None


def test_miner_flag_errors_are_one_line_exit_2():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for bad in (
        ["--rank", "0"],
        [
            "--rank",
            "3",
            "--world-size",
            "2",
            "--tcp-store-address",
            "h",
            "--tcp-store-port",
            "1",
            "--store-prefix",
            "x",
        ],
        ["--bogus"],
    ):
        out = subprocess.run(
            [sys.executable, "neurons/miner.py", "--orchestrator-url", "http://127.0.0.1:1", *bad],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, (bad, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_standby_miner_whose_stdin_closes_unused_exits_0_without_joining(tmp_path):
    """neurons/miner.py --standby (the meta-miner's warm spare) loads, waits for a line on stdin, and leaves
    quietly when stdin closes without one: it never reaches the orchestrator (none listens here)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    argv = ["neurons/miner.py", "--orchestrator-url", "http://127.0.0.1:1", "--work-dir", str(tmp_path), "--standby"]
    out = subprocess.run(
        [sys.executable, *argv], cwd=repo, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "orchestrator" not in (tmp_path / "miner.log").read_text().lower()


def test_a_started_spare_is_a_miner_to_the_tools(tmp_path):
    """A waiting spare is told from a miner by its stdin (utils.procs.is_waiting_spare: the benches and the
    e2e tests kill or count miners by it); once started it reads /dev/null and counts as a miner, though its
    command line still says --standby."""
    import subprocess
    import sys
    from pathlib import Path

    from utils.procs import is_waiting_spare, wait_until

    repo = Path(__file__).resolve().parents[2]
    argv = ["neurons/miner.py", "--orchestrator-url", "http://127.0.0.1:1", "--work-dir", str(tmp_path), "--standby"]
    proc = subprocess.Popen([sys.executable, *argv], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        wait_until("the spare to wait", lambda: is_waiting_spare(proc.pid), 60, poll=0.05)  # once it exec'd
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        wait_until("the spare to start", lambda: not is_waiting_spare(proc.pid), 120, poll=0.1)
        assert proc.poll() is None or proc.returncode != 0  # it went on into the miner (no orchestrator here)
    finally:
        proc.kill()
        proc.wait(10)
    assert not is_waiting_spare(proc.pid)  # gone


@pytest.mark.parametrize(
    "refusal",
    [(429, "rejoined too often; retry in 3.0s"), (503, "orchestrator unreachable at http://127.0.0.1:1: refused")],
)
def test_a_meta_miner_restarted_during_its_cool_down_waits_it_out(tmp_path, monkeypatch, refusal):
    """A meta-miner restarted while its hotkey sits out a cool-down (its miner or the meta-miner itself
    died too often) is refused its first join with a 429: it waits the cool-down out and joins, as after
    an eviction, instead of exiting 1 with a traceback (found by scripts/bench/chaos.py, where a
    meta-miner killed twice within minutes crashed on every restart until the cool-down ended). So is one
    started while the orchestrator is down (the client's retries spent: 503), e.g. both restarted at
    once (found by the chaos bench too: a meta-miner killed while the orchestrator restarted exited 1)."""
    from types import SimpleNamespace

    from template.miner import meta
    from template.net.orchestrator_client import OrchestratorError

    calls: list[str] = []

    class Orchestrator:  # the orchestrator's answers to a hotkey in cool-down, then after it
        def __init__(self, *_args, **_kw):
            pass

        def join(self, device="cpu"):
            calls.append("join")
            if calls.count("join") == 1:
                raise OrchestratorError(*refusal)
            return p.AssignmentResponse(status="waiting")

        def heartbeat(self, beat):
            calls.append("heartbeat")
            if calls.count("join") < 2:
                raise OrchestratorError(404, "no slot for this hotkey: POST /v1/join first")
            miner.stop()
            return p.HeartbeatResponse(generation=None, round=0, reassign=False)

        def assignment(self):
            return p.AssignmentResponse(status="waiting")

        def leave(self, *_args, **_kw):
            calls.append("leave")

        def cancel(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(meta, "OrchestratorClient", Orchestrator)
    monkeypatch.setattr(meta, "REJOIN_POLL_S", 0.0)
    monkeypatch.setattr(meta.MetaMiner, "serve", lambda self: SimpleNamespace(stop=lambda: None))
    cfg = SimpleNamespace(max_crashes=5, orchestrator_url="http://127.0.0.1:1", device="cpu", heartbeat_interval=0.01)
    miner = meta.MetaMiner(cfg, SimpleNamespace(hotkey=Keypair.create_from_uri("//Miner")), tmp_path, "owner")
    assert miner.run() == 0
    assert calls == ["join", "heartbeat", "join", "heartbeat", "leave"], calls
    assert miner.status.state == "stopped"


def test_a_meta_miner_the_orchestrator_refuses_exits_at_once(tmp_path, monkeypatch):
    """A refusal that waiting cannot change (403: the hotkey is not registered) ends the meta-miner on
    its first join, with the orchestrator's reason, instead of polling for ever."""
    from types import SimpleNamespace

    from template.miner import meta
    from template.net.orchestrator_client import OrchestratorError

    class Orchestrator(StandInOrchestrator):
        def join(self, device="cpu"):
            raise OrchestratorError(403, "hotkey not registered on netuid 1")

    monkeypatch.setattr(meta, "OrchestratorClient", Orchestrator)
    monkeypatch.setattr(meta.MetaMiner, "serve", lambda self: SimpleNamespace(stop=lambda: None))
    cfg = SimpleNamespace(max_crashes=5, orchestrator_url="http://127.0.0.1:1", device="cpu", heartbeat_interval=0.01)
    miner = meta.MetaMiner(cfg, SimpleNamespace(hotkey=Keypair.create_from_uri("//Miner")), tmp_path, "owner")
    with pytest.raises(OrchestratorError, match="not registered"):
        miner.run()


def test_orchestrator_client_rides_out_a_restart(tmp_path):
    """Idempotent calls retry (re-signed) until the orchestrator is back; join does not."""

    from fastapi import FastAPI

    from template.net.http import ServerThread, free_port
    from template.net.orchestrator_client import OrchestratorClient, OrchestratorError

    port = free_port()
    app = FastAPI()
    seen = []

    @app.get("/v1/assignment")
    async def assignment(request: Request):
        seen.append(request.headers.get("X-Bittensor-Nonce"))
        return {"status": "not_joined", "detail": "", "retry_after_s": 1.0}

    key = Keypair.create_from_uri("//Miner")
    server = ServerThread(app, port=port)
    threading.Timer(1.0, server.start).start()  # comes up a second after the first attempt
    client = OrchestratorClient(f"http://127.0.0.1:{port}", key, key.ss58_address, retry_s=20)
    try:
        assert client.assignment().status == "not_joined"
        assert len(seen) == 1 and seen[0]
        server.stop()
        quick = OrchestratorClient(f"http://127.0.0.1:{free_port()}", key, key.ss58_address, retry_s=0.5)
        try:
            quick.assignment()
            raise AssertionError("expected OrchestratorError")
        except OrchestratorError as error:
            assert error.status == 503 and "unreachable" in error.detail
        start = time.time()
        try:
            quick.join()
        except OrchestratorError:
            pass
        assert time.time() - start < 0.5  # join is never retried
        quick.close()
    finally:
        client.close()


def test_an_unreachable_orchestrator_is_asked_every_second_an_overloaded_one_less_often(caplog):
    """While nothing listens (an orchestrator restarting) a call asks again at least every second, so the swarm
    waits for the orchestrator's start-up and not for the rest of a backoff; answers of 503 back off further."""
    import re

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from template.net.http import ServerThread, free_port
    from template.net.orchestrator_client import UNREACHABLE_RETRY_S, OrchestratorClient, OrchestratorError

    def delays(client) -> list[float]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="template.net.orchestrator_client"), pytest.raises(OrchestratorError):
            client._check(client._send("GET", "/v1/assignment"))
        return [float(m) for m in re.findall(r"retrying in ([0-9.]+)s", caplog.text)]

    key = Keypair.create_from_uri("//Miner")
    gone = OrchestratorClient(f"http://127.0.0.1:{free_port()}", key, key.ss58_address, retry_s=3)
    try:
        unreachable = delays(gone)
    finally:
        gone.close()
    assert len(unreachable) >= 4 and max(unreachable) == UNREACHABLE_RETRY_S, unreachable

    app, port = FastAPI(), free_port()
    app.get("/v1/assignment")(lambda: JSONResponse({"detail": "overloaded"}, status_code=503))
    server = ServerThread(app, port=port)
    server.start()
    busy = OrchestratorClient(f"http://127.0.0.1:{port}", key, key.ss58_address, retry_s=3)
    try:
        overloaded = delays(busy)
    finally:
        busy.close()
        server.stop()
    assert max(overloaded) > UNREACHABLE_RETRY_S, overloaded


def test_cancel_ends_a_retry_loop_at_once():
    """A meta-miner told to stop while riding out an orchestrator outage stops within a second,
    not after the 60 s retry window."""
    from bittensor.sp_core import Keypair

    from template.net.http import free_port
    from template.net.orchestrator_client import OrchestratorClient, OrchestratorError

    key = Keypair.create_from_uri("//Miner")
    client = OrchestratorClient(f"http://127.0.0.1:{free_port()}", key, key.ss58_address, retry_s=60)
    threading.Timer(0.5, client.cancel).start()
    start = time.time()
    try:
        client.assignment()
        raise AssertionError("expected OrchestratorError")
    except OrchestratorError as error:
        assert error.status == 503
    assert time.time() - start < 2.0
    start = time.time()
    try:  # what the meta-miner does on its way out: one short attempt
        client.leave("stopping", retry=False, timeout=1.0)
    except OrchestratorError:
        pass
    assert time.time() - start < 2.0
    client.close()


class StandInOrchestrator:
    """The meta-miner's orchestrator client, standing in: assigns generation ``generation()`` (rank 0 of 3),
    answers heartbeats with ``beat(request)``."""

    generation = staticmethod(lambda: 7)
    beat = staticmethod(lambda request: p.HeartbeatResponse(generation=7, round=0, reassign=False))

    def __init__(self, *_args, **_kw):
        pass

    def join(self, device="cpu"):
        return p.AssignmentResponse(status="waiting")

    def heartbeat(self, request):
        return self.beat(request)

    def assignment(self):
        a = p.Assignment(
            generation=self.generation(),
            rank=0,
            world_size=3,
            members=[p.Member(rank=i, hotkey=f"hk{i}") for i in range(3)],
            store_host="127.0.0.1",
            store_port=1,
            store_prefix="x",
            round=0,
            checkpoint=None,
            run_id="r",
        )
        return p.AssignmentResponse(status="assigned", assignment=a)

    def leave(self, *_args, **_kw):
        pass

    def cancel(self):
        pass

    def close(self):
        pass


def _supervise(tmp_path, monkeypatch, child_code: str, run_s: float = 2.5) -> tuple[list, list]:
    """A real MetaMiner over a stand-in orchestrator whose generation moved from 7 to 8 the moment its
    miner started, and a real child process running ``child_code``. Returns (the generations its
    heartbeats carried, the pids of the miners it started)."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from template.miner import meta

    beats: list = []
    started: list[int] = []
    t0 = time.monotonic()

    def heartbeat(beat):
        beats.append(beat.generation)
        if time.monotonic() - t0 > run_s:
            miner.stop()
        return p.HeartbeatResponse(generation=8, round=0, reassign=beat.generation != 8)

    class Orchestrator(StandInOrchestrator):
        generation = staticmethod(lambda: 7 if not started else 8)
        beat = staticmethod(heartbeat)

    real_process = meta.MinerProcess

    def process(argv, log_path, env=None):
        child = real_process([sys.executable, "-c", child_code, str(tmp_path / "miner")], log_path)
        started.append(child.pid)
        return child

    (tmp_path / "miner").mkdir()
    monkeypatch.setattr(meta, "OrchestratorClient", Orchestrator)
    monkeypatch.setattr(meta, "MinerProcess", process)
    monkeypatch.setattr(meta, "REFORM_GRACE_S", 0.6)
    monkeypatch.setattr(meta.MetaMiner, "serve", lambda self: SimpleNamespace(stop=lambda: None))
    cfg = SimpleNamespace(
        max_crashes=5,
        orchestrator_url="http://127.0.0.1:1",
        device="cpu",
        heartbeat_interval=0.05,
        miner_script="neurons/miner.py",
    )
    monkeypatch.setattr(meta, "miner_argv", lambda *_a: [])
    miner = meta.MetaMiner(cfg, SimpleNamespace(hotkey=Keypair.create_from_uri("//Miner")), tmp_path, "owner")
    assert miner.run() == 0
    for pid in started:  # stopped with the meta-miner
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    return [b for b in beats if b is not None], started  # None: before its first miner started


def test_a_miner_that_follows_the_new_generation_in_place_is_kept(tmp_path, monkeypatch):
    """The miner joins a new generation in its own process and says so in its progress file: the
    meta-miner heartbeats with that generation and never relaunches it."""
    follows = (
        "import json, pathlib, sys, time; time.sleep(0.3); "
        "pathlib.Path(sys.argv[1], 'progress.json').write_text(json.dumps({'generation': 8, 'rank': 1, "
        "'world_size': 3, 'round': 0, 'step': 0, 'loss': None})); time.sleep(60)"
    )
    beats, started = _supervise(tmp_path, monkeypatch, follows)
    assert len(started) == 1, started
    assert beats[0] == 7 and beats[-1] == 8, beats


def test_a_miner_stuck_in_an_ended_generation_is_relaunched_after_a_grace(tmp_path, monkeypatch):
    """A miner still in the old generation REFORM_GRACE_S after the orchestrator said it ended (a
    collective waiting on a frozen peer) is stopped and started again; not before the grace."""
    stuck = "import time; time.sleep(60)"
    beats, started = _supervise(tmp_path, monkeypatch, stuck)
    assert len(started) == 2, started  # relaunched once, into generation 8, then left alone
    assert beats.count(7) >= 0.6 / 0.05 * 0.5, beats  # it waited out the grace before relaunching
    assert beats[-1] == 8, beats


def test_a_crashed_miner_is_replaced_by_the_warm_spare(tmp_path, monkeypatch):
    """With --spare the meta-miner keeps a standby miner (loaded, waiting on its stdin) behind the running one;
    when the miner crashes, the spare is the one started, at once, and a new spare stands by behind it. With no
    miner running (before the first assignment) the spare is started at once, so even the first miner is one:
    nothing is started cold. On stop every one of them is gone, the spare that never started included."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from template.miner import meta

    events = tmp_path / "events"
    child = (
        "import os, sys, time\n"
        "log = lambda what: open(sys.argv[1], 'a').write(f'{os.getpid()} {what}\\n')\n"
        "if '--standby' in sys.argv:\n"
        "    log('standby')\n"
        "    if not sys.stdin.readline(): log('released'); sys.exit(0)\n"
        "    log('go')\n"
        "    if not os.path.exists(sys.argv[1] + '.crashed'):  # the first one crashes once a spare stands by\n"
        "        open(sys.argv[1] + '.crashed', 'w').close(); time.sleep(1.0); log('crash'); sys.exit(1)\n"
        "else:\n"
        "    log('cold')\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()

    def heartbeat(beat):
        if time.monotonic() - t0 > 4.0:
            miner.stop()
        return p.HeartbeatResponse(generation=7, round=0, reassign=beat.generation not in (None, 7))

    class Orchestrator(StandInOrchestrator):
        beat = staticmethod(heartbeat)

    (tmp_path / "miner").mkdir()
    monkeypatch.setattr(meta, "OrchestratorClient", Orchestrator)
    monkeypatch.setattr(meta, "SPARE_AFTER_S", 0.2)
    monkeypatch.setattr(meta.MetaMiner, "serve", lambda self: SimpleNamespace(stop=lambda: None))
    monkeypatch.setattr(meta, "miner_argv", lambda *_a: [sys.executable, "-c", child, str(events)])
    cfg = SimpleNamespace(
        max_crashes=5, orchestrator_url="http://127.0.0.1:1", device="cpu", heartbeat_interval=0.05, spare=True
    )
    miner = meta.MetaMiner(cfg, SimpleNamespace(hotkey=Keypair.create_from_uri("//Miner")), tmp_path, "owner")
    assert miner.run() == 0
    seen = [line.split() for line in events.read_text().splitlines()]
    what = {}
    for pid, event in seen:
        what.setdefault(pid, []).append(event)
    assert not [pid for pid, e in what.items() if "cold" in e], seen
    first = [pid for pid, e in what.items() if e == ["standby", "go", "crash"]]
    warm = [pid for pid, e in what.items() if e == ["standby", "go"]]
    assert len(first) == 1 and len(warm) == 1, seen  # the crashed miner's successor was the spare
    (last,) = [e for pid, e in what.items() if pid not in first + warm]  # the next spare, never started
    assert last[0] == "standby" and "go" not in last, seen
    for pid in what:  # stopped with the meta-miner
        assert subprocess.run(["kill", "-0", pid], capture_output=True).returncode != 0
