"""The meta-miner's supervision loop: ``check_chain`` refuses an unregistered hotkey and publishes
the axon; ``MetaMiner`` serves the miner's receipts to validators, joins the orchestrator,
heartbeats, starts the miner process (``miner_argv``), which follows generation changes in place, and
relaunches it when it exits or gets stuck in an ended generation, counts crashes with backoff
(``supervisor.py``), keeps the status the API shows, and leaves when stopped."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from rich.console import Console

from template import wire as p
from template.chain.client import client_for
from template.chain.metagraph import MetagraphCache
from template.config import cli as tc
from template.miner import exit_codes
from template.miner.api import create_miner_app
from template.miner.exit_codes import REFORM_WAIT_S
from template.miner.receipts import ReceiptStore, load_progress
from template.miner.supervisor import CrashLoop, MinerProcess, counts_as_crash, restart_delay
from template.net.auth import Authenticator, SqliteNonceStore
from template.net.http import ServerThread
from template.net.orchestrator_client import OrchestratorClient, OrchestratorError
from template.wire.miner import MinerStatus

log = logging.getLogger("tensorswarm.meta_miner")


async def check_chain(cfg, hotkey: str) -> str:
    """Refuse unregistered hotkeys; publish the endpoint if it changed. Returns
    the orchestrator's hotkey."""
    import bittensor as bt

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
    """The miner's command line: the meta-miner's chain, wallet and training flags."""
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


REJOIN_POLL_S = 5.0  # while cooling down, ask to rejoin this often
# The miner joins a new generation in its own process; one still in the old generation this long after
# the orchestrator said it changed is stuck (a collective waiting on a frozen peer) and is relaunched.
# Following takes the miner its current inner step and the old group's teardown: seconds on a loaded
# host. A relaunch costs the interpreter's and torch's start-up and the catch-up, so it waits a while.
REFORM_GRACE_S = 10.0
# The warm spare (--spare) is started this long after a miner: its imports must not slow the start-up of
# the miner it stands behind.
SPARE_AFTER_S = 20.0


