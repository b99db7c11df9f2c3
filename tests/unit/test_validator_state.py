"""The validator's state file: what a restart continues from."""

from __future__ import annotations

import pytest
import torch

from template.validator.checks.copies import HISTORY_DIM, Trace, decode_traces, encode_traces
from template.validator.state import StateError, ValidatorState


def test_state_round_trips_through_disk(tmp_path):
    path = tmp_path / "validator.json"
    assert ValidatorState.load(path) == ValidatorState()  # first start
    state = ValidatorState(
        ema={"hk1": 0.4, "hk2": 0.1},
        last_round=17,
        seen_contributions={"a" * 64: ["hk1", 16]},
        reported={"hk1": [3.1, 2.9]},
        last_weights={"3": 0.8, "4": 0.2},
        last_weights_block=1234,
        last_audits={"hk1": {"round": 17, "passed": True, "specificity": 0.04}},
        sketches=encode_traces([Trace(16, "hk1", torch.linspace(-1, 1, HISTORY_DIM) / 18.5)]),
        sketch_key="0123456789abcdef",
    )
    state.save(path)
    again = ValidatorState.load(path)
    assert again == state
    (trace,) = decode_traces(again.sketches)
    assert (trace.round, trace.hotkey) == (16, "hk1")
    assert torch.allclose(trace.sketch, torch.linspace(-1, 1, HISTORY_DIM) / 18.5, atol=1e-3)
    # A state file from before the sketches existed still loads (their fields start empty).
    path.write_text('{"ema": {"hk1": 0.4}, "last_round": 3}')
    old = ValidatorState.load(path)
    assert old.ema == {"hk1": 0.4} and old.sketches == [] and old.sketch_key == ""


def test_corrupt_state_is_refused_with_its_path(tmp_path):
    path = tmp_path / "validator.json"
    path.write_text("{not json")
    with pytest.raises(StateError) as raised:
        ValidatorState.load(path)
    assert str(path) in str(raised.value)
    path.write_text('{"ema": {}, "unknown_field": 1}')
    with pytest.raises(StateError):
        ValidatorState.load(path)
    path.write_text('{"sketches": [[1, "hk", "not a sketch"]]}')
    with pytest.raises(StateError) as raised:
        ValidatorState.load(path)
    assert str(path) in str(raised.value)


def test_the_audit_log_line_shows_the_evidence_and_what_this_round_added():
    from template.validator.audit import Audit
    from template.validator.loop import _summary

    state = ValidatorState(last_audits={"hk-honest": {"evidence_z": 3.84}, "hk-cheat": {}})
    audits = [
        Audit("hk-honest", 7, specificity=0.0213, specificity_se=0.0081, heldout_gain=0.004),
        Audit("hk-cheat", 7, reasons=("step-0 loss: claimed 0.9, recomputed 1.3",)),
    ]
    line = _summary(audits, {"hk-honest": 1.0}, state)
    assert line == (
        "hk-hones 1.000 z=3.8 (this round +0.021±0.008) held-out +0.004; "
        "hk-cheat 0.000 (step-0 loss: claimed 0.9, recomputed 1.3)"
    )
