#!/usr/bin/env python
"""Training over capped links: what crosses the wire, tokens/s, and compute utilization, per strategy.

    sudo python scripts/bench/wan.py [--miners 4] [--rates 0,100] \\
        [--strategies ddp,diloco_int8,diloco_sparseloco] [--preset tiny] [--inner-steps H] \\
        [--batch-size B] [--seq-len T] [--checkpoint-every K] [--duration 60] [--local-rounds 4] [--no-ddp] [--keep]

Real processes on a fresh embedded chain: the orchestrator and one validator on a bridge (the
"internet"), and ``--miners`` meta-miners, each in its own network namespace with its own address on
that bridge (``utils/netns.py``), as miners on separate hosts. For each rate in ``--rates`` (Mbit/s; 0
= uncapped) every host's link is capped both ways with ``tc … tbf``; for each strategy a fresh swarm
trains from the moment all miners are in one generation and have agreed a first round, for
``--duration`` seconds.

Wire bytes are read from the hosts' interface counters (the bridge side of each host's veth pair):
everything a miner host sends, to its peers, the orchestrator (reports, checkpoint uploads) and the
validator (receipts and contributions it serves), as the host's owner pays for it. Not the bytes handed
to a collective: gloo's ring relays the others' data, and those relays cross the wire too.

"Communication disabled" is the same number of processes, each training the same configuration as a
group of one (``scripts/bench/train_compare.py``'s rank, ``--local-rounds`` rounds, timed from the end of the
first as the swarm is timed from its first agreed round) at the same time
on this machine: the same inner steps, compression, aggregation and state hashing, and no network.
Compute utilization = swarm tokens/s ÷ that. On a shared CPU this credits the swarm with nothing for
its orchestrator and validator, which run elsewhere in a deployment (the validator runs at the lowest
CPU priority here).

Figures, one per line as ``name value unit`` on stdout (progress on stderr); ``S`` is a strategy and
``R`` a rate (``uncapped`` or e.g. ``100mbit``):

- ``S_local_tokens_per_s`` (tok/s): communication disabled;
- ``S_R_tokens_per_s`` (tok/s): tokens trained into agreed rounds (contributions included × H ×
  batch × seq len) per second of the window; ``S_R_utilization`` (x): over ``S_local_tokens_per_s``;
- ``S_R_rounds`` (count) and ``S_R_round_s`` (s): rounds agreed in the window and their mean length;
  ``S_R_inner_share`` (x): the share of each miner's round its inner steps took, from the miners' logs
  (the rest: exchange, agreement and commit on the critical path; diloco only);
- ``S_R_link_share`` (x): capped links only: the share of its link's rate a miner host sends at while it
  sends (byte-weighted over ``SAMPLE_S`` windows of its counters, mean over hosts; ``link_share``);
- ``S_R_wire_out_per_host_round`` (B): bytes a miner host sent per agreed round, mean over hosts;
  ``S_R_wire_out_max_host_round`` (B): the busiest host's (rank 0 uploads the agreed state);
  ``S_R_wire_in_per_host_round`` (B): bytes received, mean over hosts;
- ``S_R_wire_bytes_per_token`` (B/tok): all hosts' sent bytes over the tokens trained;
  ``S_R_wire_per_token_vs_ddp`` (x): ddp's bytes per token over S's at the same rate (ddp is run unless
  ``--no-ddp``).

Needs root (network namespaces, tc): without it, one line on stderr says why and the exit status is 0
with no figures. Exit status 1 when a process fails or a swarm trains no round; 2 for bad flags; 130 on
Ctrl-C. Every process, namespace and the temporary directory are removed on exit (``--keep`` keeps the
directory: logs, state dirs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import _chain  # noqa: E402  (scripts/bench/_chain.py: the scripts' own directory)

from template.config.cli import positive_int  # noqa: E402
from utils import netns  # noqa: E402
from utils.procs import Resources, run_guarded, wait_until  # noqa: E402

NETUID = 1
TEMPO = 10
MINER_TIMEOUT_S = 120  # collectives over a slow link take long; a fault is not what this measures
LOWEST_PRIORITY = 19
ROUNDS_PAGE = 100
SAMPLE_S = 0.05  # how often the hosts' counters are read while measuring: the link share's resolution
T0 = time.monotonic()

# name -> orchestrator flags
STRATEGIES = {
    "ddp": ["--strategy", "ddp"],
    "diloco_int8": ["--strategy", "diloco", "--compression", "int8"],
    "diloco_topk_int8": ["--strategy", "diloco", "--compression", "topk_int8", "--topk-fraction", "0.1"],
    "diloco_sparseloco": ["--strategy", "diloco", "--compression", "sparseloco", "--topk-fraction", "0.015"],
    "diloco_sparseloco_speculative": [
        *(
            "--strategy",
            "diloco",
            "--compression",
            "sparseloco",
            "--topk-fraction",
            "0.015",
            "--overlap",
            "speculative",
        ),
    ],
}


def log(message: str) -> None:
    print(f"[wan {time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def figure(name: str, value, unit: str) -> None:
    _chain.figure(name, value, unit)


def strategy_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown strategies {bad}; choose from {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(names))


def rate_list(text: str) -> list[float]:
    try:
        rates = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or any(not (r >= 0 and r < 1e6) for r in rates):
        raise argparse.ArgumentTypeError(f"rates are Mbit/s, 0 (uncapped) or more: {text!r}")
    return list(dict.fromkeys(rates))


def at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (the first round is not timed), got {value}")
    return value


def rate_name(rate: float) -> str:
    return "uncapped" if rate == 0 else f"{rate:g}mbit"


def build_parser() -> argparse.ArgumentParser:
    parser = _chain.parser("wan.py", __doc__)
    parser.add_argument("--miners", type=positive_int, default=4, help="meta-miners, each on its own host (>= 2)")
    parser.add_argument("--rates", type=rate_list, default=rate_list("0,100"), help="Mbit/s per link, 0 = uncapped")
    parser.add_argument(
        "--strategies",
        type=strategy_list,
        default=strategy_list("diloco_int8,diloco_sparseloco"),
        help=f"comma-separated, from {', '.join(STRATEGIES)} (ddp is added unless --no-ddp)",
    )
    parser.add_argument(
        "--no-ddp",
        action="store_true",
        help="skip the ddp yardstick (no *_vs_ddp figures): a large preset's ddp round over a slow link takes minutes",
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--inner-steps", type=positive_int, default=None, help="H (default: the preset's)")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--seq-len", type=positive_int, default=None)
    parser.add_argument("--duration", type=positive_int, default=60, help="seconds measured per swarm")
    parser.add_argument(
        "--local-rounds", type=at_least_two, default=4, help="rounds of the no-network run (the first is not timed)"
    )
    parser.add_argument(
        "--checkpoint-every", type=positive_int, default=1, help="K: the run uploads the agreed state every K rounds"
    )
    parser.add_argument("--corpus-mb", type=positive_int, default=2, help="stdlib corpus size")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state dirs)")
    return parser


@dataclass
class SwarmResult:
    rounds: int
    tokens: int
    seconds: float
    sent: list[int]  # per host, in the window
    received: list[int]
    inner_share: Optional[float] = None  # the miners' time in inner steps over their time in rounds
    link_share: Optional[float] = None  # mean over hosts of link_share(): capped links only

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


class Bench:
    def __init__(self, res: Resources, args):
        self.res, self.args = res, args
        self.tmp = res.tempdir()
        self.env = _chain.bench_env(self.tmp, args.miners)
        self.chain_dir = self.tmp / "chain"
        self.corpus = self.tmp / "corpus.txt"
        self.hotkeys: dict[str, str] = {}

    def setup(self) -> None:
        from template.data.corpus import default_corpus

        name, corpus = default_corpus(max_bytes=self.args.corpus_mb * 2**20)
        self.corpus.write_bytes(corpus)
        log(f"corpus {name}: {len(corpus)} bytes")
        self.hotkeys = _chain.create_chain(
            self.chain_dir, self.env, NETUID, self.args.miners, "--tempo", str(TEMPO), "--weights-rate-limit", "10"
        )

    def training_flags(self) -> list[str]:
        a = self.args
        flags = ["--preset", a.preset, "--checkpoint-every", str(a.checkpoint_every)]
        for flag, value in (("--inner-steps", a.inner_steps), ("--batch-size", a.batch_size), ("--seq-len", a.seq_len)):
            if value is not None:
                flags += [flag, str(value)]
        return flags

    def training_config(self, strategy: str) -> dict:
        """The run's TrainingConfig fields for ``strategy`` (as the orchestrator builds them from flags)."""
        from template.config.run import TrainingConfig

        flags = STRATEGIES[strategy]
        fields = {flags[i].lstrip("-").replace("-", "_"): flags[i + 1] for i in range(0, len(flags), 2)}
        a = self.args
        for name in ("inner_steps", "batch_size", "seq_len", "checkpoint_every"):
            if getattr(a, name) is not None:
                fields[name] = getattr(a, name)
        return json.loads(TrainingConfig(preset=a.preset, **fields).model_dump_json())

    # -- communication disabled ------------------------------------------------------------------

    def local(self, strategy: str) -> float:
        """Tokens/s of --miners groups of one, training at the same time (no network)."""
        import torch.distributed as dist
        import train_compare

        a = self.args
        config = self.training_config(strategy)
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        ctx = multiprocessing.get_context("spawn")
        procs, outs = [], []
        for i in range(a.miners):
            out = self.tmp / f"local-{strategy}-{i}"
            out.mkdir()
            outs.append(out)
            job = {
                "name": f"{strategy}-{i}",
                "config": config,
                "rounds": a.local_rounds,
                "corpus": str(self.corpus),
                "shard_kb": 64,
                "pg_timeout_s": 600,
                # as many threads as each miner gets (bench_env), or the baseline is handicapped
                "threads": int(self.env["OMP_NUM_THREADS"]),
            }
            procs.append(
                ctx.Process(target=train_compare._rank_main, args=(0, 1, store.port, str(out), job), daemon=True)
            )
        self.res.workers = procs
        for p in procs:
            p.start()
        deadline = time.monotonic() + 1800
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        self.res.kill_workers()
        del store
        spans = []
        for out in outs:
            if (out / "rank0.err").exists():
                raise RuntimeError(f"{strategy}: a local rank failed:\n{(out / 'rank0.err').read_text()[-3000:]}")
            ends = json.loads((out / "rank0.json").read_text())["round_ends_s"]
            spans.append(ends[-1] - ends[0])
        per_rank = config["inner_steps"] * config["batch_size"] * config["seq_len"]
        # From the end of the first round, as the swarm is measured from its first agreed round: the first
        # round's warm-up (allocations, the first batches' reads) is left out of both.
        return a.miners * (a.local_rounds - 1) * per_rank / max(spans)

    # -- the swarm over capped links -------------------------------------------------------------

    def swarm(self, strategy: str, rate: float) -> SwarmResult:
        from template.net.http import free_port

        a, res = self.args, self.res
        name = f"{strategy}-{rate_name(rate)}"
        work = self.tmp / "runs" / name
        (work / "logs").mkdir(parents=True)
        procs: dict[str, subprocess.Popen] = {}
        with netns.Hosts(a.miners, rate_mbit=rate or None) as hosts:
            host = hosts.bridge_ip
            port, store_port = free_port(host), free_port(host)
            url = f"http://{host}:{port}"

            def spawn(proc: str, argv: list[str], nice: Optional[int] = None) -> None:
                with open(work / "logs" / f"{proc}.log", "wb") as out:
                    procs[proc] = res.spawn(
                        f"{name}/{proc}", argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                        autogroup_nice=nice,
                    )  # fmt: skip

            def alive(what: str) -> None:
                for proc, p in procs.items():
                    if p.poll() is not None:
                        tails = "\n".join(
                            f"--- {f.name}\n{f.read_text(errors='replace')[-2500:]}" for f in (work / "logs").glob("*")
                        )
                        raise RuntimeError(f"{name}: {proc} exited with {p.returncode} while {what}\n{tails}")

            import httpx

            http = httpx.Client(trust_env=False, timeout=10)
            status = lambda: http.get(url + "/v1/status").json()
            try:
                spawn(
                    "orchestrator",
                    [sys.executable, "-m", "orchestrator", *_chain.chain_flags(self.chain_dir, NETUID, "owner")]
                    + ["--state-dir", str(work / "orchestrator"), "--host", host, "--port", str(port)]
                    + ["--tcp-store-host", host, "--tcp-store-port", str(store_port), "--dataset", str(self.corpus)]
                    + ["--shard-size-kb", "64", *self.training_flags(), *STRATEGIES[strategy]]
                    + ["--min-world-size", str(a.miners), "--heartbeat-timeout", "120", "--round-timeout", "1800"]
                    # Fewer than 3 ranks cannot outvote a Byzantine one: a trusted run.
                    + (["--byzantine-fraction", "0"] if a.miners < 3 else []),
                )
                wait_until("the orchestrator", status, 120, check=alive)
                for i in range(a.miners):
                    wallet = f"miner-{i}"
                    spawn(
                        wallet,
                        hosts.command(
                            i,
                            [
                                sys.executable,
                                "neurons/meta_miner.py",
                                *_chain.chain_flags(self.chain_dir, NETUID, wallet),
                            ]
                            + ["--orchestrator-url", url, "--work-dir", str(work / wallet)]
                            + ["--axon.ip", hosts.ip(i), "--axon.port", "8091", "--heartbeat-interval", "2"]
                            + ["--timeout", str(MINER_TIMEOUT_S)],
                        ),
                    )
                vport = free_port("127.0.0.1")
                spawn(
                    "validator",
                    [sys.executable, "neurons/validator.py", *_chain.chain_flags(self.chain_dir, NETUID, "validator-0")]
                    + ["--orchestrator-url", url, "--state-dir", str(work / "validator")]
                    + ["--host", "127.0.0.1", "--port", str(vport), "--weights-interval", "30"],
                    nice=LOWEST_PRIORITY,
                )
                formed = wait_until(
                    f"all {a.miners} miners in one generation",
                    lambda: (s := status())["world_size"] == a.miners and s,
                    600,
                    check=alive,
                )
                # The first round carries the rendezvous and catch-up: start counting after it.
                first = wait_until(
                    "a first agreed round",
                    lambda: (
                        (s := status())["round"] > formed["round"] and s["generation"] == formed["generation"] and s
                    ),
                    900,
                    check=alive,
                )
                training = first["training"]
                start_round, t0 = first["round"], time.time()
                before = [hosts.counters(i) for i in range(a.miners)]
                log(
                    f"{name}: generation {first['generation']} trains; measuring {a.duration} s from round {start_round}"
                )
                sent: list[list[tuple[float, int]]] = [[(time.monotonic(), b[0])] for b in before]
                end = checked = time.monotonic()
                end += a.duration
                while (now := time.monotonic()) < end:
                    if now - checked >= 1:
                        alive("training")
                        checked = now
                    time.sleep(SAMPLE_S)
                    for i in range(a.miners):
                        sent[i].append((time.monotonic(), hosts.counters(i)[0]))
                after = [hosts.counters(i) for i in range(a.miners)]
                t1 = time.time()
                rounds = self.agreed_rounds(url, start_round)
            finally:
                http.close()
                res.stop_group([p for n, p in procs.items() if n != "orchestrator"])
                res.stop_group([p for n, p in procs.items() if n == "orchestrator"])
        count, tokens = _chain.trained(rounds, training, t0, t1)
        result = SwarmResult(
            rounds=count,
            tokens=tokens,
            seconds=t1 - t0,
            sent=[b[0] - a_[0] for a_, b in zip(before, after)],
            received=[b[1] - a_[1] for a_, b in zip(before, after)],
        )
        shares = [s for s in (link_share(host, rate) for host in sent) if s is not None] if rate else []
        result.link_share = sum(shares) / len(shares) if shares else None
        result.inner_share = inner_share(
            [work / f"miner-{i}" / "miner" / "stdout.log" for i in range(a.miners)], start_round
        )
        log(f"{name}: {count} rounds, {result.tokens_per_s:.0f} tokens/s, sent per host {result.sent}")
        if not count:
            raise RuntimeError(f"{name}: no round agreed in {a.duration} s (raise --duration)")
        return result

    def agreed_rounds(self, url: str, since: int) -> list:
        from template.net.orchestrator_client import OrchestratorClient

        out = []
        wallet = _chain.wallet(self.chain_dir, "validator-0")
        with OrchestratorClient(url, wallet, self.hotkeys["owner"], retry_s=0) as client:
            while True:
                page = client.rounds(since=since, limit=ROUNDS_PAGE)
                out += page
                if len(page) < ROUNDS_PAGE:
                    return out
                since = page[-1].round + 1


