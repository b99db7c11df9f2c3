"""The meta-miner: one per miner hotkey. Checks registration, publishes its
endpoint on chain, joins the orchestrator, heartbeats, runs neurons/miner.py
for each assignment (restarting it on crash with backoff, relaunching it when
the generation changes), and serves the miner's receipts and contributions to
validators over signed HTTP. SIGTERM/SIGINT: stop the miner, leave, exit 0.

    python neurons/meta_miner.py --subtensor.chain_endpoint sim://./localnet --netuid 1 \\
        --wallet.path ./localnet/wallets --wallet.name miner-0 \\
        --orchestrator-url http://127.0.0.1:8600 --axon.ip 127.0.0.2 --axon.port 8701
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as `python neurons/meta_miner.py`
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template.config import cli as tc
from template.config.logs import setup_logging
from template.miner import exit_codes

log = logging.getLogger("tensorswarm.meta_miner")
REPO = Path(__file__).resolve().parents[1]


def add_args(parser) -> None:
    g = parser.add_argument_group("meta-miner")
    g.add_argument("--orchestrator-url", required=True)
    g.add_argument("--orchestrator-hotkey", default=None, help="default: the subnet owner's hotkey")
    g.add_argument("--miner-script", type=tc.expanded_path, default=str(REPO / "neurons" / "miner.py"))
    g.add_argument("--work-dir", type=tc.expanded_path, default=None, help="default: ./state/<wallet>-<hotkey>")
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    g.add_argument("--timeout", type=tc.positive_float, default=60.0, help="miner collective timeout, seconds")
    g.add_argument("--heartbeat-interval", type=tc.positive_float, default=2.0, help="seconds")
    g.add_argument("--max-crashes", type=tc.positive_int, default=5, help="crashes in 5 minutes before giving up")
    a = parser.add_argument_group("axon (the HTTP endpoint validators reach)")
    a.add_argument("--axon.ip", default="127.0.0.2", help="listen address")
    a.add_argument("--axon.port", type=tc.port, default=8091)
    a.add_argument("--axon.external_ip", default=None, help="address published on chain (default: --axon.ip)")
    a.add_argument("--axon.external_port", type=tc.port, default=None, help="default: --axon.port")


async def check_chain(cfg, hotkey: str) -> str:
    """Refuse unregistered hotkeys; publish the endpoint if it changed. Returns
    the orchestrator's hotkey."""
    import bittensor as bt

    from template.chain.client import client_for

    async with client_for(tc.endpoint_of(cfg)) as client:
        graph = await client.subnets.metagraph(cfg.netuid)
        if graph is None:
            raise SystemExit(f"meta_miner: error: subnet {cfg.netuid} does not exist on {tc.endpoint_of(cfg)}")
        neuron = graph.by_hotkey(hotkey)
        if neuron is None:
            raise SystemExit(
                f"meta_miner: error: hotkey {hotkey} is not registered on netuid {cfg.netuid}; register it "
                f"first (btcli subnets register --netuid {cfg.netuid} --wallet {cfg.wallet.name} "
                f"--wallet-hotkey {cfg.wallet.hotkey}; on the embedded chain `python -m utils.localnet init` "
                "registers its wallets)"
            )
        ip = cfg.axon.external_ip or cfg.axon.ip
        port = cfg.axon.external_port or cfg.axon.port
        if neuron.axon != f"{ip}:{port}":
            wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
            result = await client.execute(bt.ServeAxon(cfg.netuid, ip, port), wallet)
            if not result.success:
                raise SystemExit(f"meta_miner: error: publishing {ip}:{port} on chain failed: {result.message}")
            log.info("published axon %s:%d on netuid %d", ip, port, cfg.netuid)
        return cfg.orchestrator_hotkey or graph.owner_hotkey


def miner_argv(cfg, orchestrator_hotkey: str, work: Path) -> list[str]:
    argv = [
        sys.executable,
        cfg.miner_script,
        "--netuid",
        str(cfg.netuid),
        "--subtensor.network",
        cfg.subtensor.network,
        "--wallet.name",
        cfg.wallet.name,
        "--wallet.hotkey",
        cfg.wallet.hotkey,
        "--wallet.path",
        cfg.wallet.path,
        "--orchestrator-url",
        cfg.orchestrator_url,
        "--orchestrator-hotkey",
        orchestrator_hotkey,
        "--work-dir",
        str(work / "miner"),
        "--device",
        cfg.device,
        "--timeout",
        str(cfg.timeout),
    ]
    if cfg.subtensor.get("chain_endpoint"):
        argv += ["--subtensor.chain_endpoint", cfg.subtensor.chain_endpoint]
    if cfg.logging.debug:
        argv.append("--logging.debug")
    return argv


