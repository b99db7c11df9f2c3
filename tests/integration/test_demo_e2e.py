"""scripts/demo.sh, the README's first command, end to end at reduced size: the real script
(virtualenv check included, on the suite's own virtualenv), a fresh embedded chain, orchestrator,
meta-miners, miners and a validator as real processes; and Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(600)]


def _env() -> dict:
    # The suite's virtualenv: demo.sh finds it installed (stamp) and goes straight to the demo.
    return {**os.environ, "TENSORSWARM_VENV": sys.prefix, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}


def _ours(marker: Path) -> list[int]:
    """Pids of live processes whose command line names ``marker`` (the demo's work dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                status = (entry / "status").read_text()
            except OSError:
                continue
            if str(marker).encode() in cmdline and "State:\tZ" not in status:
                pids.append(int(entry.name))
    return pids


def test_demo_trains_audits_and_rewards_every_miner(tmp_path):
    work = tmp_path / "demo"
    out = subprocess.run(
        ["bash", "scripts/demo.sh", "--miners", "2", "--validators", "1", "--duration", "45", "--dir", str(work)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=540,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    assert "fell;" in text and "did NOT fall" not in text, text[-3000:]
    assert "every miner earned on-chain incentive: yes" in text, text[-3000:]
    # The summary's table names each miner with a positive incentive read from the chain.
    for name in ("miner-0", "miner-1"):
        row = next(line for line in text.splitlines() if f" {name} " in line)
        assert float(row.split()[2]) > 0, row  # neuron, uid, incentive, ...
    assert _ours(work) == []  # nothing left running
    assert (work / "logs" / "orchestrator.log").exists() and (work / "logs" / "validator-0.log").exists()


def test_ctrl_c_stops_every_process_the_demo_started(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh", "--miners", "2", "--duration", "600", "--dir", str(work)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        # Wait until the miners train (their rank processes exist), then press Ctrl-C.
        while time.time() < deadline and not any("neurons/miner.py" in _cmd(pid) for pid in _ours(work)):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        assert any("neurons/miner.py" in _cmd(pid) for pid in _ours(work)), "miners never started"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output[-4000:]
    assert "interrupted" in output
    time.sleep(1)
    assert _ours(work) == [], [_cmd(pid) for pid in _ours(work)]


def _cmd(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_bad_flags_and_a_foreign_dir_are_refused(tmp_path):
    bad = subprocess.run(
        [sys.executable, "scripts/demo.py", "--miners", "0"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--miners" in bad.stderr
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = subprocess.run(
        [sys.executable, "scripts/demo.py", "--dir", str(foreign)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "not made by the demo" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"  # nothing a user had is touched
