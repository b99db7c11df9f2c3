"""The validator's secret and the audit choices drawn from it (template.validator.draw,
template.validator.state.load_audit_secret)."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from template.data.corpus import build_dataset
from template.data.sampling import batch_offsets, heldout_offsets
from template.validator.draw import SECRET_BYTES, AuditDraw, sketch_seed
from template.validator.loop import Validator
from template.validator.state import StateError, ValidatorState, load_audit_secret

A, B = bytes(range(32)), bytes(range(1, 33))
MEMBERS = [(rank, f"hk{rank}") for rank in range(12)]


def test_two_validators_choose_different_miners_steps_and_windows():
    manifest, _ = build_dataset("draw", bytes(range(256)) * 64, shard_size=1024, heldout_fraction=0.25)
    differ = {"sample": 0, "steps": 0, "reference": 0, "heldout": 0}
    rounds = range(20)
    for r in rounds:
        a, b = AuditDraw(A, r), AuditDraw(B, r)
        differ["sample"] += a.sample(MEMBERS, 4) != b.sample(MEMBERS, 4)
        differ["steps"] += a.gain_steps(20) != b.gain_steps(20)
        differ["reference"] += a.reference_hotkey() != b.reference_hotkey()
        ha = heldout_offsets(manifest, seed=a.heldout_seed(), round=r, count=16, seq_len=32)
        hb = heldout_offsets(manifest, seed=b.heldout_seed(), round=r, count=16, seq_len=32)
        differ["heldout"] += ha != hb
        ra = batch_offsets(manifest, seed=0, round=r, hotkey=a.reference_hotkey(), step=3, batch_size=8, seq_len=32)
        rb = batch_offsets(manifest, seed=0, round=r, hotkey=b.reference_hotkey(), step=3, batch_size=8, seq_len=32)
        assert ra != rb
    print("rounds (of 20) where two secrets chose differently:", differ)
    assert differ["reference"] == differ["heldout"] == len(rounds)
    assert differ["sample"] >= 18 and differ["steps"] >= 18
    assert sketch_seed(A) != sketch_seed(B)


def test_draws_are_reproducible_per_round_and_vary_across_rounds():
    assert AuditDraw(A, 5).sample(MEMBERS, 4) == AuditDraw(A, 5).sample(MEMBERS, 4)
    assert AuditDraw(A, 5).gain_steps(20) == AuditDraw(A, 5).gain_steps(20)
    assert len({tuple(AuditDraw(A, r).gain_steps(20)) for r in range(20)}) >= 15
    # The sample and the attesters come from different keys.
    assert AuditDraw(A, 5).sample(MEMBERS, 4) != AuditDraw(A, 5).attesters(MEMBERS, 4)


def test_gain_steps_avoid_the_always_evaluated_steps():
    hits = {s: 0 for s in range(20)}
    for r in range(400):
        steps = AuditDraw(A, r).gain_steps(20)
        assert steps == sorted(set(steps)) and len(steps) == 4
        assert all(1 <= s <= 18 for s in steps)  # never step 0 (exact replay) or 19 (last-step bound)
        for s in steps:
            hits[s] += 1
    assert hits[0] == hits[19] == 0
    assert min(hits[s] for s in range(1, 19)) > 0.5 * 400 * 4 / 18  # roughly uniform over 1..18
    assert AuditDraw(A, 0).gain_steps(5) == sorted(AuditDraw(A, 0).gain_steps(5))
    assert set(AuditDraw(A, 0).gain_steps(2)) <= {0, 1}  # too few steps: every step may count
    assert len(AuditDraw(A, 0).gain_steps(1)) == 1
    assert AuditDraw(A, 0).sample(MEMBERS[:2], 4) in (MEMBERS[:2], MEMBERS[1::-1])
    assert AuditDraw(A, 0).sample([], 4) == []


def test_a_secret_must_be_32_bytes():
    for bad in (b"", b"x" * 31, b"x" * 33, "x" * 32):
        with pytest.raises(ValueError):
            AuditDraw(bad, 0)
    with pytest.raises(ValueError):
        AuditDraw(A, -1)


def test_the_secret_is_created_once_private_and_kept(tmp_path, caplog):
    path = tmp_path / "audit_secret"
    with caplog.at_level(logging.DEBUG):
        secret = load_audit_secret(path)
    assert len(secret) == SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_audit_secret(path) == secret  # a restart keeps it
    assert load_audit_secret(tmp_path / "other") != secret  # another validator: another secret
    assert secret.hex() not in caplog.text and repr(secret) not in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_a_corrupt_or_unreadable_secret_is_refused_with_its_path(tmp_path):
    path = tmp_path / "audit_secret"
    for content in (b"", b"short", b"x" * 33):
        path.write_bytes(content)
        with pytest.raises(StateError) as raised:
            load_audit_secret(path)
        assert str(path) in str(raised.value) and "corrupt" in str(raised.value)
    path.unlink()
    path.mkdir()
    with pytest.raises(StateError) as raised:
        load_audit_secret(path)
    assert str(path) in str(raised.value)
    if os.geteuid() != 0:  # root reads anything
        path.rmdir()
        path.write_bytes(b"x" * 32)
        path.chmod(0)
        with pytest.raises(StateError) as raised:
            load_audit_secret(path)
        assert str(path) in str(raised.value)


def test_the_validator_takes_its_secret_and_drops_sketches_of_another(tmp_path):
    state_path = tmp_path / "validator.json"
    args = dict(wallet=None, orchestrator=None, run=None, read_shard=None, state_path=state_path)
    with pytest.raises(ValueError):
        Validator(**args, audit_secret=b"short")
    v = Validator(**args, audit_secret=A)
    assert A.hex() not in repr(v) and str(A) not in repr(v)
    import torch

    from template.validator.checks.copies import Trace, encode_traces

    v.state.sketches = encode_traces([Trace(3, "hk", torch.ones(1024) / 32)])
    v.state.save(state_path)
    assert len(Validator(**args, audit_secret=A).history) == 1  # same secret: same coordinates
    other = Validator(**args, audit_secret=B)
    assert other.history == [] and other.state.sketches == []  # sketches of another secret compare nothing
    assert ValidatorState.load(state_path).sketch_key == v.state.sketch_key  # nothing saved yet


def test_departed_hotkeys_whose_score_decayed_are_forgotten(tmp_path):
    """Bounded state: a hotkey absent from the run whose EMA has decayed to nothing leaves ema, reported
    losses, last audits and evidence; an absent one with a score left, and every member, stay."""
    from types import SimpleNamespace

    from template.wire.orchestrator import RoundRecord

    records = [
        RoundRecord(round=r, generation=0, members=["member"], state=c * 64, loss=None, completed_at=0.0)
        for r, c in ((4, "b"), (5, "a"))
    ]
    orchestrator = SimpleNamespace(  # as the orchestrator answers: the records from round ``since`` on
        rounds=lambda since, limit: [r for r in records if r.round >= since][:limit],
        checkpoint=lambda sha: None,
        checkpoints=lambda: [],
    )
    run = SimpleNamespace(training=SimpleNamespace(overlap="none"))
    state_path = tmp_path / "validator.json"
    v = Validator(
        wallet=None, orchestrator=orchestrator, run=run, read_shard=None, state_path=state_path, audit_secret=A
    )
    v.state.last_round = 4
    v.state.ema = {"gone": 0.00005, "away": 0.5, "member": 0.0}
    for table in (v.state.reported, v.state.last_audits, v.state.evidence):
        table.update({hk: [1.0, 1.0] if table is v.state.evidence else {} for hk in v.state.ema})
    v.state.reported = {hk: [3.0] for hk in v.state.ema}
    assert v.step({}) == 5
    assert set(v.state.ema) == {"away", "member"} and v.state.ema["away"] == pytest.approx(0.35)
    for table in (v.state.reported, v.state.last_audits, v.state.evidence):
        assert "gone" not in table and "away" in table
