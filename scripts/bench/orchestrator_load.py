#!/usr/bin/env python
"""Signed heartbeats per second against a real orchestrator process.

    python scripts/bench/orchestrator_load.py [--hotkeys 32] [--seconds 10] [--concurrency 64]

What it does, all on 127.0.0.1 and inside one temporary directory:

1. ``python -m utils.localnet init`` creates an embedded chain with ``--hotkeys``
   registered miners and one validator;
2. ``python -m orchestrator`` starts in its own process (owner's hotkey, a small
   generated corpus, 8 KiB shards, heartbeat timeout 300 s) and is polled until
   ``GET /v1/status`` answers;
3. every hotkey joins (signed ``POST /v1/join``);
4. load phase: ``--concurrency`` keep-alive connections send btauth/1-signed
   ``POST /v1/heartbeat`` from the hotkeys in turn (fresh nonce per request) for
   ``--seconds`` after a short warm-up;
5. baseline phase: the same concurrency and duration against the public,
   unsigned ``GET /v1/status``, so a heartbeat figure can be read as a ratio on a
   shared, noisy machine.

stdout carries one figure per line, ``name value unit``; anything else goes to
stderr. Latencies are request-written to response-read, measured in the load
generator (so under load they include its own event-loop queueing). The load is
a closed loop, so mean latency is about concurrency / throughput (Little's law):
p99 <= 25 ms at 64 connections needs well over 2560 req/s. Server CPU comes
from /proc (Linux) and is the least noisy figure: CPU microseconds the
orchestrator process spent per request (``*_server_cpu_cores`` near 1.0 means
the single-process server was saturated; ``*_client_cpu_cores`` shows the load
generator's own share of the machine).

The exit status is 0 only if every measured request got a 200; the error
counts are printed either way. Every process and the temporary directory are
removed on exit, Ctrl-C and SIGTERM included (``--keep`` keeps the directory).

``--client raw`` (default) speaks minimal HTTP/1.1 over asyncio streams so that
the load generator costs little CPU next to the server on small machines;
``--client httpx`` uses ``httpx.AsyncClient`` instead (it needs a full core of
its own at these rates, so it measures itself more than the server).
``--py-spy FILE`` samples the server (GIL-holding stacks, non-blocking) during
the heartbeat phase (``.txt``: folded stacks plus a per-category summary on
stderr, ``.svg``: flame graph, ``.json``: speedscope). Thread hand-offs and GIL
waits cost CPU without Python frames, so compare variants by
``heartbeat_server_cpu_per_req_us`` rather than by sample shares alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from template.config.cli import non_negative_float, positive_float, positive_int  # noqa: E402
from utils.procs import Resources, log, run_guarded  # noqa: E402

HOST = "127.0.0.1"  # the only address this script talks to
NETUID = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator_load.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hotkeys", type=positive_int, default=32, help="registered miners sending heartbeats")
    parser.add_argument("--seconds", type=positive_float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--concurrency", type=positive_int, default=64, help="requests in flight (connections)")
    parser.add_argument("--warmup", type=non_negative_float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator HTTP client")
    parser.add_argument(
        "--py-spy",
        dest="py_spy",
        type=Path,
        default=None,
        help="profile the server with py-spy during the heartbeat phase into this file",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state)")
    return parser


# --------------------------------------------------------------------------- #
# Processes and cleanup
# --------------------------------------------------------------------------- #


def write_corpus(path: Path, size: int = 96 * 1024) -> Path:
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "swarm", "tensor", "miner", "round", "train", "loss"]
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
        lines.append(line)
        total += len(line)
    path.write_text("".join(lines))
    return path


def proc_cpu_seconds(pid: int) -> Optional[float]:
    """utime+stime of a process (all threads), from /proc; None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- #
# Load generation
# --------------------------------------------------------------------------- #


