"""Smoke test for scripts/bench/train_compare.py: with a tiny budget, two ranks and no recovery
measurement it runs end to end, prints every figure with a number and a unit, then the table, and
leaves nothing behind. No timing or loss thresholds: the figures depend on the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_bench_smoke import parse_figures

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench" / "train_compare.py"
STRATEGIES = {"ddp": "ddp", "diloco": "diloco", "diloco_int8": "diloco+int8", "diloco_topk_int8": "diloco+topk_int8"}
FIGURES = {"tokens_per_rank": "tokens", "rounds": "count", "world_size": "ranks", "init_heldout_loss": "nats"}
for key in STRATEGIES:
    FIGURES.update(
        {
            f"{key}_final_loss": "nats",
            f"{key}_final_train_loss": "nats",
            f"{key}_bytes_per_rank": "bytes",
            f"{key}_wall_s": "s",
        }
    )
    if key != "ddp":
        FIGURES.update({f"{key}_loss_vs_ddp": "x", f"{key}_bytes_vs_ddp": "x", f"{key}_wall_vs_ddp": "x"})
ROW = re.compile(r"^\| (\S+) +\|(?: +\S+ +\|){6}$")


@pytest.mark.timeout(200)
def test_train_compare_prints_every_figure_and_the_table(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the script's temporary directory lands here
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--world-size",
            "2",
            "--tokens",
            "2048",
            "--inner-steps",
            "2",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--eval-windows",
            "32",
            "--corpus-mb",
            "1",
            "--shard-kb",
            "64",
            "--skip-recovery",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=190,  # 14 s on an idle 2-core machine; several times that beside a swarm
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"

    lines = out.stdout.splitlines()
    blank = lines.index("")  # figures, one blank line, then the table
    figures = parse_figures(lines[:blank], FIGURES)
    assert not any("recover" in name for name in figures)  # --skip-recovery
    assert figures["world_size"][0] == 2
    # 2048 tokens at 2 x 4 x 32 = 256 per round: 8 rounds.
    assert figures["rounds"][0] == 8 and figures["tokens_per_rank"][0] == 2048
    assert all(figures[f"{k}_bytes_per_rank"][0] > 0 for k in STRATEGIES)

    table = lines[blank + 1 :]
    assert any(
        "strategy" in line and "final loss" in line and "bytes/rank" in line and "wall" in line for line in table
    ), out.stdout
    rows = {m.group(1) for line in table if (m := ROW.match(line))}
    assert set(STRATEGIES.values()) <= rows, (rows, out.stdout)

    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("tensorswarm-bench-")]
    assert not leftovers, f"temporary directories left behind: {leftovers}"
