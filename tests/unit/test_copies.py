"""template.validator.checks.copies: provenance (identical bytes) and near-replays of earlier rounds, on
synthetic updates. (On a real swarm: tests/unit/test_audit_scores.py and tests/unit/test_audit.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from template.validator.checks.copies import (
    HISTORY_DIM,
    HISTORY_MAX,
    HISTORY_ROUNDS,
    REPLAY_COSINE,
    Candidate,
    Sketch,
    Trace,
    decode_traces,
    encode_traces,
    find_copies,
    remember,
)

SPEC = {"a": (64, 48), "b": (300,), "c": (16, 16, 4)}
NAMES = list(SPEC)


def _delta(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, s in SPEC.items()}


def _mix(*parts: tuple[float, dict]) -> dict[str, torch.Tensor]:
    return {n: sum(w * d[n] for w, d in parts) for n in NAMES}


def _cos(x, y) -> float:
    a = torch.cat([x[n].reshape(-1) for n in NAMES]).double()
    b = torch.cat([y[n].reshape(-1) for n in NAMES]).double()
    return float(a @ b / (a.norm() * b.norm()))


SKETCH = Sketch(NAMES, SPEC, seed=7)


def _cand(hotkey: str, rank: int, delta, sha: str | None = None, attested=True) -> Candidate:
    return Candidate(hotkey, rank, sha or f"{hotkey}-sha", SKETCH(delta), attested)


def test_sketch_cosines_estimate_the_true_ones():
    common = _delta(0)
    errors = []
    for i in range(20):
        x = _mix((1.0, common), (1.0 + 0.1 * i, _delta(100 + i)))
        y = _mix((1.0, common), (1.5, _delta(200 + i)))
        errors.append(abs(float(SKETCH(x) @ SKETCH(y)) - _cos(x, y)))
    print(f"sketch cosine error: max {max(errors):.3f}")
    assert max(errors) < 0.1
    # Scale-free (unit sketches), and a zero update has the zero sketch.
    d = _delta(1)
    assert torch.allclose(SKETCH(d), SKETCH({n: 3 * t for n, t in d.items()}), atol=1e-6)
    assert float(SKETCH({n: torch.zeros(s) for n, s in SPEC.items()}).norm()) == 0.0
    # Another secret, other coordinates: the same update sketches differently.
    other = Sketch(NAMES, SPEC, seed=8)(d)
    assert abs(float(other @ SKETCH(d))) < 0.2


def _round(seed: int, n: int = 4, common_weight: float = 1.0) -> list[dict]:
    """n honest-like updates of one round: a shared direction plus each miner's own."""
    common = _delta(seed)
    return [_mix((common_weight, common), (1.0, _delta(seed * 100 + i))) for i in range(n)]


def test_a_noised_replay_of_an_earlier_round_is_flagged():
    old = _round(1)
    history = [Trace(5, f"m{i}", SKETCH(d)) for i, d in enumerate(old)]
    now = _round(2)
    replay = _mix((1.0, old[2]), (0.2 * math.sqrt(2), _delta(999)))  # 20 % noise, rescaled below
    replay = {n: 0.3 * t for n, t in replay.items()}
    cands = [_cand(f"m{i}", i, d) for i, d in enumerate(now)] + [_cand("thief", 9, replay)]
    copies = find_copies(cands, 6, {}, history)
    assert set(copies) == {"thief"}
    c = copies["thief"]
    assert c.of == "m2" and c.round == 5 and c.cosine >= REPLAY_COSINE and "round 5" in c.reason
    # Its own older update replayed is stale too.
    mine = [_cand("m2", 2, _mix((1.0, old[2]), (0.1, _delta(5))))] + [
        _cand(f"m{i}", i, d) for i, d in enumerate(now) if i != 2
    ]
    copies = find_copies(mine, 6, {}, history)
    assert set(copies) == {"m2"} and "its own" in copies["m2"].reason


def test_parallel_updates_and_lonely_candidates_are_never_flagged():
    # Every update of both rounds points the same way (a wrecked model): cosines ~0.9999 everywhere.
    common = _delta(3)
    old = [_mix((1.0, common), (0.01, _delta(300 + i))) for i in range(4)]
    now = [_mix((1.0, common), (0.01, _delta(400 + i))) for i in range(4)]
    history = [Trace(5, f"m{i}", SKETCH(d)) for i, d in enumerate(old)]
    cands = [_cand(f"m{i}", i, d) for i, d in enumerate(now)]
    assert min(float(a.sketch @ b.sketch) for a in cands for b in cands) > 0.999
    assert find_copies(cands, 6, {}, history) == {}
    # Honest cross-round cosines (about 0.3–0.6 measured) are far below the threshold.
    assert find_copies([_cand(f"m{i}", i, d) for i, d in enumerate(_round(4))], 6, {}, history) == {}
    # A replay with no other update audited this round has no reference: not flagged by similarity.
    assert find_copies([_cand("thief", 9, old[0])], 6, {}, history) == {}


def test_identical_bytes_are_copies_by_provenance():
    d = _round(6)
    seen = {"old-sha": ("m0", 3)}
    cands = [
        _cand("m0", 0, d[0], sha="s0"),
        _cand("m1", 1, d[1], sha="old-sha"),  # bytes first served in round 3
        _cand("m2", 2, d[0], sha="s0", attested=False),  # m0's bytes, its peers got others
    ]
    copies = find_copies(cands, 4, seen, [])
    assert copies["m1"].of == "m0" and copies["m1"].round == 3 and copies["m1"].cosine is None
    assert copies["m2"].of == "m0" and copies["m2"].round == 4 and copies["m2"].cosine is None
    assert "m0" not in copies
    assert seen["s0"] == ("m0", 4)


def test_history_is_bounded_and_round_trips():
    history: list[Trace] = []
    for r in range(HISTORY_ROUNDS + 10):
        cands = [_cand(f"m{i}", i, _delta(r * 10 + i)) for i in range(3)]
        remember(history, cands, r, {})
    assert min(t.round for t in history) > (HISTORY_ROUNDS + 9) - HISTORY_ROUNDS
    assert len(history) <= HISTORY_MAX
    # Re-auditing a round replaces its entries instead of adding more.
    before = len(history)
    remember(history, [_cand("m0", 0, _delta(1))], HISTORY_ROUNDS + 9, {})
    assert len(history) == before
    many: list[Trace] = []
    for r in range(HISTORY_MAX):
        remember(many, [_cand(f"m{i}", i, _delta(i)) for i in range(2)], r % 5 + 1000, {})
    assert len(many) <= HISTORY_MAX
    rows = encode_traces(history)
    again = decode_traces(rows)
    assert [(t.round, t.hotkey) for t in again] == [(t.round, t.hotkey) for t in history]
    for a, b in zip(again, history):
        assert a.sketch.shape == (HISTORY_DIM,)
        assert float(a.sketch @ b.sketch) == pytest.approx(1.0, abs=1e-3)  # float16 keeps the direction
    for bad in ([[1, "hk"]], [["1", "hk", rows[0][2]]], [[1, "hk", "not base64!"]], [[1, "hk", rows[0][2][:40]]]):
        with pytest.raises(ValueError):
            decode_traces(bad)