class RawConnection:
    """Minimal HTTP/1.1 keep-alive client: one request at a time, Content-Length bodies."""

    def __init__(self, port: int):
        self.port = port
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def request(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length, close = None, False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise RuntimeError(f"unexpected transfer-encoding {value.strip()!r}")
        payload = await self.reader.readexactly(length or 0)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = self.reader = None


class HttpxConnection:
    def __init__(self, client):
        self.client = client

    async def request(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        response = await self.client.request(method, target, headers=headers, content=body)
        return response.status_code, response.content

    async def close(self) -> None:
        pass


@dataclass
class Hotkey:
    signer: object
    ss58: str
    body: bytes
    last_nonce: int = 0

    def nonce(self) -> int:
        # Strictly increasing per hotkey: two requests signed in the same nanosecond stay distinct.
        self.last_nonce = max(time.time_ns(), self.last_nonce + 1)
        return self.last_nonce


@dataclass
class PhaseResult:
    window: float
    completed: int = 0  # responses that arrived inside the measured window
    statuses: dict = field(default_factory=dict)  # status -> count, for those responses
    latencies: list = field(default_factory=list)  # seconds, requests sent and answered inside the window
    server_cpu: Optional[float] = None  # CPU seconds of the server process over the window
    client_cpu: float = 0.0
    sample_error: str = ""

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    @property
    def rate(self) -> float:
        return self.completed / self.window

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def run_phase(
    conns, make_request, seconds: float, warmup: float, server_pid: int, on_measure=None
) -> PhaseResult:
    """Every connection sends back to back (closed loop) for ``warmup + seconds``;
    throughput counts the responses that arrive in the last ``seconds``, latency
    percentiles the requests sent and answered inside that window."""
    result = PhaseResult(window=seconds)
    measure_from = time.perf_counter() + warmup
    end = measure_from + seconds

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        server0, client0 = proc_cpu_seconds(server_pid), time.process_time()
        if on_measure is not None:
            on_measure(seconds)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        server1, client1 = proc_cpu_seconds(server_pid), time.process_time()
        if server0 is not None and server1 is not None:
            result.server_cpu = server1 - server0
        result.client_cpu = client1 - client0

    async def worker(index: int, conn) -> None:
        turn = index
        while time.perf_counter() < end:
            method, target, headers, body = make_request(turn)
            turn += len(conns)
            t0 = time.perf_counter()
            try:
                status, _ = await conn.request(method, target, headers, body)
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as error:
                status = 0  # a connection-level failure counts as an error
                result.sample_error = result.sample_error or f"{type(error).__name__}: {error}"
                await conn.close()
            t1 = time.perf_counter()
            if measure_from <= t1 <= end:
                result.completed += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if t0 >= measure_from:
                    result.latencies.append(t1 - t0)

    await asyncio.gather(sampler(), *(worker(i, c) for i, c in enumerate(conns)))
    return result


async def drive(
    args, port: int, owner_ss58: str, wallets_dir: Path, server_pid: int, profiler
) -> tuple[PhaseResult, PhaseResult]:
    import bittensor as bt
    from bittensor import http_auth
    from bittensor.signing import resolve_signer

    hotkeys = []
    for i in range(args.hotkeys):
        signer = resolve_signer(bt.Wallet(f"miner-{i}", "default", str(wallets_dir)), role="hotkey")
        hotkeys.append(Hotkey(signer, signer.ss58_address, b"{}"))

    def signed(key: Hotkey, method: str, target: str, body: bytes) -> dict:
        headers = http_auth.sign(
            key.signer, method=method, path=target, body=body, receiver_ss58=owner_ss58, nonce_ns=key.nonce()
        )
        headers["Content-Type"] = "application/json"
        return headers

    httpx_client = None
    if args.client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        httpx_client = httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=30, trust_env=False)
        conns = [HttpxConnection(httpx_client) for _ in range(args.concurrency)]
    else:
        conns = [RawConnection(port) for _ in range(args.concurrency)]
    try:
        # Join every hotkey; its heartbeat then carries what a miner would send.
        for key in hotkeys:
            status, payload = await conns[0].request("POST", "/v1/join", signed(key, "POST", "/v1/join", b"{}"), b"{}")
            if status != 200:
                raise RuntimeError(f"join of {key.ss58} answered {status}: {payload[:200]!r}")
            answer = json.loads(payload)
            beat = {"round": 0, "step": 1, "loss": 3.25}
            if answer["status"] == "assigned":
                beat["generation"] = answer["assignment"]["generation"]
            key.body = json.dumps(beat, separators=(",", ":")).encode()
        members = sum(b"generation" in k.body for k in hotkeys)
        log(f"{len(hotkeys)} hotkeys joined ({members} member(s) of the generation, the rest waiting)")

        def heartbeat(turn: int):
            key = hotkeys[turn % len(hotkeys)]
            return "POST", "/v1/heartbeat", signed(key, "POST", "/v1/heartbeat", key.body), key.body

        def status_request(_turn: int):
            return "GET", "/v1/status", {}, b""

        log(f"heartbeat phase: {args.concurrency} connections, {args.warmup:g}s warm-up + {args.seconds:g}s")
        beats = await run_phase(conns, heartbeat, args.seconds, args.warmup, server_pid, on_measure=profiler)
        log(f"status baseline phase: {args.concurrency} connections, {args.warmup:g}s warm-up + {args.seconds:g}s")
        status = await run_phase(conns, status_request, args.seconds, args.warmup, server_pid)
        return beats, status
    finally:
        for conn in conns:
            await conn.close()
        if httpx_client is not None:
            await httpx_client.aclose()


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def start_orchestrator(res: Resources, tmp: Path, chain_dir: Path, env: dict) -> tuple[subprocess.Popen, int]:
    import httpx

    from template.net.http import free_port

    corpus = write_corpus(tmp / "corpus.txt")
    for attempt in range(3):  # free_port() is racy: another process may take the port first
        port = free_port(HOST)
        out = open(tmp / f"orchestrator-{attempt}.log", "wb")
        proc = res.spawn(
            "orchestrator",
            [
                sys.executable,
                "-m",
                "orchestrator",
                "--subtensor.chain_endpoint",
                f"sim://{chain_dir}",
                "--netuid",
                str(NETUID),
                "--wallet.path",
                str(chain_dir / "wallets"),
                "--wallet.name",
                "owner",
                "--state-dir",
                str(tmp / "orch"),
                "--host",
                HOST,
                "--port",
                str(port),
                "--tcp-store-host",
                HOST,
                "--tcp-store-port",
                "0",
                "--dataset",
                str(corpus),
                "--shard-size-kb",
                "8",
                "--heartbeat-timeout",
                "300",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + 90
        with httpx.Client(trust_env=False, timeout=2) as http:  # no proxies: 127.0.0.1 only
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    if http.get(f"http://{HOST}:{port}/v1/status").status_code == 200:
                        return proc, port
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        text = (tmp / f"orchestrator-{attempt}.log").read_text(errors="replace")
        res.stop(proc)
        if "address already in use" not in text.lower():
            raise RuntimeError(f"orchestrator did not come up; its output:\n{text[-3000:]}")
    raise RuntimeError("orchestrator could not bind a port in 3 attempts")


def start_py_spy(res: Resources, pid: int, out: Path):
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise RuntimeError("py-spy not found: pip install py-spy")
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")

    def begin(duration: float) -> None:
        res.spawn(
            "py-spy",
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(duration))),
                # --nonblocking: pausing a process with ~40 pool threads at each
                # sample cuts its throughput 30-fold.
                "--rate",
                "250",
                "--nonblocking",
                "--gil",
                "--format",
                fmt,
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    return begin


# (label, substrings of a frame; the first category any frame of a stack matches wins)
CATEGORIES = [
    ("idle: pool threads waiting for work", ("Condition.wait (threading", "_worker (concurrent/futures")),
    ("idle: event loop waiting in epoll", ("EpollSelector.select",)),
    ("nonce store: SQLite INSERT (template/auth.py SqliteNonceStore)", ("SqliteNonceStore.check_and_store",)),
    ("signature verification (bt.http_auth.verify, sr25519)", ("verify (bittensor/http_auth.py",)),
    ("Coordinator.heartbeat: tick (timeouts, slots/waiting SELECTs)", ("Coordinator.",)),
    ("metagraph lookup", ("MetagraphCache.",)),
    ("logging", ("logging/",)),
    ("prometheus metrics", ("prometheus_client/",)),
    ("pydantic: body validation, response serialization", ("pydantic/", "pydantic_core")),
    (
        "thread-pool hop (run_in_threadpool, anyio, futures)",
        ("run_in_threadpool", "anyio/", "concurrent/futures", "threading.py"),
    ),
    ("FastAPI/Starlette: routing, dependencies, middleware", ("fastapi/", "starlette/", "template/http.py")),
    ("uvicorn + h11: HTTP parsing and writing", ("uvicorn/", "h11/")),
    ("asyncio: event loop, sockets, tasks", ("asyncio/", "selectors.py")),
]


def summarize_profile(path: Path) -> None:
    """Busy samples of a py-spy raw (folded) profile by category, to stderr."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        label = next((label for label, keys in CATEGORIES if any(k in f for f in frames for k in keys)), "other")
        counts[label] = counts.get(label, 0) + int(n)
    busy = {k: v for k, v in counts.items() if not k.startswith("idle")}
    total = sum(busy.values()) or 1
    log(f"server busy samples by category ({total} busy of {sum(counts.values())}):")
    for label, n in sorted(busy.items(), key=lambda kv: -kv[1]):
        log(f"  {n / total:6.1%}  {label}")


def report(beats: PhaseResult, status: PhaseResult) -> None:
    def line(name: str, value, unit: str) -> None:
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        print(f"{name} {text} {unit}", flush=True)

    line("signed_heartbeats_per_s", beats.rate, "req/s")
    line("heartbeat_p50_ms", beats.percentile_ms(0.50), "ms")
    line("heartbeat_p99_ms", beats.percentile_ms(0.99), "ms")
    line("heartbeat_requests", beats.completed, "count")
    line("heartbeat_errors", beats.errors, "count")
    line("status_baseline_per_s", status.rate, "req/s")
    line("status_p50_ms", status.percentile_ms(0.50), "ms")
    line("status_p99_ms", status.percentile_ms(0.99), "ms")
    line("status_errors", status.errors, "count")
    ratio = beats.rate / status.rate if status.rate else float("nan")
    print(f"heartbeat_vs_status_ratio {ratio:.2f} x", flush=True)
    for name, phase in (("heartbeat", beats), ("status", status)):
        if phase.server_cpu is not None and phase.completed:
            line(f"{name}_server_cpu_per_req_us", phase.server_cpu / phase.completed * 1e6, "us")
            line(f"{name}_server_cpu_cores", phase.server_cpu / phase.window, "cores")
        line(f"{name}_client_cpu_cores", phase.client_cpu / phase.window, "cores")
    for name, phase in (("heartbeat", beats), ("status", status)):
        if phase.errors:
            detail = {k: v for k, v in phase.statuses.items() if k != 200}
            log(f"{name}: non-200 responses by status {detail} {phase.sample_error}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    res = Resources(args.keep)

    def body() -> int:
        tmp = res.tempdir()
        env = {
            **os.environ,
            "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp / "token_symbols.json"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        chain_dir = tmp / "chain"
        log(f"localnet with {args.hotkeys} miners in {chain_dir}")
        init = res.spawn(
            "localnet init",
            [
                sys.executable,
                "-m",
                "utils.localnet",
                "init",
                "--dir",
                str(chain_dir),
                "--miners",
                str(args.hotkeys),
                "--validators",
                "1",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = init.communicate(timeout=600)
        if init.returncode != 0:
            raise RuntimeError(f"localnet init failed:\n{output.decode(errors='replace')[-3000:]}")

        proc, port = start_orchestrator(res, tmp, chain_dir, env)
        owner = json.loads((chain_dir / "wallets" / "owner" / "hotkeys" / "defaultpub.txt").read_text())["ss58Address"]
        log(f"orchestrator pid {proc.pid} on http://{HOST}:{port}")
        profiler = start_py_spy(res, proc.pid, args.py_spy.resolve()) if args.py_spy else None
        beats, status = asyncio.run(drive(args, port, owner, chain_dir / "wallets", proc.pid, profiler))
        if proc.poll() is not None:
            raise RuntimeError(f"orchestrator exited during the run (status {proc.returncode})")
        if args.py_spy:
            for name, spy in res.procs:
                if name == "py-spy" and spy.wait(60) != 0:
                    log(f"py-spy exited with status {spy.returncode} (ptrace not permitted?)")
            if args.py_spy.exists():
                log(f"py-spy profile of the heartbeat phase: {args.py_spy}")
                if args.py_spy.suffix not in (".svg", ".json"):
                    summarize_profile(args.py_spy)
        report(beats, status)
        goal = beats.rate >= 2000 and beats.percentile_ms(0.99) <= 25
        log(f"goal (>= 2000 heartbeats/s, p99 <= 25 ms): {'met' if goal else 'not met'}")
        return 0 if beats.errors == status.errors == 0 and beats.completed and status.completed else 1

    return run_guarded(res, body)


if __name__ == "__main__":
    raise SystemExit(main())
