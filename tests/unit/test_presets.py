"""Presets: listing, writing a run config, each preset's own training defaults, and the orchestrator's
training flags (derived from the run config) layered over them: flag > --run-config > preset > defaults."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from orchestrator.__main__ import MEMBERSHIP_FLAGS, TRAINING_FLAGS, add_args, settings_from
from template import wire as p
from template.config import cli as tc
from template.config.presets import PRESETS, RUN_DEFAULTS, RUN_FIELDS, run_config
from template.config.run import AGGREGATORS, COMPRESSIONS, STRATEGIES, Aggregator, Compression, Strategy

REPO = Path(__file__).resolve().parents[2]
# Today's values, spelled out so a change to a preset's defaults is a visible decision.
EXPECTED_RUNS = {
    "tiny": {"seq_len": 64, "batch_size": 8, "inner_steps": 20, "inner_lr": 3e-3},
    "small": {"seq_len": 256, "batch_size": 16, "inner_steps": 50, "inner_lr": 1e-3},
    "medium": {"seq_len": 512, "batch_size": 8, "inner_steps": 100, "inner_lr": 6e-4},
    "large": {"seq_len": 1024, "batch_size": 4, "inner_steps": 200, "inner_lr": 3e-4},
}


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "template.config.presets", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def _settings(argv: list[str]):
    """What ``python -m orchestrator ARGV`` would run with: its parser and settings_from, no service."""
    parser = tc.build_parser("python -m orchestrator", "", add_args)
    return settings_from(tc.Config.from_namespace(parser.parse_args(argv)), parser.error)


def _cli_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        _settings(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _run_of(config: p.TrainingConfig) -> dict:
    return {field: getattr(config, field) for field in RUN_FIELDS}


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
    assert set(json.loads(target.read_text())) == set(p.TrainingConfig.model_fields)  # every field written
    bad = _run("write", "huge", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and "unknown preset" in bad.stderr
    assert not (tmp_path / "x.json").exists()
    assert _run("frobnicate").returncode == 2


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_carries_its_run_defaults(name):
    preset = PRESETS[name]
    assert preset.run_defaults == EXPECTED_RUNS[name]
    assert preset.seq_len == EXPECTED_RUNS[name]["seq_len"]  # the run's seq_len is the preset's context
    assert RUN_DEFAULTS[name] == {k: v for k, v in EXPECTED_RUNS[name].items() if k != "seq_len"}
    config = p.TrainingConfig(preset=name)
    assert _run_of(config) == EXPECTED_RUNS[name]
    # Exactly the config older callers built by hand, and what `presets write` writes.
    by_hand = p.TrainingConfig(preset=name, seq_len=preset.seq_len, **RUN_DEFAULTS[name])
    assert config == by_hand
    assert run_config(name) == by_hand.model_dump_json(indent=2) + "\n"
    # Given fields win over the preset's.
    assert p.TrainingConfig(preset=name, inner_steps=3, seq_len=32).inner_steps == 3


def test_training_config_defaults_are_the_tiny_run_and_full_configs_parse_unchanged():
    assert p.TrainingConfig() == p.TrainingConfig(preset="tiny")
    assert _run_of(p.TrainingConfig()) == EXPECTED_RUNS["tiny"]
    # A config with every field set (what RunInfo carries over the wire) owes nothing to the preset.
    full = {**p.TrainingConfig(preset="large").model_dump(), "seq_len": 100, "batch_size": 2, "inner_lr": 0.5}
    parsed = p.TrainingConfig.model_validate_json(json.dumps(full))
    assert parsed.model_dump() == full
    assert p.TrainingConfig.model_validate_json(parsed.model_dump_json()) == parsed
    with pytest.raises(ValueError, match="unknown preset"):
        p.TrainingConfig(preset="huge")
    with pytest.raises(ValueError, match="valid string"):
        p.TrainingConfig.model_validate({"preset": ["tiny"]})  # refused, not a TypeError from the lookup


@pytest.mark.parametrize("name", list(PRESETS))
def test_orchestrator_preset_flag_gives_the_presets_own_run(name, tmp_path):
    settings = _settings(["--state-dir", str(tmp_path), "--preset", name])
    assert settings.training.preset == name
    assert _run_of(settings.training) == EXPECTED_RUNS[name]
    assert settings.training == p.TrainingConfig(preset=name)
    assert settings.membership == p.MembershipConfig()


def test_orchestrator_without_training_flags_runs_todays_tiny_defaults(tmp_path):
    settings = _settings(["--state-dir", str(tmp_path)])
    assert settings.training == p.TrainingConfig()
    assert settings.membership == p.MembershipConfig()


def test_every_training_and_membership_field_has_a_flag(tmp_path):
    argv = [
        *("--preset", "small", "--strategy", "ddp", "--inner-steps", "3", "--batch-size", "2", "--seq-len", "16"),
        *("--inner-lr", "0.01", "--weight-decay", "0", "--outer-lr", "0.5", "--outer-momentum", "0.8"),
        *(
            "--compression",
            "topk",
            "--topk-fraction",
            "0.3",
            "--feedback-decay",
            "0.9",
            "--aggregator",
            "centered_clip",
        ),
        *("--trim-fraction", "0.1", "--clip-tau", "2.5", "--seed", "9", "--byzantine-fraction", "0"),
        *("--checkpoint-every", "4", "--overlap", "none", "--vocab-size", "300"),
        *("--min-world-size", "2", "--max-world-size", "3", "--heartbeat-timeout", "5"),
        *("--rejoin-cooldown", "0", "--round-timeout", "60", "--checkin-timeout", "45"),
        *("--straggler-grace", "7", "--straggler-factor", "0.5"),
    ]
    settings = _settings(["--state-dir", str(tmp_path), *argv])
    assert settings.training.model_dump() == {
        "preset": "small",
        "strategy": "ddp",
        "inner_steps": 3,
        "batch_size": 2,
        "seq_len": 16,
        "vocab_size": 300,
        "inner_lr": 0.01,
        "weight_decay": 0.0,
        "outer_lr": 0.5,
        "outer_momentum": 0.8,
        "compression": "topk",
        "topk_fraction": 0.3,
        "feedback_decay": 0.9,
        "aggregator": "centered_clip",
        "trim_fraction": 0.1,
        "clip_tau": 2.5,
        "seed": 9,
        "byzantine_fraction": 0.0,
        "checkpoint_every": 4,
        "overlap": "none",
    }
    assert settings.membership.model_dump() == {
        "min_world_size": 2,
        "max_world_size": 3,
        "heartbeat_timeout_s": 5.0,
        "rejoin_cooldown_s": 0.0,
        "checkin_timeout_s": 45.0,
        "round_timeout_s": 60.0,
        "straggler_grace_s": 7.0,
        "straggler_factor": 0.5,
    }


def test_orchestrator_takes_run_config_and_flags_override(tmp_path):
    target = tmp_path / "small.json"
    assert _run("write", "small", str(target)).returncode == 0
    argv = ["--state-dir", str(tmp_path), "--run-config", str(target), "--inner-steps", "7"]
    training = _settings(argv).training
    assert (training.preset, training.seq_len, training.inner_steps) == ("small", 256, 7)
    assert training.batch_size == 16 and training.inner_lr == 1e-3
    # Also through the parser alone (what the README test does): the flag is there, the rest is not.
    cfg = tc.build_parser("orchestrator", "", add_args).parse_args(argv)
    assert cfg.inner_steps == 7 and cfg.run_config == str(target) and not hasattr(cfg, "seq_len")


def test_precedence_flag_over_run_config_over_preset(tmp_path):
    # A run config that sets some fields: the preset's defaults fill the others.
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"preset": "medium", "batch_size": 3, "outer_lr": 0.4}))
    base = ["--state-dir", str(tmp_path), "--run-config", str(partial)]
    training = _settings(base).training
    assert _run_of(training) == {**EXPECTED_RUNS["medium"], "batch_size": 3}
    assert training.outer_lr == 0.4 and training.weight_decay == p.TrainingConfig().weight_decay
    # --preset picks the preset whose defaults fill what the file leaves out; the file's values stay.
    training = _settings([*base, "--preset", "small"]).training
    assert training.preset == "small" and _run_of(training) == {**EXPECTED_RUNS["small"], "batch_size": 3}
    # An explicit flag beats the file and the preset.
    training = _settings([*base, "--batch-size", "5", "--inner-lr", "0.02", "--outer-lr", "0.3"]).training
    assert (training.batch_size, training.inner_lr, training.outer_lr, training.seq_len) == (5, 0.02, 0.3, 512)
    # A full file (presets write) beats the preset's defaults even under another --preset.
    full = tmp_path / "large.json"
    assert _run("write", "large", str(full)).returncode == 0
    training = _settings(["--state-dir", str(tmp_path), "--run-config", str(full), "--preset", "medium"]).training
    assert training.preset == "medium" and _run_of(training) == EXPECTED_RUNS["large"]


def test_cli_choices_are_the_configs_names():
    actions = {a.dest: a for a in tc.build_parser("orchestrator", "", add_args)._actions}
    assert tuple(actions["strategy"].choices) == STRATEGIES == typing.get_args(Strategy)
    assert tuple(actions["compression"].choices) == COMPRESSIONS == typing.get_args(Compression)
    assert tuple(actions["aggregator"].choices) == AGGREGATORS == typing.get_args(Aggregator)
    assert tuple(actions["preset"].choices) == tuple(PRESETS)
    flags = {f for a in actions.values() for f in a.option_strings}
    for table in (TRAINING_FLAGS, MEMBERSHIP_FLAGS):
        assert set(table.fields) == set(table.model.model_fields)  # no field without a flag
        assert set(table.flags.values()) <= flags
    assert {"--heartbeat-timeout", "--rejoin-cooldown", "--round-timeout"} <= flags


def test_help_shows_each_presets_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        tc.build_parser("orchestrator", "", add_args).parse_args(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tiny 64, small 256, medium 512, large 1024" in out
    assert "tiny 20, small 50, medium 100, large 200" in out
    assert "H: inner steps per round" in out and "(default: diloco)" in out and "(default: 900)" in out


def test_bad_values_are_one_line_errors_naming_the_flag(capsys, tmp_path):
    base = ["--state-dir", str(tmp_path)]
    assert "--inner-steps: Input should be greater than or equal to 1" in _cli_error(
        capsys, [*base, "--inner-steps", "0"]
    )
    assert "--heartbeat-timeout: Input should be greater than 0" in _cli_error(
        capsys, [*base, "--heartbeat-timeout", "0"]
    )
    assert "--outer-momentum" in _cli_error(capsys, [*base, "--outer-momentum", "1"])
    assert "min_world_size must not exceed" in _cli_error(
        capsys, [*base, "--min-world-size", "5", "--max-world-size", "2"]
    )
    assert "invalid choice" in _cli_error(capsys, [*base, "--preset", "huge"])
    assert "invalid choice" in _cli_error(capsys, [*base, "--aggregator", "median"])
    assert "--seed" in _cli_error(capsys, [*base, "--seed", "nan"])
    assert "--clip-tau" in _cli_error(capsys, [*base, "--clip-tau", "inf"])


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