def main(argv: list[str] | None = None) -> int:
    cfg = tc.parse_config("neurons/meta_miner.py", argv, add_args, description=__doc__)
    work = Path(cfg.work_dir or f"./state/{cfg.wallet.name}-{cfg.wallet.hotkey}")
    (work / "miner").mkdir(parents=True, exist_ok=True)
    setup_logging(cfg, logfile=str(work / "meta_miner.log"))

    import bittensor as bt
    from rich.console import Console

    from template import wire as p
    from template.chain.client import client_for
    from template.chain.metagraph import MetagraphCache
    from template.miner.api import create_miner_app
    from template.miner.receipts import ReceiptStore, load_progress
    from template.miner.supervisor import CrashLoop, MinerProcess, counts_as_crash, restart_delay
    from template.net.auth import Authenticator, SqliteNonceStore
    from template.net.http import ServerThread
    from template.net.orchestrator_client import OrchestratorClient, OrchestratorError
    from template.wire.miner import MinerStatus

    wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
    hotkey = wallet.hotkey.ss58_address
    orch_hotkey = asyncio.run(check_chain(cfg, hotkey))
    console = Console(stderr=True)
    stop = {"now": False, "client": None}

    def on_signal(*_):
        stop["now"] = True
        if stop["client"] is not None:
            stop["client"].cancel()  # a call riding out an orchestrator outage gives up now

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    status = MinerStatus(hotkey=hotkey)
    receipts = ReceiptStore(work / "miner")
    endpoint = tc.endpoint_of(cfg)
    metagraph = MetagraphCache(lambda: client_for(endpoint), cfg.netuid)
    auth = Authenticator(hotkey, metagraph, SqliteNonceStore(work / "nonces.sqlite"), netuid=cfg.netuid)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        await metagraph.start()
        yield
        await metagraph.stop()

    server = ServerThread(
        create_miner_app(auth, receipts, lambda: status, lifespan=lifespan), host=cfg.axon.ip, port=cfg.axon.port
    ).start()
    client = OrchestratorClient(cfg.orchestrator_url, wallet, orch_hotkey)
    stop["client"] = client
    crashes = CrashLoop(max_crashes=cfg.max_crashes)
    child: Optional[MinerProcess] = None
    child_generation: Optional[int] = None
    next_start = 0.0
    last_shown = None
    code = 0
    try:
        answer = client.join(cfg.device)
        log.info("joined %s: %s", cfg.orchestrator_url, answer.status)
        while not stop["now"]:
            now = time.time()
            progress = load_progress(work / "miner" / "progress.json") if child else {}
            try:
                beat = client.heartbeat(
                    p.HeartbeatRequest(
                        generation=child_generation,
                        round=progress.get("round"),
                        step=progress.get("step"),
                        loss=progress.get("loss"),
                    )
                )
            except OrchestratorError as error:
                if error.status == 404:  # our slot timed out (e.g. orchestrator restart): join again
                    client.join(cfg.device)
                    continue
                if error.status >= 500:  # unreachable or restarting: the miner keeps training
                    log.warning("%s", error)
                    time.sleep(cfg.heartbeat_interval)
                    continue
                raise
            if child is not None and beat.reassign:
                log.info("generation changed (%s -> %s): relaunching the miner", child_generation, beat.generation)
                child.stop()
                child, child_generation = None, None
            if child is not None and (rc := child.poll()) is not None:
                log.info("miner exited: %s (%s)", rc, exit_codes.NAMES.get(rc, "signal" if rc < 0 else "error"))
                if counts_as_crash(rc) and child_generation is not None:
                    # Our own rank crashed: the generation cannot finish; say so at once.
                    # (A broken group is not ours to report: the crashed rank's meta-miner
                    # does, and the round deadline catches a stalled one.)
                    try:
                        client.heartbeat(
                            p.HeartbeatRequest(
                                generation=child_generation, failed=True, detail=f"miner exited with {rc}"
                            )
                        )
                    except OrchestratorError as error:
                        log.warning("could not report the crash: %s", error)
                child.stop()
                child, child_generation = None, None
                if counts_as_crash(rc):
                    crashes.record(now)
                    status = status.model_copy(update={"restarts": status.restarts + 1, "state": "restarting"})
                    if crashes.exceeded(now):
                        log.error("miner crashed %d times in %.0fs: giving up", crashes.recent(now), crashes.window_s)
                        code = 1
                        break
                    next_start = now + restart_delay(crashes.recent(now))
                    log.info("restarting the miner in %.1fs", next_start - now)
            if child is None and now >= next_start:
                try:
                    assigned = client.assignment()
                except OrchestratorError as error:
                    log.warning("%s", error)
                    time.sleep(cfg.heartbeat_interval)
                    continue
                if assigned.status == "assigned":
                    child_generation = assigned.assignment.generation
                    child = MinerProcess(miner_argv(cfg, orch_hotkey, work), str(work / "miner" / "stdout.log"))
                    log.info(
                        "generation %d: started miner pid %d as rank %d/%d",
                        child_generation,
                        child.pid,
                        assigned.assignment.rank,
                        assigned.assignment.world_size,
                    )
                    status = status.model_copy(
                        update={
                            "state": "training",
                            "generation": child_generation,
                            "rank": assigned.assignment.rank,
                            "world_size": assigned.assignment.world_size,
                        }
                    )
                elif assigned.status == "not_joined":
                    client.join(cfg.device)
                else:
                    status = status.model_copy(update={"state": assigned.status})
            if progress:
                status = status.model_copy(update={k: progress.get(k) for k in ("round", "step", "loss")})
                shown = progress.get("round")
                if shown != last_shown and progress.get("loss") is not None:
                    console.print(
                        f"[bold]{cfg.wallet.name}[/] gen {child_generation} rank {status.rank}/"
                        f"{status.world_size} round {shown} step {progress.get('step')} "
                        f"last round's loss {progress['loss']:.4f}"
                    )
                    last_shown = shown
            time.sleep(cfg.heartbeat_interval if child is not None else 0.5)
    finally:
        if child is not None:
            child.stop()
        status = status.model_copy(update={"state": "stopped"})
        try:
            client.leave("meta-miner stopping", retry=False, timeout=5.0)
        except Exception as error:  # leaving is best effort: the heartbeat timeout covers it
            log.warning("leave failed: %s", error)
        client.close()
        server.stop()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
