#!/usr/bin/env python
"""Chaos: a real swarm (the orchestrator, ``--miners`` meta-miners each running its miner, one validator,
all real processes on a fresh embedded chain) under random faults, against the same swarm without them.

    python scripts/bench/chaos.py [--faults 20] [--duration 600] [--seed 0] [--miners 4] \\
        [--kinds miner,meta-miner,orchestrator,validator,sigstop] [--stop-seconds 8] [--restart-delay 2] \\
        [--settle 120] [--inner-steps H] [--overlap speculative] [--no-baseline] [--keep]

First (unless ``--no-baseline``) the fault-free run: a fresh orchestrator, meta-miners and validator train
for ``--duration`` seconds, counted from the moment every miner is in one generation. Then the chaos run:
a fresh swarm on the same chain, the same ``--duration``, and ``--faults`` faults, one at a random moment
in each of ``--faults`` equal slices of it (seeded by ``--seed``). Each fault is one of ``--kinds`` (every
kind about equally often, the order shuffled), on a random target:

- ``miner``: kill -9 the miner process of a meta-miner (its meta-miner restarts it);
- ``meta-miner``: kill -9 a meta-miner (its miner dies with it); restarted with the same flags after
  ``--restart-delay`` seconds, as a user's systemd would;
- ``orchestrator``: kill -9, restarted with the same ``--state-dir`` and the same HTTP and TCPStore
  ports after ``--restart-delay``;
- ``validator``: kill -9, restarted with the same state dir and port after ``--restart-delay``;
- ``sigstop``: SIGSTOP a miner (frozen, not dead), SIGCONT ``--stop-seconds`` later (below the miners'
  collective ``--timeout`` of 15 s: the swarm must wait for it, not evict it).

A process of the swarm that exits when no fault killed it (a meta-miner giving up after too many
crashes, an orchestrator that cannot bind its port) is restarted after ``--restart-delay`` too, and
counted. After the last fault the run goes on until every restart is done, a round has been agreed that
started after the last fault, and the validator has set weights on chain since (at most ``--settle``
seconds past ``--duration``).

Figures, one per line as ``name value unit`` on stdout (progress on stderr):

- ``faults`` (count), and ``faults_<kind>`` per kind injected;
- ``rounds_agreed_baseline`` / ``rounds_agreed_faults`` (count): rounds agreed within the run's
  ``--duration``;
- ``tokens_per_s_baseline`` / ``tokens_per_s_faults`` (tok/s) and ``tokens_per_s_ratio`` (x, faults over
  baseline): tokens trained into the agreed model, per second of the run: for every round agreed within
  ``--duration``, the contributions its aggregation included (``/v1/rounds``, ``included``) × H × batch
  size × sequence length, over ``--duration``;
- ``recovery_median_s`` / ``recovery_max_s`` (s), and ``recovery_<kind>_median_s`` /
  ``recovery_<kind>_max_s`` per kind: the time from a fault to the first agreed round that also *started*
  after it (the previous round was agreed, or its generation formed, after the fault): a round in flight
  when the fault hit does not count as recovered. For a validator kill (which training does not wait
  for) this is up to two rounds' time;
- ``faults_unrecovered`` (count): faults with no such round before the run ended;
- ``rounds_after_last_fault`` (count): rounds agreed after the last fault;
- ``agreed_rounds_lost`` (count): rounds the bench saw agreed (``/v1/rounds`` before every fault and
  at the end, with their state hashes) that the orchestrator's history at the end lacks or holds with
  another state, plus rounds missing from the history (it must be 0..N-1); ``status_round_decreases``
  (count): times ``/v1/status``'s round was lower than one seen before;
- ``checkpoints_checked`` / ``corrupted_checkpoints`` (count): every file in the orchestrator's
  checkpoint directory is hashed against its name, and every listed checkpoint is downloaded through
  the API (hash-checked);
- ``weight_settings_during_faults`` (count): times the validator's ``last_update`` on chain advanced
  between the first fault and the end of the run; ``weights_set_after_last_fault`` (bool);
- ``unplanned_exits`` (count): processes restarted because they exited on their own;
- ``evictions`` (count): hotkeys the orchestrator evicted for holding the others up (``/v1/status``). Every
  participant here is honest, so each is a false blame: a killed process must be a departure.

Exit status: 0; 1 when an agreed round was lost, a checkpoint is corrupt, the round went backwards,
no round was agreed after the last fault, the validator set no weights after it or an (honest) hotkey
was evicted (or a process failed to start); 2 for bad flags; 130 on
Ctrl-C. Every process and the temporary directory are removed on exit, Ctrl-C and SIGTERM included
(``--keep`` keeps the directory: logs, state dirs).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import _chain  # noqa: E402  (scripts/bench/_chain.py: the scripts' own directory)

from template.config.cli import positive_int  # noqa: E402
from utils.procs import Resources, is_waiting_spare, run_guarded, wait_until  # noqa: E402

HOST = "127.0.0.1"
AXON_IP = "127.0.0.2"  # the chain refuses 127.0.0.1 as an axon address
NETUID = 1
TEMPO = 10  # blocks per epoch (0.25 s blocks), as in the demo
KINDS = ("miner", "meta-miner", "orchestrator", "validator", "sigstop")
MINER_TIMEOUT_S = 15  # the miners' collective --timeout
VALIDATOR_AUTOGROUP_NICE = -10  # its own host in a deployment (scripts/bench/byzantine.py says why)
CHAIN_SAMPLE_S = 3.0
ROUNDS_PAGE = 100
T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[chaos {time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def kind_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in KINDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {bad}; choose from {', '.join(KINDS)}")
    return list(dict.fromkeys(names))


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _chain.parser("chaos.py", __doc__)
    parser.add_argument("--faults", type=positive_int, default=20, help="faults injected (default 20)")
    parser.add_argument(
        "--duration", type=positive_int, default=600, help="seconds of each run once the group formed (default 600)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the faults' kinds, times and targets (default 0)")
    parser.add_argument("--miners", type=positive_int, default=4, help="meta-miners, at least 4 (default 4)")
    parser.add_argument(
        "--kinds", type=kind_list, default=list(KINDS), help=f"comma-separated, from {', '.join(KINDS)}"
    )
    parser.add_argument(
        "--stop-seconds", type=nonnegative_float, default=8.0, help="how long a SIGSTOPped miner stays frozen (8)"
    )
    parser.add_argument(
        "--restart-delay",
        type=nonnegative_float,
        default=2.0,
        help="seconds before a killed meta-miner, orchestrator or validator is started again (2)",
    )
    parser.add_argument(
        "--settle", type=positive_int, default=120, help="most seconds past --duration to wait for recovery (120)"
    )
    parser.add_argument("--inner-steps", type=positive_int, default=None, help="H (default: the tiny preset's)")
    parser.add_argument(
        "--overlap",
        choices=("none", "speculative"),
        default="none",
        help="the run's --overlap (speculative: the next round trains while this one's agreement is pending)",
    )
    parser.add_argument("--corpus-mb", type=positive_int, default=2, help="stdlib corpus size (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the fault-free run (no tokens/s ratio)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state dirs)")
    return parser


# -- one swarm --------------------------------------------------------------------------------------


class Swarm:
    """One run's processes: the orchestrator, the meta-miners and the validator, each restartable with
    the flags it was first started with (same ports, same state dirs)."""

    def __init__(self, bench: Bench, name: str):
        from template.net.http import free_port

        self.bench, self.name = bench, name
        self.work = bench.tmp / "runs" / name
        (self.work / "logs").mkdir(parents=True)
        self.argv: dict[str, list[str]] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}
        self.port, self.store_port, self.vport = free_port(HOST), free_port(HOST), free_port(HOST)
        self.url, self.vurl = f"http://{HOST}:{self.port}", f"http://{HOST}:{self.vport}"
        self.meta = [f"miner-{i}" for i in range(bench.args.miners)]
        self.orch_dir = self.work / "orchestrator"
        self.training: dict = {}  # the run's training config, from the orchestrator's status
        self._http = None

    @property
    def http(self):
        import httpx

        if self._http is None:
            self._http = httpx.Client(trust_env=False, timeout=5)
        return self._http

    def status(self) -> dict:
        return self.http.get(self.url + "/v1/status").json()

    def log_path(self, proc: str) -> Path:
        return self.work / "logs" / f"{proc}.log"

    def spawn(self, proc: str) -> None:
        self.starts[proc] = self.starts.get(proc, 0) + 1
        path = self.log_path(proc)
        with open(path, "ab") as out:
            if self.starts[proc] > 1:
                out.write(f"\n===== chaos: start {self.starts[proc]} =====\n".encode())
                out.flush()
            self.procs[proc] = self.bench.res.spawn(
                f"{self.name}/{proc}",
                [sys.executable, *self.argv[proc]],
                cwd=REPO,
                env=self.bench.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                autogroup_nice=VALIDATOR_AUTOGROUP_NICE if proc == "validator" else None,
            )

    def tails(self) -> str:
        return "\n".join(
            f"--- {p}\n" + p.read_text(errors="replace")[-2500:]
            for p in sorted((self.work / "logs").glob("*.log"))
            if p.exists()
        )

    def start(self) -> float:
        """Start everything; returns when every miner is in one generation (the time, monotonic)."""
        b, args = self.bench, self.bench.args
        self.argv["orchestrator"] = [
            "-m",
            "orchestrator",
            *b.chain_flags("owner"),
            "--state-dir",
            str(self.orch_dir),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--tcp-store-host",
            HOST,
            "--tcp-store-port",
            str(self.store_port),
            "--dataset",
            str(b.corpus),
            "--shard-size-kb",
            "64",
            "--preset",
            "tiny",
            *(["--inner-steps", str(args.inner_steps)] if args.inner_steps else []),
            *(["--overlap", args.overlap] if args.overlap != "none" else []),
            "--min-world-size",
            "3",  # the run's Byzantine minimum: the survivors of a fault train on
            "--heartbeat-timeout",
            "30",
            # Every fault here is honest: a miner frozen for less than the collective timeout is waited for,
            # not named a straggler.
            "--straggler-grace",
            str(MINER_TIMEOUT_S),
        ]
        for wallet in self.meta:
            self.argv[wallet] = [
                "neurons/meta_miner.py",
                *b.chain_flags(wallet),
                "--orchestrator-url",
                self.url,
                "--work-dir",
                str(self.work / wallet),
                "--axon.ip",
                AXON_IP,
                "--axon.port",
                str(b.axon_ports[wallet]),
                "--heartbeat-interval",
                "1",
                "--timeout",
                str(MINER_TIMEOUT_S),
            ]
        self.argv["validator"] = [
            "neurons/validator.py",
            *b.chain_flags("validator-0"),
            "--orchestrator-url",
            self.url,
            "--state-dir",
            str(self.work / "validator"),
            "--host",
            HOST,
            "--port",
            str(self.vport),
            "--weights-interval",
            "10",
        ]
        t0 = time.monotonic()
        self.spawn("orchestrator")
        self.wait("the orchestrator", self.status, 120)
        for wallet in self.meta:
            self.spawn(wallet)
        self.spawn("validator")
        formed = self.wait(
            f"all {len(self.meta)} miners in one generation",
            lambda: (s := self.status())["world_size"] == len(self.meta) and s,
            300,
        )
        self.training = formed["training"]
        log(
            f"{self.name}: {len(self.meta)} miners formed generation {formed['generation']} in {time.monotonic() - t0:.0f} s"
        )
        return time.monotonic()

    def wait(self, what: str, predicate, timeout: float):
        def alive(what: str) -> None:
            for proc, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{self.name}: {proc} exited with {p.returncode} while waiting for {what}\n{self.tails()}"
                    )

        try:
            return wait_until(what, predicate, timeout, check=alive)
        except TimeoutError as error:
            raise RuntimeError(f"{self.name}: {error}\n{self.tails()}") from None

    def miner_pid(self, wallet: str) -> Optional[int]:
        """The pid of the miner (neurons/miner.py) that meta-miner ``wallet`` runs now, if any: its child."""
        meta = self.procs.get(wallet)
        if meta is None or meta.poll() is not None:
            return None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if (
                    int(fields[1]) == meta.pid
                    and fields[0] not in "ZX"
                    and _is_miner((entry / "cmdline").read_bytes())
                    and not is_waiting_spare(int(entry.name))
                ):
                    return int(entry.name)
            except (OSError, ValueError, IndexError):
                continue
        return None

    def rounds(self, since: int = 0) -> list:
        """The agreed rounds from ``since`` on, through the API (as the validator reads them)."""
        from template.net.orchestrator_client import OrchestratorClient

        out = []
        with OrchestratorClient(
            self.url, self.bench.wallet("validator-0"), self.bench.hotkeys["owner"], retry_s=0
        ) as c:
            while True:
                page = c.rounds(since=since, limit=ROUNDS_PAGE)
                out += page
                if len(page) < ROUNDS_PAGE:
                    return out
                since = page[-1].round + 1

    def check_checkpoints(self) -> tuple[int, int]:
        """(checked, corrupt): every stored file hashed against its name; every listed checkpoint
        downloaded through the API (the client checks its hash). Call it with no miner running."""
        from template.net.orchestrator_client import OrchestratorClient, OrchestratorError

        checked = corrupt = 0
        for path in sorted((self.orch_dir / "checkpoints").iterdir()):
            if path.name.startswith("."):
                continue  # an upload in progress
            checked += 1
            if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
                corrupt += 1
                log(f"{self.name}: checkpoint file {path.name} does not hash to its name")
        with OrchestratorClient(self.url, self.bench.wallet("validator-0"), self.bench.hotkeys["owner"]) as c:
            for info in c._json("GET", "/v1/checkpoints"):
                checked += 1
                try:
                    if c.checkpoint(info["sha256"]) is None:
                        corrupt += 1  # listed, not served
                        log(f"{self.name}: listed checkpoint {info['sha256']} is not served")
                except OrchestratorError as error:
                    corrupt += 1
                    log(f"{self.name}: checkpoint {info['sha256']}: {error}")
        return checked, corrupt

    def generations(self) -> dict[int, float]:
        """Generation id -> when it formed, from the orchestrator's own ledger (read-only)."""
        db = sqlite3.connect(f"file:{self.orch_dir / 'orchestrator.sqlite'}?mode=ro", uri=True)
        try:
            return {int(i): float(t) for i, t in db.execute("SELECT id, started_at FROM generations")}
        finally:
            db.close()

    def stop_neurons(self) -> None:
        """Stop the validator and the meta-miners (and so their miners); the orchestrator stays up."""
        res = self.bench.res
        for proc in self.procs.values():  # a frozen process would not act on SIGTERM
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGCONT)
        res.stop_group([p for n, p in self.procs.items() if n == "validator"])
        res.stop_group([p for n, p in self.procs.items() if n.startswith("miner-")])

    def stop(self) -> None:
        self.stop_neurons()
        self.bench.res.stop_group([p for n, p in self.procs.items() if n == "orchestrator"])
        if self._http is not None:
            self._http.close()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- the bench --------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # wall clock (time.time), comparable with the orchestrator's completed_at
    recovery_s: Optional[float] = None


