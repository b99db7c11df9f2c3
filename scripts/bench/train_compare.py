#!/usr/bin/env python
"""ddp vs diloco (with and without compression) at the same token budget, and time to recover
after a kill -9 in the real swarm.

    python scripts/bench/train_compare.py [--world-size 3] [--tokens N] [--preset tiny] \\
        [--seq-len 64] [--batch-size 8] [--inner-steps 10] [--skip-recovery]

What it does, all on 127.0.0.1 and inside one temporary directory:

1. Training comparison. For each strategy (``ddp``, ``diloco`` with compression ``none``,
   ``diloco+int8``, ``diloco+topk_int8``; ``--strategies`` picks, ``fsdp`` and ``diloco+sparseloco``
   (1.5 % per 4096-value chunk, 2-bit values, with the run's sparseloco defaults: centered clip, outer lr
   2.5 without momentum, error feedback decayed by 0.95 a round, ``template.config.run.SPARSE_DEFAULTS``)
   are also available) it
   spawns ``--world-size`` fresh processes that join a fresh gloo process group through a TCPStore
   hosted by this process (as the orchestrator hosts it) and run :class:`template.engine.trainer.Trainer`
   for the same number of rounds, so every rank processes the same number of tokens,
   rounds x H x batch x seq_len (``--tokens`` is rounded up to whole rounds). Every strategy uses
   the same seed, the same initial model and the same data: rank r's batch at (round, step) comes
   from :func:`template.data.batch_offsets` with rank r's hotkey, over the Python standard library
   corpus (:func:`template.data.default_corpus`, cut into shards by ``build_dataset``). Everything
   else is the run defaults of :class:`template.config.run.TrainingConfig` (inner AdamW lr 3e-3,
   outer Nesterov lr 0.8 / momentum 0.5, trimmed-mean aggregation, top-k fraction 0.1); note that
   trimmed_mean drops one value at each end from 3 ranks up, so at 3 ranks it is a per-coordinate
   median (``--aggregator mean`` shows what that robustness costs).

   Measured per strategy:
     * final loss: mean next-byte cross-entropy (nats) of the final *global* state (the canonical
       state bytes every rank agreed on) on ``--eval-windows`` windows from the held-out shards
       (:func:`template.data.heldout_offsets`), evaluated in this process, identically for every
       strategy; ``init_heldout_loss`` is the same evaluation of the initial state;
     * bytes per rank: the sum over rounds of ``RoundResult.bytes_sent`` (bytes the rank fed into
       collectives, as the Trainer counts them), averaged over ranks;
     * wall time: from a barrier after the group is up to the end of the last round (slowest rank);
       process start-up and imports are left out, they are the same for every strategy.
   The ranks must agree on every round's state hash; a disagreement fails the run.

2. Recovery (unless ``--skip-recovery``). For each of ``--recovery-strategies`` (default diloco and
   ddp): a fresh embedded chain (``python -m utils.localnet init``), the orchestrator
   (``--strategy S --min-world-size N``) and N meta-miners (``neurons/meta_miner.py``, each
   spawning ``neurons/miner.py``) as real processes, as in tests/integration/test_swarm_e2e.py. After
   ``--warm-rounds`` agreed rounds, miner-1's miner process (not its meta-miner) gets SIGKILL;
   ``/v1/status`` is polled every 0.1 s. ``S_regroup_after_kill9_s`` is the time until a new
   generation has formed, ``S_recover_after_kill9_s`` the time until a generation of the full world
   size has had a round agreed. ``recover_after_kill9_s`` repeats the diloco figure (or the first
   strategy measured). Recovery is dominated by the membership machinery (restart of the miner,
   process start, re-forming the generation, catch-up), which all strategies share.

stdout carries one figure per line, ``name value unit``, then one table; anything else goes to
stderr. Every process and the temporary directory are removed on exit, Ctrl-C and SIGTERM included
(``--keep`` keeps the directory).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from template.config.cli import positive_int  # noqa: E402
from utils.procs import Resources, is_waiting_spare, log, run_guarded, shared_cpu_env, wait_until  # noqa: E402

HOST = "127.0.0.1"  # the only address this script talks to
NETUID = 1
KEY_URI = "//tensorswarm-bench-{rank}"


@dataclass(frozen=True)
class Variant:
    key: str  # figure prefix
    label: str  # table row
    config: dict


VARIANTS = {
    v.key: v
    for v in (
        Variant("ddp", "ddp", {"strategy": "ddp"}),
        Variant("diloco", "diloco", {"strategy": "diloco", "compression": "none"}),
        Variant("diloco_int8", "diloco+int8", {"strategy": "diloco", "compression": "int8"}),
        Variant("diloco_topk_int8", "diloco+topk_int8", {"strategy": "diloco", "compression": "topk_int8"}),
        Variant(
            "diloco_sparseloco",
            "diloco+sparseloco",
            {"strategy": "diloco", "compression": "sparseloco", "topk_fraction": 0.015},
        ),
        Variant(
            "diloco_int8_delayed",
            "diloco+int8 delayed",
            {"strategy": "diloco", "compression": "int8", "overlap": "delayed"},
        ),
        Variant(
            "diloco_sparseloco_delayed",
            "diloco+sparseloco delayed",
            {"strategy": "diloco", "compression": "sparseloco", "topk_fraction": 0.015, "overlap": "delayed"},
        ),
        Variant("fsdp", "fsdp", {"strategy": "fsdp"}),
    )
}
DEFAULT_STRATEGIES = "ddp,diloco,diloco_int8,diloco_topk_int8"
ALIASES = {
    "diloco+int8": "diloco_int8",
    "diloco+topk_int8": "diloco_topk_int8",
    "diloco+sparseloco": "diloco_sparseloco",
}


def strategy_list(text: str) -> list[str]:
    names = [ALIASES.get(s.strip(), s.strip()) for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in VARIANTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown strategies {bad}; choose from {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def recovery_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in ("diloco", "ddp", "fsdp")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown strategies {bad}; choose from diloco, ddp, fsdp")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world-size", type=positive_int, default=3, help="ranks per process group / miners")
    parser.add_argument(
        "--tokens",
        type=positive_int,
        default=102_400,
        help="tokens per rank (rounded up to whole rounds of H x batch x seq_len)",
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=positive_int, default=64)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--inner-steps", type=positive_int, default=10, help="H")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--aggregator",
        choices=["trimmed_mean", "mean", "centered_clip"],
        default=None,
        help="diloco's robust aggregator (default: the run's, trimmed_mean, a per-coordinate median at 3 ranks; "
        "centered_clip with sparseloco)",
    )
    parser.add_argument(
        "--outer-lr", type=float, default=None, help="every diloco variant's outer lr (default: its own)"
    )
    parser.add_argument(
        "--outer-momentum", type=float, default=None, help="every diloco variant's outer momentum (default: its own)"
    )
    parser.add_argument(
        "--inner-lr", type=float, default=None, help="every diloco variant's inner AdamW lr (default: the run's)"
    )
    parser.add_argument("--ddp-lr", type=float, default=None, help="ddp's AdamW lr (default: the run's)")
    parser.add_argument(
        "--feedback-decay", type=float, default=None, help="every diloco variant's error feedback decay (default: 1)"
    )
    parser.add_argument(
        "--topk-fraction", type=float, default=None, help="the top-k variants' kept fraction (default: their own)"
    )
    parser.add_argument(
        "--strategies",
        type=strategy_list,
        default=strategy_list(DEFAULT_STRATEGIES),
        help=f"comma-separated, from {', '.join(VARIANTS)} (default {DEFAULT_STRATEGIES}); "
        "ratios are to ddp, which is always run",
    )
    parser.add_argument("--eval-windows", type=positive_int, default=512, help="held-out windows for the final loss")
    parser.add_argument("--corpus-mb", type=positive_int, default=4, help="stdlib corpus size")
    parser.add_argument("--shard-kb", type=positive_int, default=256, help="shard size (the last ~5%% are held out)")
    parser.add_argument("--skip-recovery", action="store_true", help="skip the kill -9 measurement")
    parser.add_argument(
        "--recovery-strategies",
        type=recovery_list,
        default=recovery_list("diloco,ddp"),
        help="orchestrator --strategy values to measure recovery for (default diloco,ddp)",
    )
    parser.add_argument("--warm-rounds", type=positive_int, default=3, help="agreed rounds before the kill")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state)")
    return parser


# --------------------------------------------------------------------------- #
# Processes and cleanup
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# Data and evaluation
# --------------------------------------------------------------------------- #


def write_corpus(path: Path, megabytes: int) -> Path:
    from template.data.corpus import default_corpus

    name, corpus = default_corpus(max_bytes=megabytes * 2**20)
    path.write_bytes(corpus)
    log(f"corpus {name}: {len(corpus)} bytes -> {path.name}")
    return path


def dataset(corpus_path: str, shard_kb: int):
    """(manifest, index -> shard bytes): a pure function of the corpus file."""
    from template.data.corpus import build_dataset

    manifest, shards = build_dataset("bench-corpus", Path(corpus_path).read_bytes(), shard_size=shard_kb * 1024)
    return manifest, (lambda index: shards[manifest.shards[index].sha256])


def heldout_windows(corpus_path: str, shard_kb: int, seed: int, count: int, seq_len: int):
    from template.data.sampling import heldout_offsets, windows_to_tensor

    manifest, read = dataset(corpus_path, shard_kb)
    offsets = heldout_offsets(manifest, seed=seed, round=0, count=count, seq_len=seq_len)
    return windows_to_tensor(read, offsets, seq_len)


def evaluate(state: Optional[bytes], preset: str, seed: int, windows) -> float:
    """Mean next-byte cross-entropy (nats) of the global state ``state`` (None: the initial model)
    on ``windows``; the parameters come from the canonical state bytes, nothing else."""
    import torch

    from template.config.presets import get as get_preset
    from template.engine import checkpoint
    from template.engine.model import init_model

    model = init_model(get_preset(preset), seed)
    if state is not None:
        tensors, _meta = checkpoint.loads(state, require_finite=True)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(tensors[f"param/{name}"])
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows.split(64):
            _, loss = model(chunk[:, :-1], chunk[:, 1:])
            total += float(loss) * chunk.shape[0]
            count += chunk.shape[0]
    return total / count


# --------------------------------------------------------------------------- #
# Training comparison: one fresh process group per strategy
# --------------------------------------------------------------------------- #


def _rank_main(rank: int, world_size: int, port: int, out: str, job: dict) -> None:
    """One rank (runs in a spawned process). Writes rank{r}.json (and rank 0 the final state) or
    rank{r}.err, waits for every rank to finish its collectives, then leaves without a teardown."""
    import torch
    import torch.distributed as dist

    # The ranks share the machine's cores; a caller comparing against processes with more threads says so.
    torch.set_num_threads(job.get("threads", 1))
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=60))
    failed = False
    try:
        dist.init_process_group(
            "gloo",
            store=dist.PrefixStore(f"{job['name']}/", store),
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=job["pg_timeout_s"]),
        )
        from bittensor.sp_core import Keypair

        from template.config.run import TrainingConfig
        from template.data.sampling import batch_offsets, windows_to_tensor
        from template.engine.trainer import Trainer

        keys = [Keypair.create_from_uri(KEY_URI.format(rank=r)) for r in range(world_size)]
        cfg = TrainingConfig(**job["config"])
        trainer = Trainer(
            cfg,
            rank=rank,
            world_size=world_size,
            peers=[k.ss58_address for k in keys],
            sign=keys[rank].sign,
            context=f"bench/{job['name']}",
        )
        trainer.load(None)
        manifest, read = dataset(job["corpus"], job["shard_kb"])
        hotkey = keys[rank].ss58_address
        report = {"losses": [], "hashes": [], "bytes_sent": 0, "dropped": 0}
        dist.barrier()
        start = time.perf_counter()
        for r in range(job["rounds"]):

            def batch(step: int, r=r) -> torch.Tensor:
                offsets = batch_offsets(
                    manifest,
                    seed=cfg.seed,
                    round=r,
                    hotkey=hotkey,
                    step=step,
                    batch_size=cfg.batch_size,
                    seq_len=cfg.seq_len,
                )
                return windows_to_tensor(read, offsets, cfg.seq_len)

            result = trainer.run_round(r, batch)
            report["losses"].append(sum(result.losses) / len(result.losses))
            report["hashes"].append(result.state_hash)
            report["bytes_sent"] += result.bytes_sent
            report["dropped"] += len(result.dropped)
            report.setdefault("round_ends_s", []).append(time.perf_counter() - start)
        report["wall_s"] = time.perf_counter() - start
        state = trainer.state_bytes()  # every rank calls it (fsdp gathers the shards)
        if rank == 0:
            Path(out, "state.bin").write_bytes(state)
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    except BaseException:
        failed = True
        Path(out, f"rank{rank}.err").write_text(traceback.format_exc())
    # Leave only once every rank is past its last collective, then skip the teardown: destroying
    # a gloo group whose peers have exited can abort the process (as in tests/integration/test_training.py).
    if not failed:
        try:
            store.add("done", 1)
            deadline = time.monotonic() + 60
            while store.add("done", 0) < world_size and time.monotonic() < deadline:
                time.sleep(0.01)
        except Exception:
            pass
    os._exit(0)


@dataclass
class TrainResult:
    variant: Variant
    final_loss: float
    bytes_per_rank: float
    wall_s: float
    train_loss: float  # mean over ranks of the last round's inner-step losses
    dropped: int
    agree: bool


def run_variant(res: Resources, variant: Variant, args, rounds: int, corpus: Path, windows) -> TrainResult:
    import torch.distributed as dist

    out = res.tmp / f"ranks-{variant.key}"
    out.mkdir()
    config = {
        "preset": args.preset,
        "inner_steps": args.inner_steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "seed": args.seed,
        **variant.config,
    }
    if config["strategy"] == "diloco":
        for name in ("aggregator", "inner_lr", "outer_lr", "outer_momentum", "feedback_decay"):
            if getattr(args, name) is not None:
                config[name] = getattr(args, name)
        if args.topk_fraction is not None and config.get("compression", "int8") in ("topk", "topk_int8", "sparseloco"):
            config["topk_fraction"] = args.topk_fraction
    elif args.ddp_lr is not None:
        config["inner_lr"] = args.ddp_lr
    job = {
        "name": variant.key,
        "config": config,
        "rounds": rounds,
        "corpus": str(corpus),
        "shard_kb": args.shard_kb,
        "pg_timeout_s": 120,
    }
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False)  # the "orchestrator's"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_main, args=(r, args.world_size, store.port, str(out), job), daemon=True)
        for r in range(args.world_size)
    ]
    res.workers = procs
    started = time.perf_counter()
    for p in procs:
        p.start()
    deadline = time.monotonic() + 900
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    res.kill_workers()
    del store
    errors = sorted(out.glob("*.err"))
    if errors:
        raise RuntimeError(f"{variant.label}: a rank failed:\n" + "\n".join(e.read_text()[-3000:] for e in errors))
    reports = []
    for r in range(args.world_size):
        path = out / f"rank{r}.json"
        if not path.exists():
            raise RuntimeError(f"{variant.label}: rank {r} left no result (timed out or crashed)")
        reports.append(json.loads(path.read_text()))
    agree = all(len({rep["hashes"][i] for rep in reports}) == 1 for i in range(rounds))
    state = (out / "state.bin").read_bytes()
    final_loss = evaluate(state, args.preset, args.seed, windows)
    result = TrainResult(
        variant=variant,
        final_loss=final_loss,
        bytes_per_rank=sum(rep["bytes_sent"] for rep in reports) / len(reports),
        wall_s=max(rep["wall_s"] for rep in reports),
        train_loss=sum(rep["losses"][-1] for rep in reports) / len(reports),
        dropped=sum(rep["dropped"] for rep in reports),
        agree=agree,
    )
    log(
        f"{variant.label}: held-out loss {final_loss:.4f}, last-round train loss {result.train_loss:.4f}, "
        f"{result.bytes_per_rank:.0f} bytes/rank, {result.wall_s:.1f} s training "
        f"({time.perf_counter() - started:.1f} s with process start), round-mean train loss "
        f"{[round(x, 3) for x in reports[0]['losses'][:: max(1, rounds // 8)]]}"
    )
    if result.dropped:
        log(f"{variant.label}: {result.dropped} contribution(s) dropped across ranks and rounds")
    if not agree:
        log(f"{variant.label}: ranks DISAGREE on the global state")
    return result


# --------------------------------------------------------------------------- #
# Recovery after kill -9 in the real swarm
# --------------------------------------------------------------------------- #


@dataclass
class Recovery:
    strategy: str
    regroup_s: float
    recover_s: float
    restarted: bool
    rounds_before: int = 0
    notes: list = field(default_factory=list)


def _children(pid: int, pattern: str) -> list[int]:
    """``pid``'s children whose command line matches ``pattern``, less a meta-miner's warm spare."""
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", pattern], capture_output=True, text=True)
    return [child for child in (int(x) for x in found.stdout.split()) if not is_waiting_spare(child)]


def measure_recovery(res: Resources, strategy: str, args, corpus: Path) -> Recovery:
    import httpx

    from template.net.http import free_port

    tmp = res.tmp / f"swarm-{strategy}"
    tmp.mkdir()
    env = {
        **shared_cpu_env(args.world_size),
        "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp / "token_symbols.json"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    chain_dir = tmp / "chain"
    n = args.world_size
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
            str(n),
            "--validators",
            "1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = init.communicate(timeout=300)
    if init.returncode != 0:
        raise RuntimeError(f"localnet init failed:\n{output.decode(errors='replace')[-3000:]}")
    chain = [
        "--subtensor.chain_endpoint",
        f"sim://{chain_dir}",
        "--netuid",
        str(NETUID),
        "--wallet.path",
        str(chain_dir / "wallets"),
    ]
    logs = [tmp / "orchestrator.log"]

    def tails() -> str:
        return "\n".join(f"--- {p}\n" + p.read_text(errors="replace")[-2000:] for p in logs if p.exists())

    http = httpx.Client(trust_env=False, timeout=5)  # no proxies: 127.0.0.1 only
    orchestrator = None
    for attempt in range(3):  # free_port() is racy: another process may take the port first
        port = free_port(HOST)
        url = f"http://{HOST}:{port}"
        with open(logs[0], "ab") as out:
            orchestrator = res.spawn(
                "orchestrator",
                [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    *chain,
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
                    "64",
                    "--strategy",
                    strategy,
                    "--preset",
                    args.preset,
                    "--inner-steps",
                    str(args.inner_steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--seq-len",
                    str(args.seq_len),
                    "--seed",
                    str(args.seed),
                    "--min-world-size",
                    str(n),
                    *(["--byzantine-fraction", "0"] if n < 3 else []),
                    "--heartbeat-timeout",
                    "15",
                    "--rejoin-cooldown",
                    "1",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and orchestrator.poll() is None:
            try:
                if http.get(url + "/v1/status").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if orchestrator.poll() is None:
            break
        if "address already in use" not in logs[0].read_text(errors="replace").lower() or attempt == 2:
            raise RuntimeError(f"orchestrator did not come up:\n{tails()}")
    else:
        raise RuntimeError("orchestrator did not come up")

    def status() -> dict:
        return http.get(url + "/v1/status").json()

    def orchestrator_alive(what: str) -> None:
        if orchestrator.poll() is not None:
            raise RuntimeError(f"the orchestrator exited while waiting for {what}:\n{tails()}")

    def wait(what: str, predicate, timeout: float, poll: float = 0.1):
        try:
            return wait_until(what, predicate, timeout, poll=poll, check=orchestrator_alive)
        except TimeoutError as error:
            raise RuntimeError(f"{error}\n{tails()}") from None

    metas: dict[str, subprocess.Popen] = {}
    for i in range(n):
        name = f"miner-{i}"
        work = tmp / name
        logs.append(tmp / f"{name}.log")
        with open(logs[-1], "ab") as out:
            # The miner API listens on 127.0.0.1; the chain refuses 127.0.0.1 as a served axon, so a
            # placeholder loopback address is published (nothing connects to it here).
            metas[name] = res.spawn(
                name,
                [
                    sys.executable,
                    "neurons/meta_miner.py",
                    *chain,
                    "--wallet.name",
                    name,
                    "--orchestrator-url",
                    url,
                    "--work-dir",
                    str(work),
                    "--axon.ip",
                    HOST,
                    "--axon.port",
                    str(free_port(HOST)),
                    "--axon.external_ip",
                    "127.0.0.2",
                    "--timeout",
                    "20",
                    "--heartbeat-interval",
                    "0.5",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        logs.append(work / "miner" / "stdout.log")
    try:
        t0 = time.monotonic()
        before = wait(
            f"{args.warm_rounds} agreed rounds with {n} members",
            lambda: (s := status())["round"] >= args.warm_rounds and s["world_size"] == n and s,
            300,
        )
        log(
            f"{strategy} swarm: {before['round']} rounds agreed {time.monotonic() - t0:.1f} s after start, "
            f"loss history {[round(l, 3) for _, l in before['loss_history']]}"
        )
        meta = metas["miner-1"]
        # neurons/miner.py only, and only our meta-miner's child (the meta-miner's own command line
        # names the same wallet; other swarms on this machine have their own miner-1).
        victims = _children(meta.pid, r"neurons/miner\.py --netuid .*--wallet\.name miner-1 ")
        if not victims:
            raise RuntimeError("miner-1's miner process not found")
        generation = status()["generation"]
        killed_at = time.monotonic()
        os.kill(victims[0], signal.SIGKILL)
        regroup_s = recover_s = None
        base: Optional[tuple[int, int]] = None  # (generation, round) when a full new generation was first seen
        deadline = killed_at + 300
        while time.monotonic() < deadline and recover_s is None:
            if orchestrator.poll() is not None:
                raise RuntimeError(f"the orchestrator exited during recovery:\n{tails()}")
            try:
                s = status()
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            now = time.monotonic()
            gen = s["generation"]
            if gen is not None and gen != generation:
                if regroup_s is None:
                    regroup_s = now - killed_at
                if s["world_size"] == n:
                    if base is None or base[0] != gen:
                        base = (gen, s["round"])
                    elif s["round"] > base[1]:
                        recover_s = now - killed_at
            time.sleep(0.1)
        if recover_s is None:
            raise RuntimeError(
                f"{strategy}: no round agreed by the full world size within 300 s of the kill\n{tails()}"
            )
        restarted = any(
            pid not in victims for pid in _children(meta.pid, r"neurons/miner\.py --netuid .*--wallet\.name miner-1 ")
        )
        log(
            f"{strategy} swarm: killed pid {victims[0]} at round {before['round']}; new generation after "
            f"{regroup_s:.1f} s, a round agreed with {n} members after {recover_s:.1f} s"
            f"{'' if restarted else ' (miner-1 has not been restarted?)'}"
        )
        return Recovery(strategy, regroup_s, recover_s, restarted, before["round"])
    finally:
        res.stop_group(list(metas.values()))
        res.stop_group([orchestrator])
        http.close()


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def figure(name: str, value, unit: str) -> None:
    if isinstance(value, int):
        text = str(value)
    elif unit == "nats":
        text = f"{value:.4f}"
    elif unit == "x":
        text = f"{value:.4g}"
    else:
        text = f"{value:.2f}"
    print(f"{name} {text} {unit}", flush=True)


def report(
    results: list[TrainResult], recoveries: list[Recovery], init_loss: float, rounds: int, tokens: int, args
) -> None:
    figure("tokens_per_rank", tokens, "tokens")
    figure("rounds", rounds, "count")
    figure("world_size", args.world_size, "ranks")
    figure("init_heldout_loss", init_loss, "nats")
    ddp = next(r for r in results if r.variant.key == "ddp")
    for r in results:
        k = r.variant.key
        figure(f"{k}_final_loss", r.final_loss, "nats")
        figure(f"{k}_final_train_loss", r.train_loss, "nats")
        figure(f"{k}_bytes_per_rank", int(round(r.bytes_per_rank)), "bytes")
        figure(f"{k}_wall_s", r.wall_s, "s")
        if r is not ddp:
            figure(f"{k}_loss_vs_ddp", r.final_loss / ddp.final_loss, "x")
            figure(f"{k}_bytes_vs_ddp", r.bytes_per_rank / ddp.bytes_per_rank, "x")
            figure(f"{k}_wall_vs_ddp", r.wall_s / ddp.wall_s, "x")
    for rec in recoveries:
        figure(f"{rec.strategy}_regroup_after_kill9_s", rec.regroup_s, "s")
        figure(f"{rec.strategy}_recover_after_kill9_s", rec.recover_s, "s")
    if recoveries:
        main = next((rec for rec in recoveries if rec.strategy == "diloco"), recoveries[0])
        figure("recover_after_kill9_s", main.recover_s, "s")

    header = ["strategy", "final loss (nats)", "loss/ddp", "bytes/rank", "bytes/ddp", "wall (s)", "wall/ddp"]
    rows = [
        [
            r.variant.label,
            f"{r.final_loss:.4f}",
            f"{r.final_loss / ddp.final_loss:.3f}",
            f"{r.bytes_per_rank:.3e}",
            f"{r.bytes_per_rank / ddp.bytes_per_rank:.4f}",
            f"{r.wall_s:.1f}",
            f"{r.wall_s / ddp.wall_s:.2f}",
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    rule = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def line(cells) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    print()
    print(
        f"{args.world_size} ranks, preset {args.preset}, {tokens} tokens/rank "
        f"({rounds} rounds x H={args.inner_steps} x batch {args.batch_size} x seq {args.seq_len}); "
        f"held-out loss of the initial model {init_loss:.4f} nats"
    )
    print(rule)
    print(line(header))
    print(rule)
    for row in rows:
        print(line(row))
    print(rule, flush=True)
    if recoveries:
        parts = ", ".join(
            f"{rec.strategy} {rec.recover_s:.1f} s (new generation after {rec.regroup_s:.1f} s)" for rec in recoveries
        )
        print(
            f"recovery after kill -9 of one miner (real swarm, min world size {args.world_size}): {parts}", flush=True
        )


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if "ddp" not in args.strategies:
        args.strategies.insert(0, "ddp")  # the ratios' reference
    from template.config.presets import get as get_preset

    try:
        preset = get_preset(args.preset)
    except ValueError as error:
        build_parser().error(str(error))
    if args.seq_len > preset.seq_len:
        build_parser().error(f"--seq-len {args.seq_len} exceeds preset {args.preset!r}'s {preset.seq_len}")
    per_round = args.inner_steps * args.batch_size * args.seq_len
    rounds = max(1, math.ceil(args.tokens / per_round))
    tokens = rounds * per_round

    res = Resources(args.keep)

    def body() -> int:
        tmp = res.tempdir()
        corpus = write_corpus(tmp / "corpus.txt", args.corpus_mb)
        windows = heldout_windows(str(corpus), args.shard_kb, args.seed, args.eval_windows, args.seq_len)
        init_loss = evaluate(None, args.preset, args.seed, windows)
        log(
            f"{len(args.strategies)} strategies x {args.world_size} ranks, {rounds} rounds, {tokens} tokens/rank; "
            f"initial held-out loss {init_loss:.4f}"
        )
        results = [run_variant(res, VARIANTS[k], args, rounds, corpus, windows) for k in args.strategies]
        recoveries = []
        if not args.skip_recovery:
            if args.world_size < 2:
                raise RuntimeError("the kill -9 measurement needs --world-size >= 2")
            swarm_corpus = write_corpus(tmp / "swarm-corpus.txt", 1)  # ~16 shards of 64 KiB
            for strategy in args.recovery_strategies:
                recoveries.append(measure_recovery(res, strategy, args, swarm_corpus))
        report(results, recoveries, init_loss, rounds, tokens, args)
        if not all(r.agree for r in results):
            log("error: ranks disagreed on the global state")
            return 1
        return 0

    return run_guarded(res, body)


if __name__ == "__main__":
    raise SystemExit(main())
