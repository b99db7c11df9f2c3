"""template.net.tracking: the dashboard's figures also in TensorBoard event files (read back with
tensorboard's own reader) and in an offline W&B run; a backend whose package is missing is left out with
a warning, never an error. The orchestrator's use of it runs in tests/integration/test_history.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from template.net.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]


def test_tensorboard_gets_every_metric_that_has_a_value(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(name="run", tensorboard_dir=tmp_path / "tb")
    assert tracker.active
    for step, loss in enumerate([4.0, 3.0, 2.5]):
        tracker.log(step, {"loss": loss, "tokens_per_s": 100.0 * step, "heldout_loss": None if step < 2 else 2.75})
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["heldout_loss", "loss", "tokens_per_s"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 4.0), (1, 3.0), (2, 2.5)]
    assert [(e.step, e.value) for e in events.Scalars("heldout_loss")] == [(2, 2.75)]


def test_wandb_logs_offline_to_local_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(
        name="orchestrator", config={"preset": "tiny"}, wandb_project="tensorswarm-test", wandb_dir=tmp_path
    )
    assert tracker.active
    for step in range(3):
        tracker.log(step, {"loss": 3.0 - step})
    tracker.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")
    assert records.stat().st_size > 0


def test_a_missing_package_is_a_warning_not_an_error(tmp_path):
    # A fresh interpreter where neither package can be imported (as on a machine without them).
    code = (
        "import sys, logging; sys.modules['wandb'] = None; sys.modules['tensorboard'] = None\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from template.net.tracking import Tracker\n"
        f"t = Tracker(name='x', wandb_project='p', tensorboard_dir={str(tmp_path / 'tb')!r})\n"
        "t.log(0, {'loss': 1.0}); t.close(); print('active', t.active)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "active False" in done.stdout
    assert "wandb package is not installed" in done.stderr and "tensorboard package is not installed" in done.stderr
    assert not (tmp_path / "tb").exists()
