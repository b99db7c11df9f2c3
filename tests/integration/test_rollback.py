"""The owner's rollback on a real orchestrator: a short run of real states (a diloco ``Trainer`` reporting
and uploading over signed HTTP to ``python -m orchestrator``), in which a state with Inf gets agreed (the
orchestrator refuses its checkpoint, 422); then ``python -m orchestrator rollback`` on the stopped
orchestrator, and the restarted one serves round R + 1 from the rolled-back checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from template import wire as p
from template.engine import checkpoint
from template.engine.exchange import InMemoryExchange
from template.engine.trainer import Trainer
from template.net.auth import BtAuth
from template.net.http import free_port
from tests.conftest import small_corpus
from tests.integration.test_orchestrator_http import _start_orchestrator, _wait_up

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)
GOOD_ROUNDS = 4  # rounds 0–3 agree finite states with stored checkpoints; round 4 agrees a poisoned one
TO_ROUND = 2


def _rollback(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "rollback", "--state-dir", str(state_dir), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def _beating(url: str, wallet, owner: str):
    """Heartbeats every second, as a meta-miner sends them, while the test trains (the orchestrator's
    heartbeat timeout is 30 s, and a busy machine can take longer over a few rounds)."""
    stop = threading.Event()

    def beat() -> None:
        with httpx.Client(base_url=url, auth=BtAuth(wallet, owner), timeout=30) as http:
            while not stop.wait(1.0):
                try:
                    gen = http.get("/v1/assignment").json().get("assignment", {}) or {}
                    http.post("/v1/heartbeat", json={"generation": gen.get("generation")})
                except httpx.HTTPError:
                    pass  # the orchestrator is restarting

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _batch(step: int, cfg: p.TrainingConfig, text: bytes):
    import torch

    g = torch.Generator().manual_seed(step)
    starts = torch.randint(0, len(text) - cfg.seq_len - 1, (cfg.batch_size,), generator=g).tolist()
    return torch.tensor([list(text[s : s + cfg.seq_len + 1]) for s in starts], dtype=torch.long)


def test_rollback_to_the_last_good_round_and_resume(sim_chain, tmp_path):
    text = small_corpus(tmp_path).read_bytes()
    state_dir, port = tmp_path / "orch", free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json")}
    owner = sim_chain.subnet.owner.hotkey.ss58_address
    miner = sim_chain.subnet.miners[0]
    proc = _start_orchestrator(sim_chain, state_dir, port, env)
    try:
        _wait_up(url, proc)
        with httpx.Client(base_url=url, auth=BtAuth(miner, owner), timeout=60) as http, _beating(url, miner, owner):
            a = p.AssignmentResponse.model_validate(http.post("/v1/join", json={}).json()).assignment
            run = p.RunInfo.model_validate(http.get("/v1/run").json())
            cfg = run.training
            trainer = Trainer(
                cfg,
                rank=0,
                world_size=1,
                peers=[miner.hotkey.ss58_address],
                sign=miner.hotkey.sign,
                context=f"{run.run_id}/{a.generation}",
                exchange=InMemoryExchange(1).bind(0),
            )
            trainer.load(None)
            states = {}
            for r in range(GOOD_ROUNDS):
                res = trainer.run_round(r, lambda step, r=r: _batch(1000 * r + step, cfg, text))
                states[r] = trainer.state_bytes()
                report = {"generation": a.generation, "round": r, "state": res.state_hash, "loss": 3.0}
                answer = http.post("/v1/round", json=report)
                assert answer.status_code == 200 and answer.json()["agreed"] == res.state_hash, answer.text
                assert http.put(f"/v1/checkpoint/{res.state_hash}", content=states[r]).status_code == 200
            # A state with Inf gets agreed (here: the only member says so); its upload is refused.
            tensors, meta = checkpoint.loads(states[GOOD_ROUNDS - 1])
            name = next(k for k in sorted(tensors) if k.startswith("param/"))
            tensors[name].view(-1)[0] = float("inf")
            poisoned = checkpoint.dumps(tensors, {**meta, "round": GOOD_ROUNDS + 1})
            sha = checkpoint.state_hash(poisoned)
            report = {"generation": a.generation, "round": GOOD_ROUNDS, "state": sha}
            assert http.post("/v1/round", json=report).json()["agreed"] == sha
            refused = http.put(f"/v1/checkpoint/{sha}", content=poisoned)
            assert refused.status_code == 422 and "NaN or Inf" in refused.json()["detail"], refused.text
            assert http.get(f"/v1/checkpoint/{sha}").status_code == 404
            # And one more round is agreed after it (opaque bytes, never uploaded).
            report = {"generation": a.generation, "round": GOOD_ROUNDS + 1, "state": "e" * 64}
            assert http.post("/v1/round", json=report).json()["agreed"] == "e" * 64

        busy = _rollback(state_dir, "--to-round", str(TO_ROUND))  # the orchestrator still runs
        assert busy.returncode == 2 and "running orchestrator" in busy.stderr, busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
        proc.terminate()
        proc.wait(30)

        missing = _rollback(state_dir, "--to-round", str(GOOD_ROUNDS))  # agreed, but its upload was refused
        assert missing.returncode == 2 and "no stored checkpoint" in missing.stderr, missing.stderr
        assert len(missing.stderr.strip().splitlines()) == 1
        done = _rollback(state_dir, "--to-round", str(TO_ROUND))
        assert done.returncode == 0, done.stderr
        good = checkpoint.state_hash(states[TO_ROUND])
        assert good in done.stdout and f"rounds {TO_ROUND + 1}-{GOOD_ROUNDS + 1}" in done.stdout

        proc = _start_orchestrator(sim_chain, state_dir, port, env)
        status = _wait_up(url, proc)
        assert (status["round"], status["state"]) == (TO_ROUND + 1, good)
        with httpx.Client(base_url=url, auth=BtAuth(miner, owner), timeout=60) as http, _beating(url, miner, owner):
            answer = p.AssignmentResponse.model_validate(http.get("/v1/assignment").json())
            if answer.status != "assigned":  # the slot survived; the new generation forms on the next tick
                answer = p.AssignmentResponse.model_validate(http.post("/v1/join", json={}).json())
            b = answer.assignment
            assert (b.round, b.checkpoint) == (TO_ROUND + 1, good) and b.generation > a.generation
            latest = http.get("/v1/checkpoint/latest")
            assert latest.content == states[TO_ROUND] and latest.headers["X-Checkpoint-Round"] == str(TO_ROUND + 1)
            undone = checkpoint.state_hash(states[TO_ROUND + 1])
            assert http.get(f"/v1/checkpoint/{undone}").status_code == 404  # no longer agreed
            # The member reloads the rolled-back state and the run goes on from round R + 1.
            fresh = Trainer(
                cfg,
                rank=0,
                world_size=1,
                peers=[miner.hotkey.ss58_address],
                sign=miner.hotkey.sign,
                context=f"{run.run_id}/{b.generation}",
                exchange=InMemoryExchange(1).bind(0),
            )
            assert fresh.load(http.get(f"/v1/checkpoint/{good}").content) == good
            res = fresh.run_round(TO_ROUND + 1, lambda step: _batch(7 + step, cfg, text))
            report = {"generation": b.generation, "round": TO_ROUND + 1, "state": res.state_hash}
            assert http.post("/v1/round", json=report).json()["agreed"] == res.state_hash
        assert httpx.get(url + "/v1/status").json()["round"] == TO_ROUND + 2
        _a_validator_follows_the_new_history(url, sim_chain, owner, res.state_hash, tmp_path)
    finally:
        proc.kill()
        proc.wait(10)


def _a_validator_follows_the_new_history(url: str, chain, owner: str, new_state: str, tmp_path: Path) -> None:
    """A validator that processed round GOOD_ROUNDS + 1 before the rollback sees that its round is no longer
    agreed and follows the new history (before, it waited, auditing nothing, until the run passed it)."""
    import time

    from template.net.orchestrator_client import OrchestratorClient, OrchestratorError
    from template.validator.loop import RunChanged, Validator, history_moved, rewind
    from template.validator.state import ValidatorState

    seen = ValidatorState(last_round=GOOD_ROUNDS + 1, last_state="e" * 64)
    with OrchestratorClient(url, chain.subnet.validators[0], owner) as client:
        for _ in range(60):  # the validator's permit comes with an epoch
            try:
                records = client.rounds(since=GOOD_ROUNDS + 1, limit=1000)
                break
            except OrchestratorError as error:
                assert error.status == 403, error
                time.sleep(0.5)
        assert records == [] and history_moved(records, seen)
        again = rewind(client, seen)
        assert seen.last_round == TO_ROUND and [r.round for r in again] == [TO_ROUND, TO_ROUND + 1]
        seen.last_round, seen.last_state = again[-1].round, again[-1].state
        assert again[-1].state == new_state and not history_moved(client.rounds(since=seen.last_round), seen)
        # The same round number agreed with another state (a new run reusing the state dir) moves it too.
        seen.last_state = "f" * 64
        assert history_moved(client.rounds(since=seen.last_round), seen)
        # A validator still auditing by another run's config (a new run on the orchestrator) stops and says so,
        # rather than fail every miner's receipt against the wrong run.
        run = client.run()
        validator = Validator(
            wallet=chain.subnet.validators[0],
            orchestrator=client,
            run=run.model_copy(update={"run_id": "an-earlier-run"}),
            read_shard=lambda index: b"",
            state_path=tmp_path / "validator.json",
            audit_secret=bytes(32),
        )
        validator.state.last_round, validator.state.last_state = GOOD_ROUNDS + 1, "e" * 64
        with pytest.raises(RunChanged, match=f"the orchestrator now runs {run.run_id}, not an-earlier-run"):
            validator.step({})