def _is_miner(cmdline: bytes) -> bool:
    """A command line that runs neurons/miner.py: not the meta-miner's own (``meta_miner.py``, also what a
    child it forks shows until it execs). A warm spare still waiting is told apart by its pid
    (``utils.procs.is_waiting_spare``)."""
    return any(a == b"miner.py" or a.endswith(b"/miner.py") for a in cmdline.split(b"\0")[:3])


@dataclass
class RunResult:
    name: str
    rounds: int = 0  # agreed within --duration
    tokens: int = 0
    duration: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    lost: int = 0
    decreases: int = 0
    checkpoints_checked: int = 0
    corrupt: int = 0
    weight_settings: int = 0
    weights_after_last: bool = False
    rounds_after_last: int = 0
    evictions: int = -1  # every participant is honest here: each one is a false blame (-1: status unread)
    unplanned: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.duration if self.duration else math.nan


class Bench:
    def __init__(self, res: Resources, args):
        from template.net.http import free_port

        self.res, self.args = res, args
        self.tmp = res.tempdir()
        self.env = _chain.bench_env(self.tmp, args.miners + 1)  # the miners and the validator train
        self.chain_dir = self.tmp / "chain"
        self.endpoint = f"sim://{self.chain_dir}"
        self.corpus = self.tmp / "corpus.txt"
        self.hotkeys: dict[str, str] = {}
        # The same axon port per meta-miner in every run: what it published on chain stays right.
        self.axon_ports = {f"miner-{i}": free_port(AXON_IP) for i in range(args.miners)}

    def setup(self) -> None:
        from template.data.corpus import default_corpus

        name, corpus = default_corpus(max_bytes=self.args.corpus_mb * 2**20)
        self.corpus.write_bytes(corpus)
        log(f"corpus {name}: {len(corpus)} bytes")
        self.hotkeys = _chain.create_chain(
            self.chain_dir,
            self.env,
            NETUID,
            self.args.miners,
            "--tempo",
            str(TEMPO),
            "--weights-rate-limit",
            str(TEMPO),
        )

    def chain_sample(self) -> tuple[int, int]:
        """(block, the validator's last_update) read from the chain."""
        from template.chain.client import client_for

        async def read():
            async with client_for(self.endpoint) as client:
                graph = await client.subnets.metagraph(NETUID)
                return graph.block, graph.by_hotkey(self.hotkeys["validator-0"]).last_update

        return asyncio.run(read())

    def wallet(self, name: str):
        return _chain.wallet(self.chain_dir, name)

    def chain_flags(self, wallet: str) -> list[str]:
        return _chain.chain_flags(self.chain_dir, NETUID, wallet)

    # -- runs ----------------------------------------------------------------------------------------

    def baseline(self) -> RunResult:
        swarm = Swarm(self, "baseline")
        try:
            start = swarm.start()
            t0 = time.time()
            deadline = start + self.args.duration
            while time.monotonic() < deadline:
                self._check_alive(swarm)
                time.sleep(1)
            rounds = swarm.rounds()
        finally:
            swarm.stop()
        result = RunResult("baseline", duration=float(self.args.duration))
        result.rounds, result.tokens = self._count(swarm, rounds, t0, t0 + self.args.duration)
        log(f"baseline: {result.rounds} rounds, {result.tokens_per_s:.0f} tokens/s")
        return result

    def _check_alive(self, swarm: Swarm) -> None:
        for proc, p in swarm.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{swarm.name}: {proc} exited with {p.returncode}\n{swarm.tails()}")

    def _count(self, swarm: Swarm, rounds: list, t0: float, t1: float) -> tuple[int, int]:
        """Rounds agreed in [t0, t1] and the tokens they trained into the model."""
        return _chain.trained(rounds, swarm.training, t0, t1)

    def chaos(self) -> RunResult:
        args = self.args
        rng = random.Random(args.seed)
        swarm = Swarm(self, "faults")
        result = RunResult("faults", duration=float(args.duration))
        slice_s = args.duration / args.faults
        kinds = [args.kinds[i % len(args.kinds)] for i in range(args.faults)]
        rng.shuffle(kinds)
        offsets = [(i + rng.uniform(0.1, 0.9)) * slice_s for i in range(args.faults)]
        seen: dict[int, str] = {}  # round -> agreed state, every one the bench saw
        max_round = -1
        expected_dead: set[str] = set()  # killed by us, a restart pending
        pending: list[tuple[float, str, Callable[[], None]]] = []  # (monotonic time, what, action)
        frozen: dict[int, str] = {}  # pid -> wallet
        samples: list[tuple[float, int, int]] = []  # (wall time, block, validator last_update)
        last_sample = 0.0

        def record_rounds() -> None:
            try:
                for r in swarm.rounds(since=max(seen, default=-1) + 1):
                    seen.setdefault(r.round, r.state)
            except Exception as error:  # the orchestrator is down or restarting: next time
                log(f"faults: could not read the agreed rounds ({error.__class__.__name__})")

        def restart(proc: str) -> Callable[[], None]:
            def go() -> None:
                swarm.spawn(proc)
                expected_dead.discard(proc)

            return go

        def schedule(delay: float, what: str, action: Callable[[], None]) -> None:
            pending.append((time.monotonic() + delay, what, action))

        def targets(kind: str) -> list[str]:
            if kind in ("miner", "sigstop"):
                return [
                    w
                    for w in swarm.meta
                    if w not in expected_dead and (pid := swarm.miner_pid(w)) and pid not in frozen
                ]
            if kind == "meta-miner":
                return [w for w in swarm.meta if w not in expected_dead]
            return [kind] if kind not in expected_dead else []

        def inject(kind: str) -> Optional[Fault]:
            available = targets(kind)
            if not available:
                return None
            target = rng.choice(available)
            record_rounds()  # what is agreed now must still be there at the end
            fault = Fault(kind, target, time.time())
            if kind in ("miner", "sigstop"):
                pid = swarm.miner_pid(target)
                if pid is None:
                    return None
                if kind == "miner":
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGSTOP)
                    frozen[pid] = target

                    def thaw(pid: int = pid) -> None:
                        frozen.pop(pid, None)
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass

                    schedule(args.stop_seconds, f"SIGCONT {target}'s miner", thaw)
            else:
                proc = swarm.procs[target]
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                expected_dead.add(target)
                schedule(args.restart_delay, f"restart {target}", restart(target))
            return fault

        try:
            start = swarm.start()
            t0 = time.time()
            due = [start + o for o in offsets]
            window_end = start + args.duration
            settle_end = window_end + args.settle
            while True:
                now = time.monotonic()
                # Every process we did not kill must be running; one that exited is restarted (and counted).
                for proc, p in swarm.procs.items():
                    if proc not in expected_dead and p.poll() is not None:
                        result.unplanned.append(f"{proc} exited with {p.returncode}")
                        log(f"faults: {proc} exited on its own with {p.returncode}; restarting it")
                        expected_dead.add(proc)
                        schedule(args.restart_delay, f"restart {proc}", restart(proc))
                for item in sorted((p for p in pending if p[0] <= now), key=lambda p: p[0]):
                    pending.remove(item)
                    log(f"faults: {item[1]}")
                    item[2]()
                if due and now >= due[0] and now < window_end:
                    fault = inject(kinds[0])
                    if fault is None:
                        due[0] = now + 1  # no target right now (all restarting): a second later
                    else:
                        due.pop(0)
                        kinds.pop(0)
                        result.faults.append(fault)
                        log(f"faults: fault {len(result.faults)}/{args.faults}: {fault.kind} {fault.target}")
                try:
                    status = swarm.status()
                    agreed = status["round"] - 1
                    if agreed < max_round:
                        result.decreases += 1
                        log(f"faults: the agreed round went back from {max_round} to {agreed}")
                    max_round = max(max_round, agreed)
                except Exception:
                    pass  # the orchestrator is down
                if now - last_sample >= CHAIN_SAMPLE_S:
                    last_sample = now
                    try:
                        samples.append((time.time(), *self.chain_sample()))
                    except Exception as error:
                        log(f"faults: chain read failed ({error.__class__.__name__}: {error})")
                if now >= window_end and self._settled(result, pending, samples, max_round, swarm):
                    break
                if now >= settle_end:
                    log(f"faults: not recovered {args.settle} s after the run's end; stopping")
                    break
                time.sleep(0.25)
            record_rounds()
            final = swarm.rounds()
            try:
                result.evictions = sum(swarm.status().get("evictions", {}).values())
            except Exception as error:  # a figure, not a step of the run
                log(f"faults: status unread ({error.__class__.__name__}: {error})")
            if result.evictions > 0:  # each is a false blame here: say why, from the orchestrator's log
                for line in swarm.log_path("orchestrator").read_text(errors="replace").splitlines():
                    if "evicted " in line:
                        log(f"faults: {line.strip()[:300]}")
            swarm.stop_neurons()  # no uploads (nor pruning) while the checkpoints are checked
            result.checkpoints_checked, result.corrupt = swarm.check_checkpoints()
        finally:
            swarm.stop()
        result.rounds, result.tokens = self._count(swarm, final, t0, t0 + args.duration)
        history = {r.round: r.state for r in final}
        lost = {r for r, state in seen.items() if history.get(r) != state}
        lost |= set(range(max(history, default=-1) + 1)) - set(history)  # a gap in the history
        lost |= set(range(max(history, default=-1) + 1, max_round + 1))  # status said agreed, history lacks it
        result.lost = len(lost)
        if lost:
            log(f"faults: agreed rounds lost: {sorted(lost)[:20]}")
        self._recovery(result, final, swarm.generations())
        last = result.faults[-1].at if result.faults else t0
        result.rounds_after_last = sum(1 for r in final if r.completed_at > last)
        first = result.faults[0].at if result.faults else t0
        updates = [u for t, _b, u in samples if t >= first]
        before = [u for t, _b, u in samples if t < first]
        result.weight_settings = len({u for u in updates if u > (before[-1] if before else 0)})
        at_last = [b for t, b, _u in samples if t >= last]
        result.weights_after_last = bool(at_last) and any(u > at_last[0] for t, _b, u in samples if t >= last)
        return result

    def _settled(self, result: RunResult, pending, samples, max_round: int, swarm: Swarm) -> bool:
        """Past the run's end: every restart done, a round agreed that started after the last fault, and
        the validator's weights set on chain since."""
        if pending or any(p.poll() is not None for p in swarm.procs.values()):
            return False
        last = result.faults[-1].at if result.faults else 0.0
        after = [b for t, b, _u in samples if t >= last]
        if not after or not any(u > after[0] for t, _b, u in samples if t >= last):
            return False
        try:
            rounds = swarm.rounds(since=max(0, max_round - 5))
        except Exception:
            return False
        return sum(1 for r in rounds if r.completed_at > last) >= 2

    @staticmethod
    def _recovery(result: RunResult, rounds: list, generations: dict[int, float]) -> None:
        """Each fault's time to the first agreed round that started after it."""
        by_round = {r.round: r for r in rounds}
        for fault in result.faults:
            for r in rounds:
                prev = by_round.get(r.round - 1)
                started = prev.completed_at if prev is not None else 0.0
                if prev is None or prev.generation != r.generation:
                    started = max(started, generations.get(r.generation, 0.0))
                if started >= fault.at and r.completed_at > fault.at:
                    fault.recovery_s = r.completed_at - fault.at
                    break


