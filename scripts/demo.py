"""The whole subnet on one machine: an embedded chain, the orchestrator, N meta-miners (each
running its miner) and M validators, training the tiny preset; live progress, then a summary
read back from the chain. `scripts/demo.sh` sets up the virtualenv and runs this.

    python scripts/demo.py [--miners 3] [--validators 1] [--duration 180] [--dir ./demo]

Exit status: 0 when the loss fell and every miner earned a nonzero on-chain incentive; 1 when
not (the summary says which); 2 for bad flags; 130 on Ctrl-C. Every process it started is
stopped on any exit (each runs in its own session and dies with this one). Logs and state stay
in --dir (replaced on the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from rich import box  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.live import Live  # noqa: E402
from rich.table import Table  # noqa: E402

from template.config.cli import positive_int  # noqa: E402
from template.net.http import free_port  # noqa: E402
from utils.procs import Resources, shared_cpu_env, wait_until  # noqa: E402

MARKER = ".tensorswarm-demo"  # --dir is only ever wiped when this file says we made it
AXON_IP = "127.0.0.2"  # the chain refuses 127.0.0.1 as an axon address
TEMPO = 10  # blocks per epoch (0.25 s blocks): incentives move every 2.5 s
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
PROGRESS_EVERY = 10.0  # seconds between progress lines when not on a terminal (logs, CI)


def say(message: str) -> None:
    console.print(f"[bold cyan]demo[/] {message}")


def build_parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line and status 2, like every other entry point
            self.exit(2, f"{self.prog}: error: {message}\n")

    parser = Parser(prog="scripts/demo.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=positive_int, default=3, help="meta-miners, one miner rank each (default 3)")
    parser.add_argument("--validators", type=positive_int, default=1, help="validators (default 1)")
    parser.add_argument(
        "--duration", type=positive_int, default=180, help="seconds of training once every miner is in (default 180)"
    )
    parser.add_argument("--dir", type=Path, default=REPO / "demo", help="work dir: chain, state, logs (default ./demo)")
    parser.add_argument(
        "--inner-steps", type=positive_int, default=None, help="H, inner steps per round (default: the tiny preset's)"
    )
    return parser


@dataclass
class Swarm:
    """What the demo started and where to reach it."""

    dir: Path
    endpoint: str
    orchestrator_url: str = ""
    validator_urls: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # hotkey -> wallet name
    stake0: dict[str, float] = field(default_factory=dict)  # hotkey -> stake (α) when training began
    logs: list[Path] = field(default_factory=list)
    trainers: int = 1  # torch processes that share this machine's CPUs (miners and validators)

    def flags(self, wallet: str) -> list[str]:
        return [
            "--subtensor.chain_endpoint",
            self.endpoint,
            "--netuid",
            "1",
            "--wallet.path",
            str(self.dir / "localnet" / "wallets"),
            "--wallet.name",
            wallet,
            "--wallet.hotkey",
            "default",
        ]


def prepare_dir(path: Path) -> Path:
    path = path.expanduser().resolve()
    if path.exists():
        if not (path / MARKER).exists() and any(path.iterdir()):
            raise SystemExit(
                f"scripts/demo.sh: error: {path} exists and was not made by the demo; choose another --dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by scripts/demo.sh; replaced on its next run\n")
    return path


def spawn(res: Resources, swarm: Swarm, name: str, argv: list[str]) -> subprocess.Popen:
    log = swarm.dir / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    swarm.logs.append(log)
    env = {**shared_cpu_env(swarm.trainers), "PYTHONUNBUFFERED": "1"}
    return res.spawn(name, [sys.executable, *argv], cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def wait_for(what: str, predicate, timeout: float, res: Resources, swarm: Swarm):
    """Poll until predicate() is truthy; fail with the tail of the logs when a process died or time ran out."""

    def alive(what: str) -> None:
        dead = [(n, p.returncode) for n, p in res.procs if p.poll() is not None]
        if dead:
            raise Failure(f"{dead[0][0]} exited with status {dead[0][1]} while waiting for {what}", swarm)

    try:
        return wait_until(what, predicate, timeout, check=alive)
    except TimeoutError as error:
        raise Failure(str(error), swarm) from None


class Failure(Exception):
    def __init__(self, message: str, swarm: Optional[Swarm] = None):
        super().__init__(message)
        self.swarm = swarm


def get(url: str) -> dict:
    return httpx.get(url, timeout=5).json()


async def metagraph(endpoint: str, *, wait_epoch: bool = False):
    from template.chain.client import client_for

    async with client_for(endpoint) as client:
        if wait_epoch:
            await client.wait_for_epoch(1, timeout=60)
        return await client.subnets.metagraph(1)


# -- the run ---------------------------------------------------------------------------------------


def start(args, res: Resources, swarm: Swarm) -> None:
    say(
        f"creating an embedded chain with {args.miners} miner and {args.validators} validator wallet(s) "
        f"in {swarm.dir / 'localnet'}"
    )
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "utils.localnet",
            "init",
            "--dir",
            str(swarm.dir / "localnet"),
            "--miners",
            str(args.miners),
            "--validators",
            str(args.validators),
            "--tempo",
            str(TEMPO),
            "--weights-rate-limit",
            str(TEMPO),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        raise Failure(f"chain init failed:\n{init.stdout}{init.stderr}")
    from utils.localnet.cli import wallet_names

    swarm.names = wallet_names(swarm.dir / "localnet")

    port = free_port()
    swarm.orchestrator_url = f"http://127.0.0.1:{port}"
    spawn(
        res,
        swarm,
        "orchestrator",
        [
            "-m",
            "orchestrator",
            *swarm.flags("owner"),
            "--state-dir",
            str(swarm.dir / "orchestrator"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tcp-store-host",
            "127.0.0.1",
            "--tcp-store-port",
            "0",
            "--preset",
            "tiny",
            *(["--inner-steps", str(args.inner_steps)] if args.inner_steps else []),
            "--min-world-size",
            str(args.miners),
            *(["--byzantine-fraction", "0"] if args.miners < 3 else []),
            "--heartbeat-timeout",
            "30",
        ],
    )
    wait_for("the orchestrator", lambda: get(swarm.orchestrator_url + "/v1/status"), 120, res, swarm)
    say(f"orchestrator up: status page {swarm.orchestrator_url}/  (JSON at /v1/status, Prometheus at /metrics)")

    for i in range(args.miners):
        name = f"miner-{i}"
        spawn(
            res,
            swarm,
            f"meta-{name}",
            [
                "neurons/meta_miner.py",
                *swarm.flags(name),
                "--orchestrator-url",
                swarm.orchestrator_url,
                "--work-dir",
                str(swarm.dir / name),
                "--axon.ip",
                AXON_IP,
                "--axon.port",
                str(free_port(AXON_IP)),
                "--heartbeat-interval",
                "1",
                "--timeout",
                "60",
            ],
        )
    say(f"{args.miners} meta-miners started; waiting for the process group to form")

    # Validators hold a permit from the first epoch after `init` staked them.
    graph = wait_for("validator permits", lambda: _permits_ready(swarm, args.validators), 60, res, swarm)
    swarm.stake0 = {n.hotkey: n.total_stake.alpha for n in graph.neurons}
    for i in range(args.validators):
        vport = free_port()
        swarm.validator_urls.append(f"http://127.0.0.1:{vport}")
        spawn(
            res,
            swarm,
            f"validator-{i}",
            [
                "neurons/validator.py",
                *swarm.flags(f"validator-{i}"),
                "--orchestrator-url",
                swarm.orchestrator_url,
                "--state-dir",
                str(swarm.dir / f"validator-{i}"),
                "--port",
                str(vport),
                "--weights-interval",
                "10",
            ],
        )
    wait_for(
        "every miner in the process group",
        lambda: (
            (s := get(swarm.orchestrator_url + "/v1/status"))["world_size"] == args.miners
            and s["round"] >= 0
            and s["generation"] is not None
        ),
        300,
        res,
        swarm,
    )
    say(
        f"{args.validators} validator(s) started: status at "
        + ", ".join(u + "/v1/status" for u in swarm.validator_urls)
    )


def _permits_ready(swarm: Swarm, count: int):
    graph = asyncio.run(metagraph(swarm.endpoint))
    permitted = [
        n for n in graph.neurons if n.validator_permit and swarm.names.get(n.hotkey, "").startswith("validator-")
    ]
    return graph if len(permitted) >= count else None


def progress_table(swarm: Swarm, orch: dict, validators: list[dict], elapsed: float, duration: float) -> Table:
    history = orch.get("loss_history") or []
    mean = f", mean loss {history[-1][1]:.3f}" if history else ""
    table = Table(
        title=f"round {orch['round']}, generation {orch['generation']}, {orch['world_size']} miners{mean} "
        f"— {elapsed:.0f}/{duration:.0f}s",
        caption=f"{swarm.orchestrator_url}/  ·  logs: {swarm.dir / 'logs'}",
        box=box.SIMPLE_HEAD,
    )
    for column in ("miner", "uid", "rank", "step", "loss"):
        table.add_column(column, justify="left" if column == "miner" else "right", no_wrap=True)
    for i, _ in enumerate(validators):
        table.add_column(f"v{i} score/weight", justify="right", no_wrap=True)
    for m in sorted(orch["members"] + orch["waiting"], key=lambda m: swarm.names.get(m["hotkey"], "")):
        row = [
            swarm.names.get(m["hotkey"], m["hotkey"][:10]),
            str(m["uid"]),
            _fmt(m["rank"]),
            _fmt(m["step"]),
            _fmt(m["loss"], ".3f"),
        ]
        for v in validators:
            row.append(
                f"{_fmt(v.get('scores', {}).get(m['hotkey']), '.3f')} / "
                f"{_fmt(v.get('weights', {}).get(str(m['uid'])), '.3f')}"
            )
        table.add_row(*row)
    return table


def _fmt(value, spec: str = "") -> str:
    return "—" if value is None else format(value, spec)


def train(args, res: Resources, swarm: Swarm) -> dict:
    """Let the swarm train for --duration seconds, showing progress; then make sure every validator
    set weights since the last audits and an epoch has passed, so incentives reflect them."""
    t0 = time.monotonic()
    interactive = console.is_terminal
    last_line = -PROGRESS_EVERY
    with Live(console=console, refresh_per_second=2, transient=False) if interactive else nullcontext() as live:
        while True:
            elapsed = time.monotonic() - t0
            dead = [(n, p.returncode) for n, p in res.procs if p.poll() is not None]
            if dead:
                raise Failure(f"{dead[0][0]} exited with status {dead[0][1]} during training", swarm)
            try:
                orch = get(swarm.orchestrator_url + "/v1/status")
                validators = [_safe_get(u + "/v1/status") for u in swarm.validator_urls]
            except httpx.HTTPError:
                time.sleep(1)
                continue
            if interactive:
                live.update(progress_table(swarm, orch, validators, elapsed, args.duration))
            elif elapsed - last_line >= PROGRESS_EVERY:
                last_line = elapsed
                history = orch.get("loss_history") or []
                loss = f"{history[-1][1]:.4f}" if history else "—"
                weighted = sum(1 for v in validators if v.get("last_weights_block"))
                say(
                    f"{elapsed:5.0f}s  round {orch['round']:4d}  generation {orch['generation']}  "
                    f"miners {orch['world_size']}  loss {loss}  validators that set weights {weighted}/{len(validators)}"
                )
            weighted_all = all(v.get("last_weights_block") for v in validators)
            # Past --duration, wait (up to 2 minutes) for weights that name every miner: a validator audits
            # a few members per round, and its first weights may come before it has audited them all.
            if elapsed >= args.duration and weighted_all and all(_weighs_all(v, args.miners) for v in validators):
                return orch
            if elapsed >= args.duration + 120:
                if weighted_all:
                    return orch  # the summary says which miner earned nothing
                raise Failure("no validator set weights within 2 minutes past --duration", swarm)
            time.sleep(1)


def _weighs_all(validator: dict, miners: int) -> bool:
    """Whether a validator's last weights give something to (at least) as many neurons as there are miners."""
    return sum(1 for w in (validator.get("weights") or {}).values() if w > 0) >= miners


