#!/usr/bin/env python
"""Byzantine miners in the real swarm: can colluders who send validly signed, poisoned contributions
steer the model, or earn weight without useful work?

    python scripts/bench/byzantine.py [--attacks alie,ipm,signflip,noise,f32max,split] [--rounds 30 | --seconds S] \\
        [--honest 4] [--attackers 2] [--inner-steps 10] [--baseline swarm|replay] [--smoke] [--keep]

One fresh embedded chain (``python -m utils.localnet init``: the honest and the attacking miners'
wallets and one staked validator), then one swarm after the other on it, each a fresh orchestrator
(tiny preset, the Python standard library as corpus), fresh meta-miners and a fresh validator, as real
processes: first an honest-only run (``--honest`` miners), then one run per attack (the same honest
miners plus ``--attackers`` colluders). The colluders run ``tests/adversaries/poisoning_miner.py`` (the
production miner with a test-only strategy whose contributions are poisoned in the exchange and
served unchanged to validators; it trains honestly and reports its honest losses), coordinating through
a directory of the run; for ``split`` they run ``tests/adversaries/split_miner.py`` instead (honest
work, but the block it sends every peer except rank 0 has a byte flipped, so few members hold it). Every run lasts ``--rounds`` agreed rounds (or ``--seconds`` after the
group formed). The same hotkeys train the same batches in every run, so the honest miners' work is
identical across runs and only the attack differs.

Figures, per run (``baseline`` for the honest-only one, else the attack's name), one per line as
``name value unit`` on stdout (progress on stderr):

- ``<run>_final_loss`` (nats): the held-out loss of the run's state after R agreed rounds (its
  checkpoint, fetched from the orchestrator), evaluated here on ``--eval-windows`` held-out windows of
  the run's dataset drawn with a seed of this benchmark (:mod:`tests.adversaries.measure`);
  ``init_heldout_loss`` is the same for the seed state;
- ``<attack>_loss_vs_baseline`` (x): that loss over the baseline's;
- ``<attack>_attacker<i>_weight_vs_honest`` (x): attacker i's weight at the validator (its weights on
  ``/v1/status`` from the first weight-setting after it audited round R−1) over the honest miners' mean
  weight; ``<attack>_attacker_weight_vs_honest_max`` the largest of them (nan: the validator set no
  weights within its wait; inf: the honest miners got none);
- ``<run>_honest_min_weight_vs_mean`` (x): the least-paid honest miner over the honest mean;
- ``<run>_honest_diverged`` (count): honest miners whose miner exited DIVERGED (``miner exited: 5`` in
  its meta-miner's log) at least once;
- ``<run>_honest_reported`` / ``<attack>_attackers_reported`` (count): misbehaviour reports held against
  the honest miners / the attackers (orchestrator ``/v1/status``, member ``reports``) when the run stopped;
- ``<run>_rounds`` (count) and ``<run>_wall_s`` (s, from the first process started to round R);
- ``baseline_replay_matches`` (bool, with a real baseline and ``--rounds``): 1 if replaying the honest
  hotkeys in this process (below) reaches the baseline swarm's very state (same bytes), else 0.

``--baseline replay`` replaces the honest-only swarm by a replay of the same honest hotkeys in this
process (:func:`tests.adversaries.measure.replay`: production trainer, screening and aggregation, the
exchange in memory, torch's default thread count as in the miners), which computes what an honest-only
swarm without membership changes computes in R rounds — bit for bit on the same machine, which
``baseline_replay_matches`` checks; the baseline then has only its loss, rounds and wall time to print.
``--smoke`` is a toy size for the smoke test. Every process and the temporary directory are removed on
exit, Ctrl-C and SIGTERM included (``--keep`` keeps the directory: logs, states).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import _chain  # noqa: E402  (scripts/bench/_chain.py: the scripts' own directory)

from template.config.cli import positive_int  # noqa: E402
from utils.procs import Resources, log, run_guarded, wait_until  # noqa: E402

HOST = "127.0.0.1"
AXON_IP = "127.0.0.2"  # the chain refuses 127.0.0.1 as an axon address; validators connect to it
NETUID = 1
POISONER = REPO / "tests" / "adversaries" / "poisoning_miner.py"
POISONS = ("alie", "ipm", "signflip", "noise", "f32max")  # tests/adversaries/poisoning_miner.py
VALIDATOR_AUTOGROUP_NICE = -10
SPLIT = REPO / "tests" / "adversaries" / "split_miner.py"  # "split": garbage to every peer but rank 0
KINDS = (*POISONS, "split")
DEFAULTS = {"rounds": 30, "honest": 4, "attackers": 2, "inner_steps": 10, "eval_windows": 256, "corpus_mb": 2}
DEFAULTS["weights_interval"] = 5.0
SMOKE = {**DEFAULTS, "rounds": 3, "honest": 3, "attackers": 1, "inner_steps": 4, "eval_windows": 32, "corpus_mb": 1}
SMOKE["weights_interval"] = 1.0


def attack_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in KINDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown attacks {bad}; choose from {', '.join(KINDS)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = _chain.parser("byzantine.py", __doc__)
    parser.add_argument(
        "--attacks", type=attack_list, default=None, help=f"comma-separated, from {', '.join(KINDS)} (default all)"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--rounds", type=positive_int, default=None, help="agreed rounds per run (default 30)")
    length.add_argument("--seconds", type=positive_int, default=None, help="seconds per run once the group formed")
    parser.add_argument("--honest", type=positive_int, default=None, help="honest miners (default 4)")
    parser.add_argument(
        "--attackers", type=positive_int, default=None, help="colluding attackers per attack run (default 2)"
    )
    parser.add_argument("--inner-steps", type=positive_int, default=None, help="H (default 10)")
    parser.add_argument("--eval-windows", type=positive_int, default=None, help="held-out windows (default 256)")
    parser.add_argument("--corpus-mb", type=positive_int, default=None, help="stdlib corpus size (default 2)")
    parser.add_argument("--weights-interval", type=float, default=None, help="validator's, seconds (default 5)")
    parser.add_argument(
        "--baseline",
        choices=["swarm", "replay"],
        default="swarm",
        help="honest-only run: a real swarm (default), or replayed in this process",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="toy size: 3 honest + 1 attacker, 3 rounds, H=4, signflip only, 32 windows (flags given win)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, states)")
    return parser


def resolve(args) -> argparse.Namespace:
    """Fill what the user left out: --smoke's sizes, else the defaults."""
    defaults = DEFAULTS
    if args.smoke:
        defaults = SMOKE
        args.attacks = args.attacks or ["signflip"]
    args.attacks = args.attacks or list(KINDS)
    for name, value in defaults.items():
        if getattr(args, name) is None and not (name == "rounds" and args.seconds):
            setattr(args, name, value)
    return args


