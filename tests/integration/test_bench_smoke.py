"""Smoke tests for the benchmarks in scripts/bench: each runs end to end at toy size, prints
every figure with a number and a unit, and leaves nothing behind. No timing
thresholds: the figures depend on the machine."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench" / "orchestrator_load.py"
FIGURES = {
    "signed_heartbeats_per_s": "req/s",
    "heartbeat_p50_ms": "ms",
    "heartbeat_p99_ms": "ms",
    "heartbeat_requests": "count",
    "heartbeat_errors": "count",
    "status_baseline_per_s": "req/s",
    "status_p50_ms": "ms",
    "status_p99_ms": "ms",
    "status_errors": "count",
    "heartbeat_vs_status_ratio": "x",
    "heartbeat_client_cpu_cores": "cores",
    "status_client_cpu_cores": "cores",
}
if sys.platform.startswith("linux"):  # server CPU comes from /proc
    FIGURES.update(
        {
            "heartbeat_server_cpu_per_req_us": "us",
            "heartbeat_server_cpu_cores": "cores",
            "status_server_cpu_per_req_us": "us",
            "status_server_cpu_cores": "cores",
        }
    )
LINE = re.compile(r"^(\w+) (\S+) (\S+)$")


def parse_figures(lines, expected: dict[str, str]) -> dict[str, tuple[float, str]]:
    """``name value unit`` lines → {name: (value, unit)}; every line must be one, and every expected
    figure must be there with its unit and a finite, non-negative value."""
    figures = {}
    for line in lines:
        match = LINE.match(line)
        assert match, f"not a 'name value unit' line: {line!r}"
        name, value, unit = match.groups()
        figures[name] = (float(value), unit)
    for name, unit in expected.items():
        assert name in figures, f"{name} missing from {sorted(figures)}"
        value, printed_unit = figures[name]
        assert printed_unit == unit, (name, printed_unit)
        assert math.isfinite(value) and value >= 0, (name, value)
    return figures


@pytest.mark.timeout(180)
def test_load_script_prints_every_figure(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the script's temporary directory lands here
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--hotkeys", "2", "--seconds", "1", "--concurrency", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"
    figures = parse_figures(out.stdout.splitlines(), FIGURES)
    assert figures["heartbeat_errors"][0] == 0 and figures["status_errors"][0] == 0
    assert figures["heartbeat_requests"][0] > 0 and figures["signed_heartbeats_per_s"][0] > 0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("tensorswarm-bench-")]
    assert not leftovers, f"temporary directories left behind: {leftovers}"


@pytest.mark.timeout(300)
def test_audit_cost_script_prints_its_figures():
    """scripts/bench/audit_cost.py at toy size: real receipts and contributions, every audit passes
    (the script fails otherwise), figures as 'name value unit'."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench" / "audit_cost.py"),
            "--inner-steps",
            "2",
            "--repeats",
            "1",
            "--miners",
            "2",
            "--attesters",
            "1",
            "--heldout-count",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"
    expected = {"miner_round_s": "s", "audit_per_miner_round_s": "s", "audit_cost_ratio": "ratio"}
    figures = parse_figures(out.stdout.splitlines(), expected)
    assert all(figures[name][0] > 0 for name in expected), figures
    ratio = figures["audit_per_miner_round_s"][0] / figures["miner_round_s"][0]
    assert figures["audit_cost_ratio"][0] == pytest.approx(ratio, rel=0.5)  # a median of per-repeat ratios
    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench" / "audit_cost.py"), "--repeats", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
