"""template.engine.export and the export/generate commands: an agreed state out as model.safetensors +
config.json + a model card, loaded back with the same bits (logits equal the checkpoint's), and every
malformed input refused with its path named. The swarm e2e (tests/integration/test_swarm_e2e.py) runs
both commands against a live orchestrator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.export import ExportError, export_model, latest_in, load_exported
from template.engine.state import StateFormat
from template.generate import generate

REPO = Path(__file__).resolve().parents[2]
CFG = TrainingConfig(preset="tiny", strategy="diloco", seq_len=32)


def _trained_state(round_: int = 5, seed: int = 1) -> bytes:
    """A state whose parameters are not the seed init (and its outer momentum non-zero)."""
    fmt = StateFormat(CFG)
    parsed = fmt.parse(fmt.initial())
    g = torch.Generator().manual_seed(seed)
    params = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in parsed.params().items()}
    extra = {k: torch.randn(v.shape, generator=g) for k, v in parsed.extra().items()}
    return fmt.dumps(params, extra, round=round_, outer_step=round_, inner_step=round_ * 20)


def test_export_loads_with_safetensors_alone_and_gives_the_checkpoints_logits_bit_for_bit(tmp_path):
    from safetensors.numpy import load_file

    state = _trained_state()
    out = export_model(CFG, state, tmp_path / "model", run_id="run-x")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    fmt = StateFormat(CFG)
    reference = fmt.model(fmt.parse(state)).eval()
    arrays = load_file(str(out / "model.safetensors"))  # the safetensors library alone, no torch
    assert set(arrays) == {n for n, _ in reference.named_parameters()}
    for name, p in reference.named_parameters():
        assert torch.equal(torch.from_numpy(arrays[name]), p.detach()), name
    model, config = load_exported(out)
    assert config["tensorswarm"]["state_sha256"] == checkpoint.state_hash(state)
    assert config["tensorswarm"]["round"] == 5 and config["tensorswarm"]["run_id"] == "run-x"
    assert (config["vocab_size"], config["n_positions"], config["n_layer"]) == (256, 64, 2)
    x = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x)[0], reference(x)[0])
    card = (out / "README.md").read_text()
    assert checkpoint.state_hash(state) in card and "round 5" in card


def test_generate_is_deterministic_per_seed_and_greedy_at_temperature_zero(tmp_path):
    out = export_model(CFG, _trained_state(), tmp_path / "model")
    model, _ = load_exported(out)
    a = generate(model, b"def ", 40, 0.8, 40, seed=3)
    assert len(a) == 40 and a == generate(model, b"def ", 40, 0.8, 40, seed=3)
    assert generate(model, b"def ", 40, 0.8, 40, seed=4) != a
    greedy = generate(model, b"x" * 100, 5, 0.0, 0, seed=0)  # a prompt longer than the context is cut
    with torch.no_grad():
        first = int(model(torch.tensor([list(b"x" * 64)]))[0][0, -1].argmax())
    assert greedy[0] == first


def test_refusals_name_the_path_and_leave_nothing_behind(tmp_path):
    state = _trained_state()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_model(CFG, state, tmp_path / "taken")
    corrupt = bytearray(state)
    corrupt[len(corrupt) // 2] ^= 1
    with pytest.raises(ExportError, match="ckpt-file.*checksum"):
        export_model(CFG, bytes(corrupt), tmp_path / "a", source="ckpt-file")
    other = TrainingConfig(preset="tiny", strategy="ddp", seq_len=32)
    with pytest.raises(ExportError, match="strategy"):
        export_model(other, state, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial directory

    out = export_model(CFG, state, tmp_path / "model")
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ExportError, match=str(weights)):
        load_exported(out)
    weights.write_bytes(good)
    config = json.loads((out / "config.json").read_text())
    for field, value, named in (
        ("d_model", "64", "config.json: d_model"),
        ("format", "other", "config.json: not a"),
        ("n_head", 5, "config.json: d_model 64 is not a multiple"),
        (
            "n_layer",
            3,
            "model.safetensors: 120576 values, the config.s model has",
        ),  # checked before a byte is allocated
    ):
        (out / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(ExportError, match=named):
            load_exported(out)


def test_the_newest_state_is_picked_from_headers_and_junk_is_skipped(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    assert latest_in(d) is None
    shas = {}
    for r in (3, 9, 5):
        data = _trained_state(round_=r)
        shas[r] = checkpoint.state_hash(data)
        (d / shas[r]).write_bytes(data)
    (d / ("f" * 64)).write_bytes(b"not a state")
    (d / "notes.txt").write_text("x")
    assert latest_in(d) == shas[9]
    assert checkpoint.read_meta(d / shas[5])["round"] == 5
    assert checkpoint.read_meta(d / ("f" * 64)) is None


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_commands_refuse_bad_flags_and_inputs_in_one_line(tmp_path):
    bad = _run("template.export", "--checkpoint", "nope", "--out", str(tmp_path / "o"), "--state-dir", str(tmp_path))
    assert bad.returncode == 2 and "--checkpoint" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    neither = _run("template.export", "--out", str(tmp_path / "o"))
    assert neither.returncode == 2 and "--state-dir or --orchestrator-url" in neither.stderr
    empty = _run("template.export", "--state-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert empty.returncode == 1 and str(tmp_path / "run.json") in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    missing = _run("template.generate", str(tmp_path / "nothing"), "--prompt", "x")
    assert missing.returncode == 1 and "config.json" in missing.stderr
    zero = _run("template.generate", str(tmp_path), "--max-new-tokens", "0")
    assert zero.returncode == 2 and "--max-new-tokens" in zero.stderr


def test_generate_prints_the_prompt_and_its_continuation(tmp_path):
    out = export_model(CFG, _trained_state(), tmp_path / "model")
    done = _run("template.generate", str(out), "--prompt", "import ", "--max-new-tokens", "30", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("import ") and len(done.stdout) > len("import ") + 5