@dataclass
class Run:
    name: str  # "baseline" or the attack
    rounds: int = 0
    final_loss: float = math.nan
    wall_s: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)  # hotkey -> weight at the validator
    reports: dict[str, int] = field(default_factory=dict)  # hotkey -> misbehaviour reports against it
    diverged: set[str] = field(default_factory=set)  # hotkeys whose miner exited DIVERGED
    replayed: bool = False
    state: bytes = b""  # round R's agreed state


class Bench:
    """The chain and wallets shared by every run, and how to run one swarm on them."""

    def __init__(self, res: Resources, args):
        self.res, self.args = res, args
        self.tmp = res.tempdir()
        self.env = _chain.bench_env(self.tmp, args.honest + args.attackers + 1)  # the miners and the validator
        self.chain_dir = self.tmp / "chain"
        self.endpoint = f"sim://{self.chain_dir}"
        self.honest = [f"miner-{i}" for i in range(args.honest)]
        self.attackers = [f"miner-{args.honest + i}" for i in range(args.attackers)]
        self.hotkeys: dict[str, str] = {}  # wallet name -> hotkey
        self.corpus = self.tmp / "corpus.txt"
        self.cfg = None  # the run's TrainingConfig, from the first orchestrator
        self.dataset = None  # (manifest, read)

    # -- once --------------------------------------------------------------------------------------

    def setup(self) -> None:
        from template.data.corpus import default_corpus

        name, corpus = default_corpus(max_bytes=self.args.corpus_mb * 2**20)
        self.corpus.write_bytes(corpus)
        log(f"corpus {name}: {len(corpus)} bytes")
        self.hotkeys = _chain.create_chain(
            self.chain_dir, self.env, NETUID, len(self.honest) + len(self.attackers), "--weights-rate-limit", "2"
        )

    def wallet(self, name: str):
        return _chain.wallet(self.chain_dir, name)

    def chain_flags(self, wallet: str) -> list[str]:
        return _chain.chain_flags(self.chain_dir, NETUID, wallet)

    # -- one run -------------------------------------------------------------------------------------

    def run(self, name: str, kind: Optional[str]) -> Run:
        """One swarm: ``kind`` None is the honest-only run, else the honest miners plus the attackers
        running ``kind``. Returns its figures; every process it started is stopped."""
        import httpx

        from template.net.http import free_port
        from template.net.orchestrator_client import OrchestratorClient

        args, res = self.args, self.res
        work = self.tmp / "runs" / name
        (work / "logs").mkdir(parents=True)
        names = self.honest + (self.attackers if kind else [])
        procs: dict[str, subprocess.Popen] = {}
        logs: dict[str, Path] = {}
        t0 = time.monotonic()

        def spawn(proc_name: str, argv: list[str], env=None) -> None:
            logs[proc_name] = work / "logs" / f"{proc_name}.log"
            with open(logs[proc_name], "wb") as out:
                procs[proc_name] = res.spawn(
                    f"{name}/{proc_name}",
                    [sys.executable, *argv],
                    cwd=REPO,
                    env=env or self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # A validator has its own host in a deployment; here it shares the cores with every
                    # training session, so it gets a higher priority where that is allowed (root).
                    autogroup_nice=VALIDATOR_AUTOGROUP_NICE if argv[0].endswith("validator.py") else None,
                )

        def tails() -> str:
            return "\n".join(f"--- {p}\n" + p.read_text(errors="replace")[-2500:] for p in logs.values() if p.exists())

        def alive(what: str) -> None:
            for proc_name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name}: {proc_name} exited with {proc.returncode} while waiting for {what}\n{tails()}"
                    )

        def wait(what: str, predicate, timeout: float, poll: float = 0.5):
            try:
                return wait_until(what, predicate, timeout, poll=poll, check=alive)
            except TimeoutError as error:
                raise RuntimeError(f"{name}: {error}\n{tails()}") from None

        http = httpx.Client(trust_env=False, timeout=5)
        port, vport = free_port(HOST), free_port(HOST)
        url, vurl = f"http://{HOST}:{port}", f"http://{HOST}:{vport}"
        try:
            spawn(
                "orchestrator",
                [
                    "-m",
                    "orchestrator",
                    *self.chain_flags("owner"),
                    "--state-dir",
                    str(work / "orchestrator"),
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--tcp-store-host",
                    HOST,
                    "--tcp-store-port",
                    "0",
                    "--dataset",
                    str(self.corpus),
                    "--shard-size-kb",
                    "64",
                    "--preset",
                    "tiny",
                    "--inner-steps",
                    str(args.inner_steps),
                    "--min-world-size",
                    str(len(names)),
                    "--heartbeat-timeout",
                    "30",
                    "--keep-checkpoints",
                    "100000",
                ],
            )
            status = lambda: http.get(url + "/v1/status").json()
            wait("the orchestrator", status, 120)
            for wallet in names:
                env, extra = None, []
                if wallet in self.attackers and kind == "split":
                    extra = ["--miner-script", str(SPLIT)]
                elif wallet in self.attackers:
                    env = {**self.env, "TENSORSWARM_POISON": kind, "TENSORSWARM_POISON_DIR": str(work / "poison")}
                    env["TENSORSWARM_POISON_COLLUDERS"] = str(len(self.attackers))
                    extra = ["--miner-script", str(POISONER)]
                spawn(
                    wallet,
                    [
                        "neurons/meta_miner.py",
                        *self.chain_flags(wallet),
                        "--orchestrator-url",
                        url,
                        "--work-dir",
                        str(work / wallet),
                        "--axon.ip",
                        AXON_IP,
                        "--axon.port",
                        str(free_port(AXON_IP)),
                        "--heartbeat-interval",
                        "1",
                        "--timeout",
                        "60",
                        *extra,
                    ],
                    env,
                )
            spawn(
                "validator",
                [
                    "neurons/validator.py",
                    *self.chain_flags("validator-0"),
                    "--orchestrator-url",
                    url,
                    "--state-dir",
                    str(work / "validator"),
                    "--host",
                    HOST,
                    "--port",
                    str(vport),
                    "--weights-interval",
                    str(args.weights_interval),
                    "--sample-size",
                    str(len(names)),
                ],
            )
            formed = wait(
                f"all {len(names)} miners in one generation",
                lambda: (s := status())["world_size"] == len(names) and s,
                300,
            )
            log(
                f"{name}: {len(names)} miners formed generation {formed['generation']} after {time.monotonic() - t0:.0f} s"
            )
            if args.seconds:
                deadline = time.monotonic() + args.seconds
                wait(f"{args.seconds} s of training", lambda: time.monotonic() >= deadline, args.seconds + 10)
                rounds = status()["round"]
                if rounds < 1:
                    raise RuntimeError(f"{name}: no round agreed in {args.seconds} s\n{tails()}")
            else:
                rounds = args.rounds
                wait(f"{rounds} agreed rounds", lambda: status()["round"] >= rounds, 120 + 30 * rounds, poll=0.2)
            wall = time.monotonic() - t0
            orch = OrchestratorClient(url, self.wallet("validator-0"), self.hotkeys["owner"])
            try:
                record = next(r for r in orch.rounds(since=rounds - 1, limit=1) if r.round == rounds - 1)
                state = wait("round R's checkpoint", lambda: orch.checkpoint(record.state), 60)
                if self.cfg is None:
                    from template.config.run import TrainingConfig
                    from template.data.store import ShardCache, shard_reader

                    info = orch.run()
                    self.cfg = TrainingConfig(**info.training.model_dump())
                    cache = ShardCache(self.tmp / "shards", orch.shard)
                    for shard in info.dataset.shards:  # fetched now: the orchestrator is about to stop
                        cache.get(shard.sha256)
                    self.dataset = (info.dataset, shard_reader(info.dataset, cache.get))
            finally:
                orch.close()
            log(f"{name}: round {rounds} agreed after {wall:.0f} s, loss history {status()['loss_history'][-3:]}")

            # The weights that follow the audit of round R−1: the first set after the validator reached it.
            # A validator that gets there too slowly leaves this run without weights (printed as nan).
            vstatus = lambda: http.get(vurl + "/v1/status").json()
            final = None
            try:
                reached = wait_until(
                    "the validator's audit of round R-1",
                    lambda: (v := vstatus())["last_round"] >= rounds - 1 and v,
                    180,
                    check=alive,
                )
                final = wait_until(
                    "the validator's next weights",
                    lambda: (
                        (v := vstatus())["last_weights_block"] != reached["last_weights_block"] and v["weights"] and v
                    ),
                    4 * args.weights_interval + 60,
                    check=alive,
                )
            except TimeoutError as error:
                log(f"{name}: {error}; no weights for this run (see {logs['validator']})")
            members = status()["members"]
            uids = {m["hotkey"]: m["uid"] for m in members}
            result = Run(name, rounds=rounds, wall_s=wall)
            for wallet in names:
                hotkey = self.hotkeys[wallet]
                if final is not None:
                    result.weights[hotkey] = float(final["weights"].get(str(uids.get(hotkey)), 0.0))
                result.reports[hotkey] = next((m["reports"] for m in members if m["hotkey"] == hotkey), 0)
        finally:
            http.close()
            res.stop_group([procs[n] for n in ("validator",) if n in procs])
            res.stop_group([p for n, p in procs.items() if n.startswith("miner-")])
            res.stop_group([procs[n] for n in ("orchestrator",) if n in procs])
        for wallet in names:
            if "miner exited: 5" in logs[wallet].read_text(errors="replace"):
                result.diverged.add(self.hotkeys[wallet])
        result.state, result.final_loss = state, self.heldout_loss(state)
        log(f"{name}: held-out loss {result.final_loss:.4f} at round {rounds}")
        return result

    def replay_honest(self, rounds: int) -> Run:
        import torch

        from tests.adversaries.measure import replay

        t0 = time.monotonic()
        # The miners' thread count (OMP_NUM_THREADS in their environment): float results depend on it.
        torch.set_num_threads(int(self.env["OMP_NUM_THREADS"]))
        state, _dropped = replay(self.cfg, *self.dataset, [self.hotkeys[w] for w in self.honest], rounds)
        run = Run("baseline", rounds=rounds, wall_s=time.monotonic() - t0, replayed=True, state=state)
        run.final_loss = self.heldout_loss(state)
        log(f"baseline (replayed): held-out loss {run.final_loss:.4f} at round {rounds}")
        return run

    def heldout_loss(self, state: Optional[bytes]) -> float:
        from tests.adversaries.measure import heldout_loss

        return heldout_loss(self.cfg, state, *self.dataset, count=self.args.eval_windows)


