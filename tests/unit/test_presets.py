"""Presets: listing, writing a run config, and the orchestrator reading it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.__main__ import add_args, apply_run_config
from template import wire as p
from template.config import cli as tc
from template.config.presets import PRESETS

REPO = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "template.config.presets", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_list_shows_every_preset_with_its_size():
    out = _run("list")
    assert out.returncode == 0
    for name in PRESETS:
        assert name in out.stdout
    assert "M params" in out.stdout


def test_write_produces_a_valid_run_config(tmp_path):
    target = tmp_path / "medium.json"
    out = _run("write", "medium", str(target))
    assert out.returncode == 0, out.stderr
    config = p.TrainingConfig.model_validate_json(target.read_bytes())
    assert config.preset == "medium" and config.seq_len == PRESETS["medium"].seq_len
    bad = _run("write", "huge", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and "unknown preset" in bad.stderr
    assert not (tmp_path / "x.json").exists()
    assert _run("frobnicate").returncode == 2


def test_orchestrator_takes_run_config_and_flags_override(tmp_path):
    target = tmp_path / "small.json"
    assert _run("write", "small", str(target)).returncode == 0
    argv = ["--run-config", str(target), "--inner-steps", "7"]
    parser = tc.build_parser("orchestrator", "", add_args)
    apply_run_config(parser, argv)
    cfg = parser.parse_args(argv)
    assert (cfg.preset, cfg.seq_len, cfg.inner_steps) == ("small", 256, 7)


def test_orchestrator_refuses_a_bad_run_config_in_one_line(tmp_path):
    target = tmp_path / "bad.json"
    target.write_text(json.dumps({"preset": "tiny", "inner_steps": 0}))
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--run-config", str(target)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "inner_steps" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--run-config", str(tmp_path / "nope.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "nope.json" in missing.stderr
