"""scripts/bench/aggregators.py at toy size: it prints every figure as ``name value unit``, and the run's
default rule (trim ≥ b(n), clip to the median norm) keeps the honest direction where the old trimmed mean
was turned around."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = ["trimmed_mean", "centered_clip", "median", "bucketed_median", "trimmed_mean_f0"]
ATTACKS = ["none", "flip", "alie", "ipm", "noise", "f32max"]


@pytest.mark.timeout(300)
def test_aggregators_bench_prints_its_figures():
    out = subprocess.run(
        [sys.executable, "scripts/bench/aggregators.py", "--rounds", "1", "--inner-steps", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = {}
    for line in out.stdout.splitlines():
        name, value, unit = line.split()
        figures[name] = (float(value), unit)
    for rule in RULES:
        assert figures[f"{rule}_aggregate_ms"][1] == "ms"
        for attack in ATTACKS:
            assert figures[f"{rule}_{attack}_rel_dist"][1] == "x"
            assert figures[f"{rule}_{attack}_cosine"][1] == "cosine"
    for attack in ("flip", "f32max"):
        assert figures[f"trimmed_mean_{attack}_cosine"][0] > 0.5, attack
        assert figures[f"trimmed_mean_{attack}_rel_dist"][0] < 1.0, attack
        assert figures[f"trimmed_mean_f0_{attack}_cosine"][0] < 0, attack