def inner_share(logs: list[Path], since: int) -> Optional[float]:
    """The share of the miners' round time spent in inner steps, from round ``since`` on (each miner logs
    ``round R: inner steps X s of Y s``); None where no miner logged one (ddp has no inner phase)."""
    inner = total = 0.0
    for path in logs:
        for m in re.finditer(r"round (\d+): inner steps ([\d.]+) s of ([\d.]+) s", path.read_text(errors="replace")):
            if int(m[1]) >= since:
                inner, total = inner + float(m[2]), total + float(m[3])
    return inner / total if inner else None


def link_share(samples: list[tuple[float, int]], rate_mbit: float) -> Optional[float]:
    """How fast a host's link carried what it sent, as a share of the link's rate, from (time, bytes sent)
    samples: the byte-weighted mean of the send rate over the sampling intervals. Each byte counts at the
    rate of the interval it crossed in, so the idle stretches between exchanges and the protocol's small
    messages weigh next to nothing: the issue's "while the exchange runs". None where nothing was sent."""
    weighted = total = 0.0
    for (t0, b0), (t1, b1) in zip(samples, samples[1:]):
        sent, dt = b1 - b0, t1 - t0
        if sent > 0 and dt > 0:
            weighted += sent * sent / dt
            total += sent
    return weighted / total * 8 / (rate_mbit * 1e6) if total else None


