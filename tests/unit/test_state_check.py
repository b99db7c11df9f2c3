"""orchestrator.state_check: the orchestrator's torch-free reading of the canonical state format finds
every NaN/Inf the engine's reader would, in every float dtype, and names what is unreadable."""

from __future__ import annotations

import pytest
import torch

from orchestrator.state_check import DTYPE_SIZES, is_state, state_problem
from template.engine import checkpoint

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def test_dtype_table_matches_the_engines():
    assert set(DTYPE_SIZES) == set(checkpoint.DTYPES)
    for name, dtype in checkpoint.DTYPES.items():
        assert DTYPE_SIZES[name] == torch.empty((), dtype=dtype).element_size()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_found_and_named(dtype, bad):
    t = torch.randn(7, 5).to(dtype)
    t[3, 2] = bad
    data = checkpoint.dumps({"a/int": torch.tensor([-1, 2**40]), "b/weight": t, "c/bias": torch.ones(3)})
    assert is_state(data)
    assert state_problem(data) == "b/weight: NaN or Inf"
    with pytest.raises(checkpoint.CheckpointError):  # the engine's reader agrees
        checkpoint.loads(data, require_finite=True)


@pytest.mark.parametrize("dtype", FLOATS)
def test_finite_extremes_pass(dtype):
    info = torch.finfo(dtype)
    t = torch.tensor([info.max, -info.max, info.tiny, 0.0, -0.0], dtype=dtype)
    data = checkpoint.dumps({"w": t, "empty": torch.empty(0, 3), "flags": torch.tensor([True, False])})
    assert state_problem(data) is None


def test_many_bad_tensors_are_summarised_and_slabs_cover_everything(monkeypatch):
    import orchestrator.state_check as sc

    monkeypatch.setattr(sc, "SLAB", 7)  # the NaN sits in a later slab than the first
    tensors = {f"t{i}": torch.zeros(50) for i in range(5)}
    for t in tensors.values():
        t[-1] = float("nan")
    assert state_problem(checkpoint.dumps(tensors)) == "t0, t1, t2 and 2 more: NaN or Inf"


def test_unreadable_bytes_are_named():
    good = checkpoint.dumps({"w": torch.ones(4)})
    assert "no tensorswarm state magic" in state_problem(b"state after round 3")
    assert not is_state(b"state after round 3")
    assert "checksum" in state_problem(good[:-1] + bytes([good[-1] ^ 1]))
    assert "checksum" in state_problem(good[:-40] + good[-32:])  # truncated


def test_a_layout_that_does_not_add_up_is_named():
    import hashlib
    import json

    header = json.dumps(
        {
            "format": "tensorswarm.state",
            "version": 1,
            "meta": {},
            "tensors": [{"dtype": "float32", "name": "w", "nbytes": 8, "offset": 0, "shape": [4]}],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    body = b"TSWSTATE" + len(header).to_bytes(8, "little") + header + bytes(16)
    problem = state_problem(body + hashlib.sha256(body).digest())
    assert problem.startswith("not a readable state") and "w: offset or size" in problem
