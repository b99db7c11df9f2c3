"""Smoke test for scripts/bench/byzantine.py: at its --smoke size (3 honest miners and 1 attacker on a
fresh embedded chain, 3 rounds, one attack) with the honest-only run replayed in process, it runs end to
end, prints every figure as ``name value unit`` with its unit, and leaves no process or directory
behind. No thresholds on the values: whether the attack is contained is the acceptance test's job
(tests/integration/test_byzantine_e2e.py); this one checks the measurement itself works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_bench_smoke import parse_figures

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench" / "byzantine.py"
ATTACK = "signflip"
FIGURES = {
    "init_heldout_loss": "nats",
    "baseline_final_loss": "nats",
    "baseline_rounds": "count",
    "baseline_wall_s": "s",
    f"{ATTACK}_final_loss": "nats",
    f"{ATTACK}_rounds": "count",
    f"{ATTACK}_wall_s": "s",
    f"{ATTACK}_loss_vs_baseline": "x",
    f"{ATTACK}_attacker0_weight_vs_honest": "x",
    f"{ATTACK}_attacker_weight_vs_honest_max": "x",
    f"{ATTACK}_honest_min_weight_vs_mean": "x",
    f"{ATTACK}_honest_diverged": "count",
    f"{ATTACK}_honest_reported": "count",
    f"{ATTACK}_attackers_reported": "count",
}


@pytest.mark.timeout(180)
def test_byzantine_bench_prints_every_figure(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the script's temporary directory lands here
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--baseline", "replay", "--attacks", ATTACK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"
    figures = parse_figures(out.stdout.splitlines(), FIGURES)
    assert set(figures) == set(FIGURES), sorted(set(figures) ^ set(FIGURES))
    assert figures[f"{ATTACK}_rounds"][0] == figures["baseline_rounds"][0] == 3
    assert figures["baseline_final_loss"][0] < figures["init_heldout_loss"][0]  # the replayed baseline trained
    ratio = figures[f"{ATTACK}_final_loss"][0] / figures["baseline_final_loss"][0]
    assert figures[f"{ATTACK}_loss_vs_baseline"][0] == pytest.approx(ratio, rel=1e-3)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("tensorswarm-bench-")]
    assert not leftovers, f"temporary directories left behind: {leftovers}"


def test_byzantine_bench_refuses_bad_flags():
    for argv in (["--attacks", "nope"], ["--seconds", "5", "--baseline", "replay"], ["--rounds", "0"]):
        bad = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, (argv, bad.stderr)
