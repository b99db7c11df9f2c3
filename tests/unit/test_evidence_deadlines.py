"""The validator's fetch deadlines (template.validator.evidence) against the presets' honest contribution
sizes: an honest meta-miner on a slow link gets its contribution through, and a round's deadline stays
what its docstring says (a few seconds on tiny, a quarter minute on small)."""

from __future__ import annotations

import pytest

from template import wire as p
from template.engine.compression import payload_bytes
from template.engine.state import StateFormat
from template.validator.evidence import (
    CONTRIBUTION_SLACK_BYTES,
    MIN_RATE_BYTES_PER_S,
    RECEIPT_DEADLINE_S,
    contribution_deadline_s,
    round_deadline_s,
)


def _cap(preset: str) -> int:
    """What the validator reads at most for one contribution (template.validator.loop's cap)."""
    t = p.TrainingConfig(preset=preset)
    return payload_bytes(StateFormat(t).spec, t.compression, fraction=t.topk_fraction) + CONTRIBUTION_SLACK_BYTES


@pytest.mark.parametrize(("preset", "low", "high"), [("tiny", 4.0, 6.0), ("small", 10.0, 16.0)])
def test_a_round_deadline_fits_the_preset(preset, low, high):
    cap = _cap(preset)
    assert low < round_deadline_s(cap) < high
    # The whole cap arrives at the slowest expected rate, with time to spare for connecting.
    assert contribution_deadline_s(cap) > cap / MIN_RATE_BYTES_PER_S + 1
    assert round_deadline_s(cap) == pytest.approx(RECEIPT_DEADLINE_S + contribution_deadline_s(cap))


def test_deadlines_grow_with_the_size():
    assert 0 < contribution_deadline_s(0) < contribution_deadline_s(1 << 20) < contribution_deadline_s(1 << 30)
    assert contribution_deadline_s(1 << 30) - contribution_deadline_s(0) == pytest.approx(
        (1 << 30) / MIN_RATE_BYTES_PER_S
    )