def _safe_get(url: str) -> dict:
    try:
        return get(url)
    except (httpx.HTTPError, ValueError):
        return {}


def summarize(args, swarm: Swarm, orch: dict, validators: list[dict]) -> int:
    graph = asyncio.run(metagraph(swarm.endpoint, wait_epoch=True))  # incentives follow the last weights
    history = orch.get("loss_history") or []
    if len(history) < 2:
        raise Failure(f"only {len(history)} round(s) agreed in {args.duration}s; nothing to compare", swarm)
    (r0, loss0), (r1, loss1) = history[0], history[-1]
    table = Table(
        title=f"on chain at block {graph.block} (subnet 1, tempo {graph.tempo}; amounts in α)", box=box.SIMPLE_HEAD
    )
    columns = (
        "neuron",
        "uid",
        "incentive",
        "emission",
        "stake",
        "earned",
        *[f"w v{i}" for i in range(len(validators))],
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "neuron" else "right", no_wrap=True)
    miners_ok = True
    for n in sorted(graph.neurons, key=lambda n: n.uid):
        name = swarm.names.get(n.hotkey, n.hotkey[:10])
        if name.startswith("miner-") and not n.incentive > 0:
            miners_ok = False
        earned = n.total_stake.alpha - swarm.stake0.get(n.hotkey, 0.0)
        table.add_row(
            name,
            str(n.uid),
            f"{n.incentive:.4f}",
            f"{n.emission.alpha:.3f}",
            f"{n.total_stake.alpha:.2f}",
            f"{earned:+.2f}",
            *[_fmt(v.get("weights", {}).get(str(n.uid)), ".3f") for v in validators],
        )
    console.print(table)
    fell = loss1 < loss0
    console.print(
        f"mean training loss: {loss0:.4f} at round {r0} → {loss1:.4f} at round {r1} "
        f"({'fell' if fell else 'did NOT fall'}; {r1 - r0} rounds agreed by {orch['world_size']} miners)"
    )
    console.print(f"every miner earned on-chain incentive: {'yes' if miners_ok else 'NO'}")
    console.print(f"logs and state: {swarm.dir}")
    return 0 if fell and miners_ok else 1


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    work = prepare_dir(args.dir)
    swarm = Swarm(dir=work, endpoint=f"sim://{work / 'localnet'}", trainers=args.miners + args.validators)
    res = Resources(keep=True, log=say)
    res.tmp = work  # kept (keep=True): logs and state for the user

    def terminate(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    # Ctrl-C too: with Python's default handler in place, asyncio.run (the chain reads) swaps in its own,
    # which only cancels the running task, and a client that swallows the cancellation left the demo
    # training on after a Ctrl-C; asyncio.run keeps a custom handler.
    signal.signal(signal.SIGINT, terminate)
    try:
        start(args, res, swarm)
        orch = train(args, res, swarm)
        validators = [_safe_get(u + "/v1/status") for u in swarm.validator_urls]
        res.stop_group([p for n, p in res.procs if n.startswith("validator-")])  # freeze the weights
        say("waiting for the next epoch: the chain turns the weights into incentives")
        return summarize(args, swarm, orch, validators)
    except KeyboardInterrupt:
        say("interrupted: stopping every process the demo started")
        return 130
    except Failure as failure:
        say(f"[bold red]failed:[/] {failure}")
        for log in (failure.swarm.logs if failure.swarm else [])[-4:]:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            console.print(f"--- {log}", *tail, sep="\n", markup=False, highlight=False)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        _stop(res)


def _stop(res: Resources) -> None:
    validators = [p for n, p in res.procs if n.startswith("validator-")]
    miners = [p for n, p in res.procs if n.startswith("meta-")]
    res.stop_group(validators)
    res.stop_group(miners)  # each leaves the orchestrator and stops its miner
    res.close()  # the orchestrator, then any process still carrying this run's token


if __name__ == "__main__":
    raise SystemExit(main())
