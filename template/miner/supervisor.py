"""Supervising one miner process: restart policy (pure) and the child handle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

from template.miner import exit_codes


def restart_delay(recent_crashes: int, base_s: float = 1.0, cap_s: float = 60.0) -> float:
    """Exponential backoff: 0 after a clean hand-over or a first crash (the swarm waits for this rank: an
    isolated crash, a kill or an OOM, is restarted at once), then base, 2·base, … up to cap."""
    if recent_crashes <= 1:
        return 0.0
    return min(cap_s, base_s * 2 ** (recent_crashes - 2))


def counts_as_crash(code: Optional[int]) -> bool:
    """Re-assignments and broken groups are the swarm's business, not this
    miner's fault: they restart at once. Anything else backs off."""
    return code not in (exit_codes.OK, exit_codes.REASSIGN, exit_codes.GROUP_FAILURE)


@dataclass
class CrashLoop:
    """Crashes within ``window_s``; more than ``max_crashes`` means give up."""

    max_crashes: int = 5
    window_s: float = 300.0
    times: list[float] = field(default_factory=list)

    def record(self, now: float) -> None:
        self.times = [t for t in self.times if now - t < self.window_s] + [now]

    def recent(self, now: float) -> int:
        return sum(1 for t in self.times if now - t < self.window_s)

    def exceeded(self, now: float) -> bool:
        return self.recent(now) > self.max_crashes


def die_with_parent() -> None:
    """In a child between fork and exec: ask Linux to SIGTERM it when its parent dies, even by
    SIGKILL (PR_SET_PDEATHSIG). Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class MinerProcess:
    """The spawned miner; its own process group so no grandchild is orphaned, and it is told to
    stop if the meta-miner dies without stopping it (kill -9, OOM killer)."""

    def __init__(self, argv: list[str], log_path: str, env: Optional[dict] = None, standby: bool = False):
        self.log = open(log_path, "ab")
        self.standby = standby
        self.proc = subprocess.Popen(
            [*argv, "--standby"] if standby else argv,
            stdin=subprocess.PIPE if standby else subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def go(self) -> bool:
        """Start a standby miner (``neurons/miner.py --standby``); False if it is no longer alive."""
        if not self.standby or self.proc.poll() is not None:
            return False
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            return False
        self.standby = False
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def wait(self, timeout_s: float) -> Optional[int]:
        """Its exit code once it exits, or None after ``timeout_s``."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 10.0) -> Optional[int]:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # a standby one exits on it
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self.log.close()
        return self.proc.returncode