class MetaMiner:
    """One miner hotkey's supervisor. ``run()`` loops until ``stop()`` (safe from a signal handler)
    and returns the process's exit code: 0, or 1 after too many crashes."""

    def __init__(self, cfg, wallet, work: Path, orchestrator_hotkey: str):
        self.cfg, self.work, self.orch_hotkey = cfg, Path(work), orchestrator_hotkey
        self.hotkey = wallet.hotkey.ss58_address
        self.console = Console(stderr=True)
        self.stopping = False
        self.status = MinerStatus(hotkey=self.hotkey)
        self.client = OrchestratorClient(cfg.orchestrator_url, wallet, orchestrator_hotkey)
        self.crashes = CrashLoop(max_crashes=cfg.max_crashes)
        self.child: Optional[MinerProcess] = None
        self.child_generation: Optional[int] = None
        self.reassigned_at: Optional[float] = None  # when the orchestrator first said the child's generation ended
        self.outside_since: Optional[float] = None  # since when this hotkey is in no generation, with a miner
        self.next_start = 0.0
        self.last_shown = None
        self.spare: Optional[MinerProcess] = None  # a miner loaded and waiting, to replace a crashed one at once
        self.spare_deaths, self.spare_after = 0, 0.0  # spares that exited unused; no new one before spare_after
        self.child_started = 0.0

    def stop(self, *_signal) -> None:
        self.stopping = True
        self.client.cancel()  # a call riding out an orchestrator outage gives up now

    def serve(self) -> ServerThread:
        """The validators' API over this hotkey's receipts (btauth/1, validator permit)."""
        endpoint = tc.endpoint_of(self.cfg)
        metagraph = MetagraphCache(lambda: client_for(endpoint), self.cfg.netuid)
        auth = Authenticator(
            self.hotkey, metagraph, SqliteNonceStore(self.work / "nonces.sqlite"), netuid=self.cfg.netuid
        )

        @asynccontextmanager
        async def lifespan(_app):
            await metagraph.start()
            yield
            await metagraph.stop()

        app = create_miner_app(auth, ReceiptStore(self.work / "miner"), lambda: self.status, lifespan=lifespan)
        return ServerThread(app, host=self.cfg.axon.ip, port=self.cfg.axon.port).start()

    def run(self) -> int:
        cfg, client = self.cfg, self.client
        server = self.serve()
        try:
            # A restart during this hotkey's cool-down (its miner or meta-miner died too often) is refused
            # with a 429, and an orchestrator not up yet answers 5xx: both waited out like any rejoin's;
            # anything else on the first join (not registered, a bad request) is fatal.
            self.rejoin()
            while not self.stopping:
                now = time.time()
                progress = load_progress(self.work / "miner" / "progress.json") if self.child else {}
                self.follow(progress)
                beat = self.heartbeat(progress)
                if beat is None:
                    continue
                if self.supervise(beat, now):
                    return 1
                self.keep_spare(now)  # first: a launch takes the spare, warm or still loading
                if self.child is None and now >= self.next_start and not self.launch():
                    continue
                self.show(progress)
                if self.child is not None:
                    self.child.wait(cfg.heartbeat_interval)  # its exit is noticed (and reported) at once
                else:
                    time.sleep(0.5)
            return 0
        finally:
            for proc in (self.child, self.spare):
                if proc is not None:
                    proc.stop()
            self.status = self.status.model_copy(update={"state": "stopped"})
            try:
                client.leave("meta-miner stopping", retry=False, timeout=5.0)
            except Exception as error:  # leaving is best effort: the heartbeat timeout covers it
                log.warning("leave failed: %s", error)
            client.close()
            server.stop()

    def heartbeat(self, progress: dict) -> Optional[p.HeartbeatResponse]:
        """Tell the orchestrator we are alive (and the miner's progress); None: go round again."""
        try:
            return self.client.heartbeat(
                p.HeartbeatRequest(
                    generation=self.child_generation,
                    round=progress.get("round"),
                    step=progress.get("step"),
                    loss=progress.get("loss"),
                )
            )
        except OrchestratorError as error:
            if error.status == 404:  # our slot is gone (timed out, restart, evicted): join again
                self.rejoin()
                return None
            if error.status >= 500:  # unreachable or restarting: the miner keeps training
                log.warning("%s", error)
                time.sleep(self.cfg.heartbeat_interval)
                return None
            raise

    def rejoin(self) -> None:
        """Join (again); a cool-down (429: this hotkey left or was removed too often) or an orchestrator
        that is down (5xx) is waited out here, polling, never a reason to exit."""
        try:
            answer = self.client.join(self.cfg.device)
        except OrchestratorError as error:
            # 5xx: unreachable or restarting (join is not retried by the client). The orchestrator coming
            # back is waited for as a cool-down is, saying so each time; a refusal (403: not registered,
            # 400) is fatal.
            if error.status != 429 and error.status < 500:
                raise
            log.warning("joining: %s", error.detail)
            self.status = self.status.model_copy(update={"state": "waiting"})
            time.sleep(REJOIN_POLL_S)
            return
        log.info("joined %s: %s", self.cfg.orchestrator_url, answer.status)

    def supervise(self, beat: p.HeartbeatResponse, now: float) -> bool:
        """Stop the miner if its generation is over; reap it if it exited, scheduling the restart.
        True: it crashed too often, give up."""
        child = self.child
        # A miner outside any generation waits in place for the next one, REFORM_WAIT_S at most; one
        # still there well after that is stuck (a teardown that hangs) and is stopped.
        if child is not None and beat.generation is None:
            self.outside_since = self.outside_since or now
            if now - self.outside_since >= REFORM_WAIT_S + REFORM_GRACE_S:
                log.info("the miner has waited outside any generation for %.0fs: stopping it", now - self.outside_since)
                child.stop()
                child = self.child = self.child_generation = self.outside_since = None
        else:
            self.outside_since = None
        # Its generation ended and the miner has not moved on: it gets REFORM_GRACE_S.
        if child is not None and beat.reassign:
            self.reassigned_at = self.reassigned_at or now
            if now - self.reassigned_at >= REFORM_GRACE_S:
                log.info(
                    "generation changed (%s -> %s) and the miner has not followed in %.0fs: relaunching it",
                    self.child_generation,
                    beat.generation,
                    now - self.reassigned_at,
                )
                child.stop()
                child = self.child = self.child_generation = self.reassigned_at = None
        else:
            self.reassigned_at = None
        if child is None or (rc := child.poll()) is None:
            return False
        log.info("miner exited: %s (%s)", rc, exit_codes.NAMES.get(rc, "signal" if rc < 0 else "error"))
        if counts_as_crash(rc) and self.child_generation is not None:
            # Our own rank crashed: the generation cannot finish; say so at once.
            # (A broken group is not ours to report: the crashed rank's meta-miner
            # does, and the round deadline catches a stalled one.)
            try:
                self.client.heartbeat(
                    p.HeartbeatRequest(generation=self.child_generation, failed=True, detail=f"miner exited with {rc}")
                )
            except OrchestratorError as error:
                log.warning("could not report the crash: %s", error)
        child.stop()
        self.child = self.child_generation = None
        if counts_as_crash(rc):
            self.crashes.record(now)
            self.status = self.status.model_copy(update={"restarts": self.status.restarts + 1, "state": "restarting"})
            if self.crashes.exceeded(now):
                log.error("miner crashed %d times in %.0fs: giving up", self.crashes.recent(now), self.crashes.window_s)
                return True
            self.next_start = now + restart_delay(self.crashes.recent(now))
            log.info("restarting the miner in %.1fs", self.next_start - now)
        return False

    def launch(self) -> bool:
        """Start the miner if we are assigned (else rejoin or show why not); False: go round again."""
        try:
            assigned = self.client.assignment()
        except OrchestratorError as error:
            log.warning("%s", error)
            time.sleep(self.cfg.heartbeat_interval)
            return False
        if assigned.status == "assigned":
            a = assigned.assignment
            # A progress file left by an earlier miner (another run, another orchestrator) must not pass
            # for this one's generation.
            (self.work / "miner" / "progress.json").unlink(missing_ok=True)
            self.child_generation = a.generation
            spare, self.spare = self.spare, None
            warm = spare is not None and spare.go()
            if warm:
                self.spare_deaths = 0  # a spare that served: its successor starts without backoff
            if spare is not None and not warm:
                spare.stop()
            self.child = spare if warm else MinerProcess(self.miner_argv(), str(self.work / "miner" / "stdout.log"))
            self.child_started = time.time()
            log.info(
                "generation %d: started %sminer pid %d as rank %d/%d",
                a.generation,
                "the warm spare " if warm else "",
                self.child.pid,
                a.rank,
                a.world_size,
            )
            self.status = self.status.model_copy(
                update={"state": "training", "generation": a.generation, "rank": a.rank, "world_size": a.world_size}
            )
        elif assigned.status == "not_joined":
            self.rejoin()
        else:
            self.status = self.status.model_copy(update={"state": assigned.status})
        return True

    def miner_argv(self) -> list[str]:
        return miner_argv(self.cfg, self.orch_hotkey, self.work)

    def keep_spare(self, now: float) -> None:
        """With ``--spare``: once the miner has run ``SPARE_AFTER_S``, keep a standby one behind it (a spare
        that died is replaced), so a crash costs the swarm the catch-up, not the interpreter's start-up. With
        no miner running (not assigned yet, a cool-down, a restart's backoff) one is started at once: the next
        assignment finds it loaded, where the members would wait on a cold start's imports."""
        if self.spare is not None and self.spare.poll() is not None:
            # One that keeps dying (no memory for two, a broken torch) is replaced ever less often, not in a loop.
            self.spare_deaths += 1
            self.spare_after = now + restart_delay(self.spare_deaths)
            log.warning("the warm spare exited (%s): replacing it in %.0fs", self.spare.poll(), self.spare_after - now)
            self.spare.stop()
            self.spare = None
        if not getattr(self.cfg, "spare", False) or self.spare is not None or now < self.spare_after:
            return
        if self.child is None or now - self.child_started >= SPARE_AFTER_S:
            self.spare = MinerProcess(self.miner_argv(), str(self.work / "miner" / "stdout.log"), standby=True)
            log.info("warm spare miner pid %d is standing by", self.spare.pid)

    def follow(self, progress: dict) -> None:
        """The generation the miner is in now (it joins new ones in its own process: its progress file
        says which), for the heartbeat, a crash report and the status."""
        gen = progress.get("generation")
        if self.child is None or not isinstance(gen, int) or gen == self.child_generation:
            return  # no miner, or nothing new (launch() removes a predecessor's file)
        self.child_generation = gen
        self.status = self.status.model_copy(
            update={"generation": gen, "rank": progress.get("rank"), "world_size": progress.get("world_size")}
        )

    def show(self, progress: dict) -> None:
        """The miner's progress into the status, and one console line per round."""
        if not progress:
            return
        self.status = self.status.model_copy(update={k: progress.get(k) for k in ("round", "step", "loss")})
        shown = progress.get("round")
        if shown != self.last_shown and progress.get("loss") is not None:
            self.console.print(
                f"[bold]{self.cfg.wallet.name}[/] gen {self.child_generation} rank {self.status.rank}/"
                f"{self.status.world_size} round {shown} step {progress.get('step')} "
                f"last round's loss {progress['loss']:.4f}"
            )
            self.last_shown = shown
