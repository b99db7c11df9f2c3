"""The orchestrator over real signed HTTP (uvicorn) on the embedded chain."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import bittensor as bt
import httpx
import pytest

from template import wire as p
from template.net.auth import BtAuth
from tests.conftest import run
from utils.localnet.bootstrap import create_wallet

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


def _join(orchestrator, wallet) -> p.AssignmentResponse:
    with orchestrator.client(wallet) as http:
        response = http.post("/v1/join", json={})
        assert response.status_code == 200, response.text
        return p.AssignmentResponse.model_validate(response.json())


def _raw(orchestrator, method, path, headers=None, content=b""):
    return httpx.request(method, orchestrator.url + path, headers=headers or {}, content=content, timeout=30)


def test_registered_miner_is_admitted_and_status_hides_the_prefix(orchestrator):
    miners = orchestrator.chain.subnet.miners
    first = _join(orchestrator, miners[0])
    assert first.status == "assigned"
    assignment = first.assignment
    assert (assignment.rank, assignment.world_size) == (0, 1)
    second = _join(orchestrator, miners[1])
    assert second.status == "waiting" and second.queue_position == 0
    status = httpx.get(orchestrator.url + "/v1/status").json()
    assert status["generation"] == assignment.generation
    assert status["members"][0]["hotkey"] == miners[0].hotkey.ss58_address
    assert status["members"][0]["uid"] is not None
    assert status["waiting"][0]["hotkey"] == miners[1].hotkey.ss58_address
    secret = assignment.store_prefix.split("/")[-1]
    for public in ("/v1/status", "/metrics", "/", "/openapi.json"):
        assert secret not in httpx.get(orchestrator.url + public).text
    metrics = httpx.get(orchestrator.url + "/metrics").text
    assert "tensorswarm_world_size 1.0" in metrics and "tensorswarm_waiting 1.0" in metrics


def test_auth_matrix(orchestrator):
    subnet = orchestrator.chain.subnet
    miner, validator = subnet.miners[0], subnet.validators[0]
    body = b"{}"
    unsigned = _raw(orchestrator, "POST", "/v1/join", {"content-type": "application/json"}, body)
    assert unsigned.status_code == 401 and "X-Bittensor" in unsigned.json()["detail"]

    def signed(signer, receiver=orchestrator.hotkey, path="/v1/join", content=body, nonce_ns=None):
        headers = bt.http_auth.sign(
            signer, method="POST", path=path, body=content, receiver_ss58=receiver, nonce_ns=nonce_ns
        )
        return {**headers, "content-type": "application/json"}

    forged = signed(miner)
    forged["X-Bittensor-Signature"] = signed(validator)["X-Bittensor-Signature"]
    assert _raw(orchestrator, "POST", "/v1/join", forged, body).status_code == 401
    once = signed(miner)
    assert _raw(orchestrator, "POST", "/v1/join", once, body).status_code == 200
    replay = _raw(orchestrator, "POST", "/v1/join", once, body)
    assert replay.status_code == 401 and "already accepted" in replay.json()["detail"]
    stale = _raw(orchestrator, "POST", "/v1/join", signed(miner, nonce_ns=time.time_ns() - 60 * 10**9), body)
    assert stale.status_code == 401
    wrong = _raw(orchestrator, "POST", "/v1/join", signed(miner, receiver=validator.hotkey.ss58_address), body)
    assert wrong.status_code == 401
    tampered = _raw(orchestrator, "POST", "/v1/join", signed(miner), b'{"device": "cuda"}')
    assert tampered.status_code == 401
    stranger = create_wallet(orchestrator.chain.wallets_dir.parent / "extra", "stranger")
    with orchestrator.client(stranger) as http:
        denied = http.post("/v1/join", json={})
        assert denied.status_code == 403 and "not registered" in denied.json()["detail"]
        assert http.get("/v1/run").status_code == 403
    with orchestrator.client(miner) as http:
        no_permit = http.get("/v1/rounds")
        assert no_permit.status_code == 403 and "permit" in no_permit.json()["detail"]

    async def epoch():
        async with orchestrator.chain.client() as client:
            await client.wait_for_epoch(subnet.netuid, timeout=30)

    run(epoch())
    with orchestrator.client(validator) as http:
        # The permit arrives with the first epoch; the cache refreshes on a permit miss.
        for _ in range(20):
            answer = http.get("/v1/rounds")
            if answer.status_code == 200:
                break
            time.sleep(0.5)
        assert answer.status_code == 200 and answer.json() == []


def test_malformed_and_oversized_bodies(orchestrator):
    miner = orchestrator.chain.subnet.miners[0]
    with orchestrator.client(miner) as http:
        assert http.post("/v1/join", json={"device": "tpu"}).status_code == 422
        unknown = http.post("/v1/join", json={"device": "cpu", "extra": 1})
        assert unknown.status_code == 422 and "extra" in unknown.text
        assert (
            http.post("/v1/join", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
        )
        _join(orchestrator, miner)
        nan = http.post("/v1/heartbeat", content=b'{"loss": NaN}', headers={"content-type": "application/json"})
        assert nan.status_code == 422
        big = http.post("/v1/heartbeat", json={"detail": "x" * 200_000})
        assert big.status_code == 413 and "exceeds" in big.json()["detail"]
        assert http.get("/v1/data/not-a-hash").status_code == 422
        assert http.get("/v1/data/" + "0" * 64).status_code == 404


def test_run_config_and_dataset_shards(orchestrator):
    miner = orchestrator.chain.subnet.miners[0]
    with orchestrator.client(miner) as http:
        info = p.RunInfo.model_validate(http.get("/v1/run").json())
        assert info.training.preset == "tiny" and info.dataset.manifest_id() == info.dataset_id
        assert info.dataset.heldout_start < len(info.dataset.shards)
        for shard in info.dataset.shards[:3]:
            data = http.get(f"/v1/data/{shard.sha256}").content
            assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.size


def test_generation_changes_on_leave_and_timeout(orchestrator):
    m0, m1, m2 = orchestrator.chain.subnet.miners
    # Every member keeps its slot until the test lets it go (a 5 s heartbeat timeout: on a loaded machine a
    # join alone can take that long).
    stop, alive = threading.Event(), []

    def keep_alive():
        clients = {}
        while not stop.wait(1.0):
            for wallet in list(alive):
                clients.setdefault(wallet, orchestrator.client(wallet)).post("/v1/heartbeat", json={})
        for client in clients.values():
            client.close()

    keeper = threading.Thread(target=keep_alive, daemon=True)
    keeper.start()
    first = _join(orchestrator, m0).assignment
    alive.append(m0)
    _join(orchestrator, m1)
    alive.append(m1)
    _join(orchestrator, m2)
    alive.append(m2)
    with orchestrator.client(m0) as http, orchestrator.client(m1) as http1, orchestrator.client(m2) as http2:
        alive.remove(m0)
        assert http.post("/v1/leave", json={"reason": "test"}).json()["ok"]
        a1 = p.AssignmentResponse.model_validate(http1.get("/v1/assignment").json())
        stop.set()
        keeper.join(10)
        assert a1.status == "assigned" and a1.assignment.generation > first.generation
        assert [m.hotkey for m in a1.assignment.members] == [m1.hotkey.ss58_address, m2.hotkey.ss58_address]
        assert a1.assignment.rank == 0 and a1.assignment.store_prefix != first.store_prefix
        # m2 goes silent: after the 5 s heartbeat timeout m1 is alone, in a new generation.
        deadline = time.time() + 15
        while time.time() < deadline:
            beat = p.HeartbeatResponse.model_validate(
                http1.post("/v1/heartbeat", json={"generation": a1.assignment.generation}).json()
            )
            if beat.reassign:
                break
            time.sleep(0.5)
        assert beat.reassign
        a2 = p.AssignmentResponse.model_validate(http1.get("/v1/assignment").json()).assignment
        assert a2.world_size == 1 and a2.members[0].hotkey == m1.hotkey.ss58_address
        assert http2.post("/v1/heartbeat", json={}).status_code == 404


def test_round_reports_and_checkpoints(orchestrator):
    m0, m1 = orchestrator.chain.subnet.miners[:2]
    a0 = _join(orchestrator, m0).assignment
    state = os.urandom(4096)
    sha = hashlib.sha256(state).hexdigest()
    with orchestrator.client(m0) as http:
        unknown = http.put(f"/v1/checkpoint/{hashlib.sha256(b'x').hexdigest()}", content=b"x")
        assert unknown.status_code == 409
        report = http.post("/v1/round", json={"generation": a0.generation, "round": 0, "state": sha, "loss": 3.5})
        assert report.status_code == 200 and report.json()["agreed"] == sha and report.json()["round"] == 1
        mismatch = http.put(f"/v1/checkpoint/{sha}", content=state[:-1])
        assert mismatch.status_code == 400 and "does not match" in mismatch.json()["detail"]
        stored = http.put(f"/v1/checkpoint/{sha}", content=state)
        assert stored.status_code == 200 and stored.json()["round"] == 1
        # A retry of the completing report (answer lost) is idempotent; anything else is stale.
        again = http.post("/v1/round", json={"generation": a0.generation, "round": 0, "state": sha})
        assert again.status_code == 200 and again.json()["agreed"] == sha
        other = http.post("/v1/round", json={"generation": a0.generation, "round": 0, "state": "e" * 64})
        assert other.status_code == 409
    with orchestrator.client(m1) as http:
        assert http.put(f"/v1/checkpoint/{sha}", content=state).status_code == 403  # not a member
        latest = http.get("/v1/checkpoint/latest")
        assert latest.content == state and latest.headers["X-Checkpoint-Round"] == "1"
        assert http.get(f"/v1/checkpoint/{sha}").content == state
    status = httpx.get(orchestrator.url + "/v1/status").json()
    assert status["round"] == 1 and status["state"] == sha and status["loss_history"] == [[0, 3.5]]


def _start_orchestrator(chain, state_dir: Path, port: int, env) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "--subtensor.chain_endpoint",
            chain.endpoint,
            "--netuid",
            str(chain.subnet.netuid),
            "--wallet.path",
            str(chain.wallets_dir),
            "--wallet.name",
            "owner",
            "--state-dir",
            str(state_dir),
            "--port",
            str(port),
            "--tcp-store-port",
            "0",
            "--dataset",
            str(state_dir.parent / "corpus.txt"),
            "--shard-size-kb",
            "8",
            "--heartbeat-timeout",
            "30",
            "--metagraph-refresh",
            "1",
            "--byzantine-fraction",
            "0",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_up(url: str, proc: subprocess.Popen) -> dict:
    deadline = time.time() + 120  # a fresh virtualenv compiles every module on first import, on a loaded host
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"orchestrator exited: {proc.stdout.read()}")
        try:
            return httpx.get(url + "/v1/status", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError("orchestrator did not come up")


def test_kill_9_and_restart_keeps_everything(dev_chain, tmp_path):
    from template.net.http import free_port
    from tests.conftest import small_corpus

    small_corpus(tmp_path)
    state_dir = tmp_path / "orch"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json")}
    owner = dev_chain.subnet.owner.hotkey.ss58_address
    m0, m1 = dev_chain.subnet.miners[:2]
    proc = _start_orchestrator(dev_chain, state_dir, port, env)
    try:
        _wait_up(url, proc)
        with (
            httpx.Client(base_url=url, auth=BtAuth(m0, owner), timeout=30) as h0,
            httpx.Client(base_url=url, auth=BtAuth(m1, owner), timeout=30) as h1,
        ):
            gen = h0.post("/v1/join", json={}).json()["assignment"]["generation"]
            sha = "c" * 64
            assert (
                h0.post("/v1/round", json={"generation": gen, "round": 0, "state": sha, "loss": 2.0}).status_code == 200
            )
            assert h1.post("/v1/join", json={}).json()["status"] == "waiting"
            before = httpx.get(url + "/v1/status").json()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = _start_orchestrator(dev_chain, state_dir, port, env)
            after = _wait_up(url, proc)
            for key in ("run_id", "generation", "round", "state", "world_size", "loss_history"):
                assert after[key] == before[key], key
            assert [m["hotkey"] for m in after["members"]] == [m0.hotkey.ss58_address]
            assert [m["hotkey"] for m in after["waiting"]] == [m1.hotkey.ss58_address]
            # The member carries on without re-assignment; its assignment is unchanged.
            beat = h0.post("/v1/heartbeat", json={"generation": gen}).json()
            assert beat == {"generation": gen, "round": 1, "reassign": False}
    finally:
        proc.kill()
        proc.wait(10)


def test_cli_refuses_bad_flags_and_changed_runs(dev_chain, tmp_path):
    from tests.conftest import small_corpus

    small_corpus(tmp_path)
    base = [
        sys.executable,
        "-m",
        "orchestrator",
        "--subtensor.chain_endpoint",
        dev_chain.endpoint,
        "--wallet.path",
        str(dev_chain.wallets_dir),
        "--wallet.name",
        "owner",
        "--state-dir",
        str(tmp_path / "orch"),
        "--dataset",
        str(tmp_path / "corpus.txt"),
        "--shard-size-kb",
        "8",
        "--tcp-store-port",
        "0",
    ]
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json")}
    for bad in (
        ["--inner-steps", "0"],
        ["--preset", "huge"],
        ["--bogus"],
        ["--min-world-size", "5", "--max-world-size", "2"],
    ):
        out = subprocess.run(base + bad, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (bad, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # Create the run once (then stop), and restarting with other settings is refused.
    from template.net.http import free_port

    proc = subprocess.Popen(
        base + ["--port", str(free_port())],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while not (tmp_path / "orch" / "run.json").exists() and time.time() < deadline:
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(20)
    changed = subprocess.run(
        base + ["--inner-steps", "7"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert changed.returncode == 1
    assert "inner_steps" in changed.stderr and len(changed.stderr.strip().splitlines()) == 1
    run_json = json.loads((tmp_path / "orch" / "run.json").read_text())
    assert run_json["training"]["inner_steps"] == 20


def test_only_the_last_k_checkpoints_are_kept(orchestrator):
    m0 = orchestrator.chain.subnet.miners[0]
    a0 = _join(orchestrator, m0).assignment
    keep = orchestrator.service.settings.keep_checkpoints
    uploaded = []
    with orchestrator.client(m0) as http:
        for r in range(keep + 2):
            state = f"state after round {r}".encode()
            sha = hashlib.sha256(state).hexdigest()
            assert (
                http.post("/v1/round", json={"generation": a0.generation, "round": r, "state": sha}).status_code == 200
            )
            assert http.put(f"/v1/checkpoint/{sha}", content=state).status_code == 200
            uploaded.append(sha)
        listed = [c["sha256"] for c in http.get("/v1/checkpoints").json()]
        assert listed == uploaded[::-1][:keep]
        assert http.get(f"/v1/checkpoint/{uploaded[0]}").status_code == 404
        assert not (orchestrator.service.checkpoint_dir / uploaded[0]).exists()
        assert http.get("/v1/checkpoint/latest").headers["X-Checkpoint-Sha256"] == uploaded[-1]


def test_a_late_upload_is_taken_while_it_is_newer_than_every_checkpoint(orchestrator):
    """A slow uplink's upload can start after the next round was agreed: that state is still the newest the
    orchestrator could hold (its replays start from it). One older than a checkpoint held is never needed."""
    m0 = orchestrator.chain.subnet.miners[0]
    a0 = _join(orchestrator, m0).assignment
    states = [f"state after round {r}".encode() for r in range(3)]
    shas = [hashlib.sha256(state).hexdigest() for state in states]
    with orchestrator.client(m0) as http:
        for r, sha in enumerate(shas):
            assert (
                http.post("/v1/round", json={"generation": a0.generation, "round": r, "state": sha}).status_code == 200
            )
        late = http.put(f"/v1/checkpoint/{shas[1]}", content=states[1])
        assert late.status_code == 200 and late.json()["round"] == 2, late.text
        older = http.put(f"/v1/checkpoint/{shas[0]}", content=states[0])
        assert older.status_code == 409 and "newer than every checkpoint" in older.json()["detail"]
        assert http.put(f"/v1/checkpoint/{shas[1]}", content=states[1]).json()["round"] == 2  # held: unread
        assert http.put(f"/v1/checkpoint/{shas[2]}", content=states[2]).status_code == 200
        assert [c["round"] for c in http.get("/v1/checkpoints").json()] == [3, 2]


def test_a_download_under_way_survives_the_prune_of_its_checkpoint(orchestrator):
    m0 = orchestrator.chain.subnet.miners[0]
    a0 = _join(orchestrator, m0).assignment
    keep = orchestrator.service.settings.keep_checkpoints
    with orchestrator.client(m0) as http:
        state = b"x" * (3 * 2**20)  # several read chunks
        r = 0
        sha = hashlib.sha256(state).hexdigest()
        assert http.post("/v1/round", json={"generation": a0.generation, "round": r, "state": sha}).status_code == 200
        assert http.put(f"/v1/checkpoint/{sha}", content=state).status_code == 200
        with http.stream("GET", f"/v1/checkpoint/{sha}") as download:
            chunks = download.iter_raw(2**16)
            got = next(chunks)
            for r in range(1, 1 + keep):  # enough newer states to prune it
                newer = f"state after round {r}".encode()
                newer_sha = hashlib.sha256(newer).hexdigest()
                http.post("/v1/round", json={"generation": a0.generation, "round": r, "state": newer_sha})
                assert http.put(f"/v1/checkpoint/{newer_sha}", content=newer).status_code == 200
            assert not (orchestrator.service.checkpoint_dir / sha).exists()  # pruned: the open file remains
            got += b"".join(chunks)
        assert got == state
        assert http.get(f"/v1/checkpoint/{sha}").status_code == 404


def test_members_report_bad_contributions(orchestrator):
    m0, m1, m2 = orchestrator.chain.subnet.miners
    for w in (m0, m1, m2):
        _join(orchestrator, w)
    with orchestrator.client(m0) as http:  # round 0 done → the waiting two join at the boundary
        gen = http.get("/v1/assignment").json()["assignment"]["generation"]
        http.post("/v1/round", json={"generation": gen, "round": 0, "state": "d" * 64})
        gen = http.get("/v1/assignment").json()["assignment"]["generation"]
        bad = {"generation": gen, "round": 1, "accused": m2.hotkey.ss58_address, "reason": "bad signature"}
        assert http.post("/v1/report", json=bad).status_code == 200
        assert http.post("/v1/report", json=bad).status_code == 200  # idempotent per reporter
        myself = http.post("/v1/report", json={**bad, "accused": m0.hotkey.ss58_address})
        assert myself.status_code == 409
        assert http.post("/v1/report", json={**bad, "generation": gen + 5}).status_code == 409
        assert http.post("/v1/report", json={**bad, "reason": "x" * 500}).status_code == 422
        # Only rounds of the current generation (it started at round 1): no reports for any past round.
        past = http.post("/v1/report", json={**bad, "round": 0})
        assert past.status_code == 409 and "earlier generation" in past.json()["detail"]
    with orchestrator.client(m1) as http:
        assert http.post("/v1/report", json=bad).status_code == 200
    members = {m["hotkey"]: m for m in httpx.get(orchestrator.url + "/v1/status").json()["members"]}
    assert members[m2.hotkey.ss58_address]["reports"] == 2
    assert members[m0.hotkey.ss58_address]["reports"] == 0
    stranger = create_wallet(orchestrator.chain.wallets_dir.parent / "extra", "stranger")
    with orchestrator.client(stranger) as http:
        assert http.post("/v1/report", json=bad).status_code == 403


def test_stall_reports_are_taken_from_members_of_the_current_round_only(orchestrator):
    m0, m1 = orchestrator.chain.subnet.miners[:2]
    a0 = _join(orchestrator, m0).assignment
    with orchestrator.client(m1) as stranger:  # registered, never joined
        refused = stranger.post("/v1/stall", json={"generation": a0.generation, "round": a0.round, "missing": [0]})
        assert refused.status_code == 409 and "not a member" in refused.text
    with orchestrator.client(m0) as http:
        wrong_round = http.post("/v1/stall", json={"generation": a0.generation, "round": a0.round + 5})
        assert wrong_round.status_code == 409 and "current round" in wrong_round.text
        no_such_rank = http.post("/v1/stall", json={"generation": a0.generation, "round": a0.round, "missing": [9]})
        assert no_such_rank.status_code == 409 and "ranks must be in" in no_such_rank.text
        malformed = http.post("/v1/stall", json={"generation": a0.generation, "round": a0.round, "missing": "all"})
        assert malformed.status_code == 422
        assert http.post("/v1/stall", json={"generation": a0.generation, "round": a0.round}).status_code == 200