def report(local: dict[str, float], runs: dict[tuple[str, float], SwarmResult], args) -> None:
    for strategy in args.strategies:
        figure(f"{strategy}_local_tokens_per_s", local[strategy], "tok/s")
    for rate in args.rates:
        ddp = runs.get(("ddp", rate))
        for strategy in args.strategies:
            run, key = runs[(strategy, rate)], f"{strategy}_{rate_name(rate)}"
            n = len(run.sent)
            figure(f"{key}_tokens_per_s", run.tokens_per_s, "tok/s")
            figure(f"{key}_utilization", run.tokens_per_s / local[strategy], "x")
            figure(f"{key}_rounds", run.rounds, "count")
            figure(f"{key}_round_s", run.seconds / run.rounds, "s")
            if run.inner_share is not None:
                figure(f"{key}_inner_share", run.inner_share, "x")
            if run.link_share is not None:
                figure(f"{key}_link_share", run.link_share, "x")
            figure(f"{key}_wire_out_per_host_round", sum(run.sent) / n / run.rounds, "B")
            figure(f"{key}_wire_out_max_host_round", max(run.sent) / run.rounds, "B")
            figure(f"{key}_wire_in_per_host_round", sum(run.received) / n / run.rounds, "B")
            per_token = sum(run.sent) / run.tokens
            figure(f"{key}_wire_bytes_per_token", per_token, "B/tok")
            if ddp is not None:
                figure(f"{key}_wire_per_token_vs_ddp", sum(ddp.sent) / ddp.tokens / per_token, "x")


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.miners < 2:
        parser.error("--miners must be at least 2")
    if not args.no_ddp:
        args.strategies = list(dict.fromkeys(["ddp", *args.strategies]))  # the yardstick
    why = netns.unavailable() or (None if _has_tc() else "tc (iproute2) is not installed")
    if why:
        print(f"wan.py: skipped: {why}", file=sys.stderr)
        return 0
    res = Resources(keep=args.keep, log=log, prefix="tensorswarm-wan-")

    def body() -> int:
        bench = Bench(res, args)
        bench.setup()
        local = {}
        for strategy in args.strategies:
            local[strategy] = bench.local(strategy)
            log(f"{strategy}: {local[strategy]:.0f} tokens/s with communication disabled")
        runs = {(s, r): bench.swarm(s, r) for r in args.rates for s in args.strategies}
        report(local, runs, args)
        return 0

    return run_guarded(res, body, log=log)


def _has_tc() -> bool:
    import shutil

    return shutil.which("tc") is not None


if __name__ == "__main__":
    raise SystemExit(main())
