"""Processes a script starts (the demo, the benchmarks): each in its own session, dying with its
parent, and torn down in reverse order exactly once, strays included."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from template.miner.supervisor import die_with_parent


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)  # benchmarks' default; the demo passes its own


def is_waiting_spare(pid: int) -> bool:
    """Whether ``pid`` is a meta-miner's warm spare still waiting (``neurons/miner.py --standby`` reading its
    stdin pipe); a started spare is a miner (its stdin is /dev/null then). False for a process gone."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"--standby" in args and os.readlink(f"/proc/{pid}/fd/0").startswith("pipe:")
    except OSError:
        return False


def wait_until(what: str, predicate, timeout: float, *, poll: float = 0.5, check=None):
    """Poll ``predicate()`` until it returns something truthy (returned). HTTP errors count as "not
    yet" (a server still starting); ``check(what)``, if given, runs first on every poll and raises
    when waiting is pointless (a process died). TimeoutError after ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check(what)
        try:
            value = predicate()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def shared_cpu_env(processes: int, env: Optional[dict] = None) -> dict:
    """``env`` (default: this process's) with ``OMP_NUM_THREADS`` set so that ``processes`` torch
    processes started together share this machine's CPUs instead of each running a thread per CPU:
    oversubscribed, torch's OpenMP threads wait on each other (measured: 3 tiny-preset trainers on 2
    cores take 93–204 ms per step with 2 threads each, 17–23 ms with 1). A value the user set is kept."""
    env = dict(os.environ if env is None else env)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // max(1, processes)))
    return env


def set_autogroup_nice(nice: int) -> None:
    """Set the CPU priority of this process's session (its scheduler autogroup: Linux shares the CPU
    between sessions, not processes). Silently not applied where it is not allowed (a negative value
    needs root) or not supported."""
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(nice))
    except OSError:
        pass


def run_guarded(res: Resources, body, log=log) -> int:
    """A script's main body with the teardown every benchmark needs: SIGTERM behaves like Ctrl-C
    (exit 130), an expected failure (a process, file or subprocess error) is one logged line and exit
    1, and ``res`` is closed on every path. Ctrl-C gets the same handler: under Python's default one,
    asyncio.run (chain reads) swaps in its own, which only cancels the running task — a cancellation
    that a client swallows would leave the script running."""

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    previous_int = signal.signal(signal.SIGINT, on_sigterm)
    try:
        return body()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        log(f"error: {error}")
        return 1
    finally:
        res.close()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


TOKEN_VAR = "TENSORSWARM_RUN_TOKEN"


class Resources:
    """Everything this run created, torn down in reverse order exactly once."""

    def __init__(self, keep: bool, log=log, prefix: str = "tensorswarm-bench-"):
        self.keep = keep
        self.log = log
        self.prefix = prefix
        self.tmp: Optional[Path] = None
        self.token = secrets.token_hex(8)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.workers: list = []  # multiprocessing.Process ranks

    def tempdir(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=self.prefix))
        return self.tmp

    def spawn(self, name: str, argv: list[str], autogroup_nice: Optional[int] = None, **kw) -> subprocess.Popen:
        """Start ``argv`` in its own session. ``autogroup_nice``: the CPU priority of that session's
        scheduler autogroup (Linux shares the CPU between sessions, not processes; a negative value
        needs root and is silently not applied without it)."""
        # Own session: a terminal Ctrl-C reaches only us, and we stop children in order. The token in
        # the environment is inherited by their children too: reap_strays finds exactly those.
        kw["env"] = {**(kw.get("env") or os.environ), TOKEN_VAR: self.token}

        def child() -> None:
            die_with_parent()
            if autogroup_nice is not None:
                set_autogroup_nice(autogroup_nice)

        proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=child, **kw)
        self.procs.append((name, proc))
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is its own
                except ProcessLookupError:
                    pass
                proc.wait(10)
            except ProcessLookupError:
                pass

    def stop_group(self, procs: list[subprocess.Popen]) -> None:
        """SIGTERM all, then wait for each (meta-miners stop their miners in parallel)."""
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            self.stop(proc)
        self.procs = [(n, p) for n, p in self.procs if p not in procs]

    def kill_workers(self) -> None:
        for p in self.workers:
            if p.is_alive():
                p.kill()
        for p in self.workers:
            p.join(10)
        self.workers = []

    def reap_strays(self) -> None:
        """Kill, by pid, any process still running that carries this run's token in its environment:
        only processes this run started and their descendants (e.g. a miner whose meta-miner was
        SIGKILLed) — never a parent or a wrapper whose command line happens to name our paths."""
        if not Path("/proc").is_dir():
            return
        marker = f"{TOKEN_VAR}={self.token}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
                    self.log(f"killed leftover process {entry.name}")
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.kill_workers()
        while self.procs:
            _name, proc = self.procs.pop()
            self.stop(proc)
        self.reap_strays()
        if self.tmp is not None:
            if self.keep:
                self.log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