# -- report -----------------------------------------------------------------------------------------


def report(baseline: Optional[RunResult], run: RunResult, kinds: list[str]) -> None:
    _chain.figure("faults", len(run.faults), "count")
    for kind in kinds:
        _chain.figure(f"faults_{kind.replace('-', '_')}", sum(f.kind == kind for f in run.faults), "count")
    if baseline is not None:
        _chain.figure("rounds_agreed_baseline", baseline.rounds, "count")
    _chain.figure("rounds_agreed_faults", run.rounds, "count")
    if baseline is not None:
        _chain.figure("tokens_per_s_baseline", baseline.tokens_per_s, "tok/s")
    _chain.figure("tokens_per_s_faults", run.tokens_per_s, "tok/s")
    if baseline is not None:
        _chain.figure(
            "tokens_per_s_ratio", run.tokens_per_s / baseline.tokens_per_s if baseline.tokens else math.nan, "x"
        )
    recovered = [f.recovery_s for f in run.faults if f.recovery_s is not None]
    if recovered:
        _chain.figure("recovery_median_s", statistics.median(recovered), "s")
        _chain.figure("recovery_max_s", max(recovered), "s")
    for kind in kinds:
        times = [f.recovery_s for f in run.faults if f.kind == kind and f.recovery_s is not None]
        if times:
            _chain.figure(f"recovery_{kind.replace('-', '_')}_median_s", statistics.median(times), "s")
            _chain.figure(f"recovery_{kind.replace('-', '_')}_max_s", max(times), "s")
    _chain.figure("faults_unrecovered", len(run.faults) - len(recovered), "count")
    _chain.figure("rounds_after_last_fault", run.rounds_after_last, "count")
    _chain.figure("agreed_rounds_lost", run.lost, "count")
    _chain.figure("status_round_decreases", run.decreases, "count")
    _chain.figure("checkpoints_checked", run.checkpoints_checked, "count")
    _chain.figure("corrupted_checkpoints", run.corrupt, "count")
    _chain.figure("weight_settings_during_faults", run.weight_settings, "count")
    _chain.figure("weights_set_after_last_fault", int(run.weights_after_last), "bool")
    _chain.figure("unplanned_exits", len(run.unplanned), "count")
    _chain.figure("evictions", run.evictions, "count")


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.miners < 4:
        parser.error("--miners must be at least 4 (a fault must leave the 3 ranks a generation needs)")
    if args.stop_seconds >= MINER_TIMEOUT_S:
        parser.error(f"--stop-seconds must stay below the miners' collective timeout ({MINER_TIMEOUT_S} s)")
    res = Resources(keep=args.keep, log=log, prefix="tensorswarm-chaos-")

    def body() -> int:
        bench = Bench(res, args)
        bench.setup()
        baseline = None if args.no_baseline else bench.baseline()
        run = bench.chaos()
        for line in run.unplanned:
            log(f"unplanned exit: {line}")
        for fault in run.faults:
            took = "not recovered" if fault.recovery_s is None else f"{fault.recovery_s:.1f} s"
            log(f"fault {fault.kind:12s} {fault.target:12s} → next agreed round {took}")
        report(baseline, run, args.kinds)
        failed = run.lost or run.corrupt or run.decreases or not run.rounds_after_last or not run.weights_after_last
        failed = failed or run.evictions != 0
        return 1 if failed else 0

    return run_guarded(res, body, log=log)


if __name__ == "__main__":
    raise SystemExit(main())
