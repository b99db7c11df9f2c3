"""template.engine.replay: an agreed state rebuilt from an earlier one and the agreed contributions between,
every step checked against the agreed hash; the command the orchestrator runs refuses bad input in one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from template.engine.replay import ReplayMismatch, replay
from tests.unit.test_overlap import CFG, _batch, _each, _swarm

PLAIN = CFG.model_copy(update={"overlap": "none"})
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rounds():
    """Three agreed rounds of a 3-rank swarm: (round, included, contributions, agreed state), and the states."""
    trainers = _swarm(PLAIN)
    states = [trainers[0].state_bytes()]
    out = []
    for r in range(3):
        results = _each(trainers, lambda i, t, r=r: t.run_round(r, _batch(i, r)))
        contributions = {rank: res.contribution for rank, res in enumerate(results)}
        included = [hashlib.sha256(c).hexdigest() for c in contributions.values()]
        out.append((r, included, contributions, results[0].state_hash))
        states.append(trainers[0].state_bytes())
    return out, states


def test_replay_from_the_seed_and_from_a_checkpoint_gives_the_agreed_states(rounds):
    recs, states = rounds
    assert replay(PLAIN, None, recs) == states[3]
    assert replay(PLAIN, states[1], recs[1:]) == states[3]
    assert replay(PLAIN, states[2], recs[2:3]) == states[3]


def test_replay_names_the_round_whose_state_differs(rounds):
    recs, states = rounds
    r, included, contributions, agreed = recs[1]
    other = dict(contributions)
    other[2] = contributions[2][:-1] + bytes([contributions[2][-1] ^ 1])  # not the agreed bytes
    with pytest.raises(ReplayMismatch, match="round 1: the recomputed state"):
        replay(PLAIN, states[1], [(r, included, other, agreed)])
    with pytest.raises(ReplayMismatch, match=r"round 1: the included contribution\(s\) of rank\(s\) \[0\]"):
        replay(PLAIN, states[1], [(r, included, {k: v for k, v in contributions.items() if k}, agreed)])


def test_the_replay_command_writes_the_state_or_says_why_not(rounds, tmp_path):
    recs, states = rounds
    (tmp_path / "start").write_bytes(states[1])
    job_rounds = []
    for r, included, contributions, agreed in recs[1:]:
        payloads = {}
        for rank, data in contributions.items():
            (tmp_path / f"{r}-{rank}").write_bytes(data)
            payloads[rank] = str(tmp_path / f"{r}-{rank}")
        job_rounds.append({"round": r, "included": included, "payloads": payloads, "state": agreed})
    job = {"training": PLAIN.model_dump(mode="json"), "start": str(tmp_path / "start"), "rounds": job_rounds}
    good = tmp_path / "job.json"
    good.write_text(json.dumps({**job, "out": str(tmp_path / "out")}))

    def run(path):
        return subprocess.run(
            [sys.executable, "-m", "template.engine.replay", str(path)], cwd=REPO, capture_output=True, text=True
        )

    done = run(good)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == states[3]

    (tmp_path / "2-1").unlink()
    done = run(good)
    assert done.returncode == 1 and str(tmp_path / "2-1") in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**job, "out": str(tmp_path / "out"), "extra": 1}))
    done = run(bad)
    assert done.returncode == 1 and "bad.json" in done.stderr and len(done.stderr.strip().splitlines()) == 1
