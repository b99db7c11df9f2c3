"""The validator as a long-running service (``neurons/validator.py`` parses the flags and calls
:func:`serve`): check that the hotkey holds a validator permit, build the :class:`Validator` for the
orchestrator's run (its state resumed from disk), serve ``GET /v1/status``, then until stopped: poll the
metagraph, audit the newest agreed round (:meth:`Validator.step`) and set weights when due
(:class:`WeightSetter`). One bad round or one chain error never stops it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from pathlib import Path

from fastapi import FastAPI

from template.chain.client import client_for
from template.config import cli as tc
from template.data.store import ShardCache, shard_reader
from template.net.http import ServerThread, install_error_handlers
from template.net.orchestrator_client import OrchestratorClient
from template.net.tracking import Tracker
from template.validator.loop import RunChanged, Validator
from template.validator.state import StateError, load_audit_secret
from template.validator.weights import WeightSetter

__all__ = ["StartupError", "serve", "status_app"]

log = logging.getLogger("tensorswarm.validator")
AUDIT_SECRET_FILE = "audit_secret"  # in the state dir; created on first start (template.validator.state)


class StartupError(Exception):
    """The validator cannot start (message says why and what to do)."""


def status_app(validator: Validator, hotkey: str) -> FastAPI:
    """``GET /v1/status``: the validator's scores, last weights and last audit findings (public)."""
    app = FastAPI(title="tensorswarm validator", version="1")
    install_error_handlers(app)

    @app.get("/v1/status")
    async def status() -> dict:
        s = validator.state
        return {
            "hotkey": hotkey,
            "last_round": s.last_round,
            "rounds_audited": s.rounds_audited,
            "scores": s.ema,
            "weights": s.last_weights,
            "last_weights_block": s.last_weights_block,
            "last_audits": s.last_audits,
            "last_transition": s.last_transition,
            "transitions_verified": s.transitions_verified,
        }

    return app


def _permit_problem(hotkey: str, netuid: int) -> str:
    return (
        f"hotkey {hotkey} has no validator permit on netuid {netuid}: stake to it "
        f"(btcli stake add --netuid {netuid} --hotkey {hotkey} --amount-tao N --wallet COLDKEY) "
        "and wait for the next epoch; on the embedded chain, "
        "`python -m utils.localnet init` stakes its validator-N wallets, which hold a permit after the "
        "first epoch (a few seconds)"
    )


async def serve(cfg: tc.Config, wallet, state_dir: Path, stop: threading.Event) -> None:
    """Run the validator of ``wallet``'s hotkey with the flags ``cfg`` (neurons/validator.py's) until
    ``stop`` is set; its state and shard cache live in ``state_dir``. Raises :class:`StartupError`."""
    hotkey = wallet.hotkey.ss58_address
    async with client_for(tc.endpoint_of(cfg)) as chain:
        graph = await chain.subnets.metagraph(cfg.netuid)
        if graph is None:
            raise StartupError(f"subnet {cfg.netuid} does not exist")
        me = graph.by_hotkey(hotkey)
        if me is None or not me.validator_permit:
            raise StartupError(_permit_problem(hotkey, cfg.netuid))
        orchestrator = OrchestratorClient(cfg.orchestrator_url, wallet, cfg.orchestrator_hotkey or graph.owner_hotkey)
        stack = contextlib.ExitStack()  # what the loop opens on the way (the trackers)
        try:
            run = orchestrator.run()
            try:
                validator = Validator(
                    wallet=wallet,
                    orchestrator=orchestrator,
                    run=run,
                    read_shard=shard_reader(run.dataset, ShardCache(state_dir / "cache", orchestrator.shard).get),
                    state_path=state_dir / "validator.json",
                    sample_size=cfg.sample_size,
                    heldout_count=cfg.heldout_count,
                    ema_alpha=cfg.ema_alpha,
                    attesters=cfg.attesters,
                    # Each validator's audits are its own and unpredictable: keyed by a secret only it
                    # holds (a seed derived from its public hotkey could be computed by any miner).
                    audit_secret=load_audit_secret(state_dir / AUDIT_SECRET_FILE),
                )
            except StateError as error:
                raise StartupError(str(error)) from None
            if validator.state.last_round >= 0:
                # Scores continue from disk; the exact values, so a restart can be checked against the file.
                log.info(
                    "resumed from %s at round %d with scores %s",
                    validator.state_path,
                    validator.state.last_round,
                    json.dumps(validator.state.ema, sort_keys=True),
                )
            with ServerThread(status_app(validator, hotkey), host=cfg.host, port=cfg.port) as server:
                log.info(
                    "validator %s: auditing run %s from %s; status on %s",
                    hotkey,
                    run.run_id,
                    cfg.orchestrator_url,
                    server.url,
                )
                weights = WeightSetter(chain, wallet, cfg.netuid, cfg.weights_interval)
                tracker = Tracker(
                    name=f"validator {hotkey[:8]}",
                    config={"run_id": run.run_id, "hotkey": hotkey},
                    wandb_project=cfg.wandb_project,
                    wandb_dir=state_dir,
                    tensorboard_dir=cfg.tensorboard_dir,
                )
                stack.callback(tracker.close)
                while not stop.is_set():
                    graph = await chain.subnets.metagraph(cfg.netuid) or graph
                    try:
                        done = await asyncio.to_thread(validator.step, {n.hotkey: n.axon for n in graph.neurons})
                    except RunChanged as error:
                        raise StartupError(str(error)) from None
                    except Exception as error:  # one bad round must not stop the validator
                        log.warning("audit step failed: %s", error)
                        done = None
                    if done is not None:
                        s = validator.state
                        figures = {f"score/{hk[:8]}": v for hk, v in s.ema.items()}
                        tracker.log(
                            done,
                            {**figures, "rounds_audited": s.rounds_audited, "heldout_loss": validator.last_heldout},
                        )
                    if weights.due():
                        await weights.set(validator, {n.hotkey: n.uid for n in graph.neurons})
                    await asyncio.sleep(cfg.poll_interval)
        finally:
            stack.close()
            orchestrator.close()