# -- report -----------------------------------------------------------------------------------------


def figure(name: str, value, unit: str) -> None:
    text = str(value) if isinstance(value, int) else (f"{value:.4f}" if unit == "nats" else f"{value:.4g}")
    print(f"{name} {text} {unit}", flush=True)


def report(bench: Bench, init_loss: float, baseline: Run, attacks: list[Run], replay_matches: Optional[bool]) -> None:
    honest_keys = [bench.hotkeys[w] for w in bench.honest]
    figure("init_heldout_loss", init_loss, "nats")
    if replay_matches is not None:
        figure("baseline_replay_matches", int(replay_matches), "bool")
    for run in [baseline, *attacks]:
        p, attacked = run.name, run is not baseline
        figure(f"{p}_final_loss", run.final_loss, "nats")
        figure(f"{p}_rounds", run.rounds, "count")
        figure(f"{p}_wall_s", run.wall_s, "s")
        if attacked:
            figure(f"{p}_loss_vs_baseline", run.final_loss / baseline.final_loss, "x")
        if run.replayed:
            continue
        weights = run.weights
        mean = sum(weights.get(h, 0.0) for h in honest_keys) / len(honest_keys)

        def share(hotkey: str, mean: float = mean, weights: dict = weights) -> float:
            if not weights:
                return math.nan  # the validator set no weights in time
            return weights[hotkey] / mean if mean > 0 else math.inf  # no honest weight at all

        if attacked:
            shares = [share(bench.hotkeys[w]) for w in bench.attackers]
            for i, s in enumerate(shares):
                figure(f"{p}_attacker{i}_weight_vs_honest", s, "x")
            figure(f"{p}_attacker_weight_vs_honest_max", max(shares), "x")
        figure(f"{p}_honest_min_weight_vs_mean", min(share(h) for h in honest_keys), "x")
        figure(f"{p}_honest_diverged", sum(h in run.diverged for h in honest_keys), "count")
        figure(f"{p}_honest_reported", sum(run.reports[h] for h in honest_keys), "count")
        if attacked:
            figure(f"{p}_attackers_reported", sum(run.reports[bench.hotkeys[w]] for w in bench.attackers), "count")


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = resolve(parser.parse_args(argv))
    if args.seconds and args.baseline == "replay":
        parser.error("--baseline replay needs --rounds: the replay must match the attack runs' round count")
    res = Resources(keep=args.keep)

    def body() -> int:
        bench = Bench(res, args)
        bench.setup()
        baseline = bench.run("baseline", None) if args.baseline == "swarm" else None
        matches = None
        if baseline is not None and not args.seconds:
            # What --baseline replay and the acceptance test stand on.
            matches = bench.replay_honest(baseline.rounds).state == baseline.state
            log(f"the in-process replay {'reaches' if matches else 'does NOT reach'} the baseline swarm's state")
        attacks = [bench.run(kind, kind) for kind in args.attacks]
        if baseline is None:
            baseline = bench.replay_honest(attacks[0].rounds)
        report(bench, bench.heldout_loss(None), baseline, attacks, matches)
        return 0

    return run_guarded(res, body)


if __name__ == "__main__":
    raise SystemExit(main())
