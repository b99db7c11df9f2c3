"""orchestrator.rollback: the owner's rollback refuses, naming what is missing, unless the round is an
earlier agreed one whose checkpoint is stored, intact and finite, and no orchestrator holds the state dir;
then it rolls back (the ledger's transaction is tested in test_coordinator)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.coordinator import Coordinator
from orchestrator.rollback import RollbackRefused, StateDirBusy, lock_state_dir, main, roll_back
from template import wire as p
from template.engine import checkpoint


def _state(value: float) -> bytes:
    return checkpoint.dumps({"param/w": torch.full((4,), value), "outer/w": torch.zeros(4)}, {"round": 0})


def make_run(state_dir: Path, rounds: int = 4, stored=(1, 3)) -> list[str]:
    """A stopped orchestrator's state dir: ``rounds`` agreed rounds by one member, the checkpoints of
    the states after ``stored`` rounds on disk and in the table. Returns the agreed states' hashes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "checkpoints").mkdir(exist_ok=True)
    c = Coordinator(state_dir / "orchestrator.sqlite", p.MembershipConfig(), "127.0.0.1", 29500, "run")
    c.join("a", "cpu", 0)
    shas = []
    for r in range(rounds):
        data = _state(float(r))
        sha = checkpoint.state_hash(data)
        c.report_round("a", p.RoundReport(generation=c.generation.id, round=r, state=sha), 1 + r)
        if r in stored:
            (state_dir / "checkpoints" / sha).write_bytes(data)
            c.db.execute("INSERT INTO checkpoints VALUES (?,?,?,?)", (sha, r + 1, len(data), 1.0))
        shas.append(sha)
    c.close()
    return shas


def test_refusals_name_what_is_missing(tmp_path):
    with pytest.raises(RollbackRefused, match="no orchestrator state"):
        roll_back(tmp_path / "nowhere", 1, 0)
    shas = make_run(tmp_path)
    with pytest.raises(RollbackRefused, match="not an agreed round.*end at 3"):
        roll_back(tmp_path, 9, 0)
    with pytest.raises(RollbackRefused, match="latest agreed round"):
        roll_back(tmp_path, 3, 0)
    with pytest.raises(RollbackRefused, match=r"no stored checkpoint \(stored: after rounds 1, 3\)"):
        roll_back(tmp_path, 2, 0)
    (tmp_path / "checkpoints" / shas[1]).write_bytes(_state(1.0)[:-1])
    with pytest.raises(RollbackRefused, match="corrupt"):
        roll_back(tmp_path, 1, 0)
    (tmp_path / "checkpoints" / shas[1]).unlink()
    with pytest.raises(RollbackRefused, match="cannot be read"):
        roll_back(tmp_path, 1, 0)


def test_a_non_finite_checkpoint_is_refused(tmp_path):
    # A state stored before uploads were checked (or by a majority that agreed on it).
    make_run(tmp_path, rounds=0)
    bad = checkpoint.dumps({"param/w": torch.tensor([1.0, float("inf")])})
    sha = checkpoint.state_hash(bad)
    c = Coordinator(tmp_path / "orchestrator.sqlite", p.MembershipConfig(), "127.0.0.1", 29500, "run")
    for r, state in enumerate([sha, "e" * 64]):
        c.report_round("a", p.RoundReport(generation=c.generation.id, round=r, state=state), 2 + r)
    c.db.execute("INSERT INTO checkpoints VALUES (?,?,?,?)", (sha, 1, len(bad), 1.0))
    c.close()
    (tmp_path / "checkpoints" / sha).write_bytes(bad)
    with pytest.raises(RollbackRefused, match="param/w: NaN or Inf"):
        roll_back(tmp_path, 0, 0)


def test_a_running_orchestrator_is_left_alone(tmp_path):
    make_run(tmp_path)
    held = lock_state_dir(tmp_path)  # what OrchestratorService holds while it runs
    try:
        with pytest.raises(StateDirBusy, match="running orchestrator"):
            roll_back(tmp_path, 1, 0)
        with pytest.raises(StateDirBusy):
            lock_state_dir(tmp_path)  # nor can a second orchestrator share the dir
    finally:
        held.close()
    assert roll_back(tmp_path, 1, 0)["rolled_back"] == [2, 3]


def test_cli_exit_codes_and_one_line_messages(tmp_path, capsys):
    shas = make_run(tmp_path)
    assert main(["--state-dir", str(tmp_path), "--to-round", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m orchestrator rollback: error:") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(tmp_path), "--to-round", "-1"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--to-round", "1"])  # --state-dir is required
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["--state-dir", str(tmp_path), "--to-round", "1"]) == 0
    out = capsys.readouterr().out
    assert shas[1] in out and "next round is 2" in out and "rounds 2-3" in out
