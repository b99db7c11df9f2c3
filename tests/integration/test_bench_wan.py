"""scripts/bench/wan.py at toy size: two miners, each in its own network namespace on a bridge with
its link capped at 100 Mbit/s, the orchestrator and a validator on the bridge, ddp against diloco with
sparseloco compression. Every figure is printed with its unit; bytes on the wire come from the hosts'
interface counters, so what ddp's all-reduce and the diloco exchange really cost shows up, and
sparseloco sends far fewer bytes per trained token. No namespace or temporary directory is left
behind. No thresholds on speed (the machine's): the wire-byte ratio is a property of the protocol."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_bench_smoke import parse_figures
from utils import netns

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench" / "wan.py"
RUNS = ("ddp_100mbit", "diloco_sparseloco_100mbit")
PER_RUN = {
    "tokens_per_s": "tok/s",
    "utilization": "x",
    "rounds": "count",
    "round_s": "s",
    "wire_out_per_host_round": "B",
    "wire_out_max_host_round": "B",
    "wire_in_per_host_round": "B",
    "wire_bytes_per_token": "B/tok",
    "wire_per_token_vs_ddp": "x",
}
FIGURES = {
    "ddp_local_tokens_per_s": "tok/s",
    "diloco_sparseloco_local_tokens_per_s": "tok/s",
    **{f"{run}_{name}": unit for run in RUNS for name, unit in PER_RUN.items()},
}


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.timeout(400)
def test_wan_bench_counts_wire_bytes_per_strategy(tmp_path):
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    before = _namespaces()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    argv = ["--miners", "2", "--rates", "100", "--strategies", "diloco_sparseloco"]
    argv += ["--duration", "6", "--local-rounds", "1"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=380
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-6000:]}"
    figures = {name: value for name, (value, _unit) in parse_figures(out.stdout.splitlines(), FIGURES).items()}
    for run in RUNS:
        assert figures[f"{run}_rounds"] >= 1 and figures[f"{run}_tokens_per_s"] > 0, figures
        assert figures[f"{run}_wire_out_per_host_round"] > 0, figures
    assert figures["ddp_100mbit_wire_per_token_vs_ddp"] == 1
    # ddp all-reduces every gradient every step; sparseloco sends ~1.5% of a round's Δ in ~15 bits each.
    assert figures["diloco_sparseloco_100mbit_wire_per_token_vs_ddp"] > 10, figures
    assert _namespaces() <= before, "network namespaces left behind"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("tensorswarm-wan-")]
