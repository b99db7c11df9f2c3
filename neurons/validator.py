"""The validator: follows the run, audits a random sample of miners each round
from evidence it can reproduce (template/audit.py), keeps EMA scores on disk,
and sets weights on chain every --weights-interval seconds (within the chain's
rate limit; chain errors are retried with backoff, never fatal).

    python neurons/validator.py --subtensor.chain_endpoint sim://./localnet --netuid 1 \\
        --wallet.path ./localnet/wallets --wallet.name validator-0 \\
        --orchestrator-url http://127.0.0.1:8600 --state-dir ./state/validator-0 --port 8800
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python neurons/validator.py`
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template.config import cli as tc
from template.config.logs import setup_logging

log = logging.getLogger("tensorswarm.validator")


def add_args(parser) -> None:
    g = parser.add_argument_group("validator")
    g.add_argument("--orchestrator-url", required=True)
    g.add_argument("--orchestrator-hotkey", default=None, help="default: the subnet owner's hotkey")
    g.add_argument("--state-dir", type=tc.expanded_path, default=None, help="default: ./state/<wallet>-<hotkey>")
    g.add_argument("--sample-size", type=tc.positive_int, default=4, help="miners audited per round")
    g.add_argument("--heldout-count", type=tc.positive_int, default=16, help="held-out windows per audit")
    g.add_argument(
        "--attesters",
        type=tc.non_negative_int,
        default=8,
        help="receipts fetched per round from members outside the sample, to check what each audited "
        "miner sent against what its peers received",
    )
    g.add_argument("--ema-alpha", type=tc.positive_float, default=0.3)
    g.add_argument("--weights-interval", type=tc.positive_float, default=60.0, help="seconds between weight sets")
    g.add_argument("--poll-interval", type=tc.positive_float, default=1.0, help="seconds")
    g.add_argument("--host", default="127.0.0.1", help="status endpoint address")
    g.add_argument("--port", type=tc.port, default=8800, help="status endpoint port (GET /v1/status)")


def status_app(validator, hotkey: str):
    from fastapi import FastAPI

    from template.net.http import install_error_handlers

    app = FastAPI(title="tensorswarm validator", version="1")
    install_error_handlers(app)

    @app.get("/v1/status")
    async def status() -> dict:
        s = validator.state
        return {
            "hotkey": hotkey,
            "last_round": s.last_round,
            "scores": s.ema,
            "weights": s.last_weights,
            "last_weights_block": s.last_weights_block,
            "last_audits": s.last_audits,
        }

    return app


async def serve(cfg, stop: dict) -> int:
    import bittensor as bt
    from bittensor.result import ChainError

    from template.chain.client import client_for
    from template.data.store import ShardCache, shard_reader
    from template.net.http import ServerThread
    from template.net.orchestrator_client import OrchestratorClient
    from template.validator.loop import Validator
    from template.validator.state import StateError

    wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
    hotkey = wallet.hotkey.ss58_address
    state_dir = Path(cfg.state_dir or f"./state/{cfg.wallet.name}-{cfg.wallet.hotkey}")
    state_dir.mkdir(parents=True, exist_ok=True)
    async with client_for(tc.endpoint_of(cfg)) as chain:
        graph = await chain.subnets.metagraph(cfg.netuid)
        if graph is None:
            print(f"validator: error: subnet {cfg.netuid} does not exist", file=sys.stderr)
            return 1
        me = graph.by_hotkey(hotkey)
        if me is None or not me.validator_permit:
            print(
                f"validator: error: hotkey {hotkey} has no validator permit on netuid {cfg.netuid}: stake to it "
                f"(btcli stake add --netuid {cfg.netuid} --hotkey {hotkey} --amount-tao N --wallet COLDKEY) "
                "and wait for the next epoch; on the embedded chain, "
                "`python -m utils.localnet init` stakes its validator-N wallets, which hold a permit after the "
                "first epoch (a few seconds)",
                file=sys.stderr,
            )
            return 1
        orchestrator = OrchestratorClient(cfg.orchestrator_url, wallet, cfg.orchestrator_hotkey or graph.owner_hotkey)
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
                # Each validator samples independently (its own seed); the run's seed is public.
                audit_seed=int(hashlib.sha256(hotkey.encode()).hexdigest()[:15], 16),
            )
        except StateError as error:
            print(f"validator: error: {error}", file=sys.stderr)
            return 1
        if validator.state.last_round >= 0:
            # Scores continue from disk; the exact values, so a restart can be checked against the file.
            log.info(
                "resumed from %s at round %d with scores %s",
                validator.state_path,
                validator.state.last_round,
                json.dumps(validator.state.ema, sort_keys=True),
            )
        server = ServerThread(status_app(validator, hotkey), host=cfg.host, port=cfg.port).start()
        log.info(
            "validator %s: auditing run %s from %s; status on %s", hotkey, run.run_id, cfg.orchestrator_url, server.url
        )
        next_weights, failures = time.time() + cfg.weights_interval, 0
        try:
            while not stop["now"]:
                graph = await chain.subnets.metagraph(cfg.netuid) or graph
                axons = {n.hotkey: n.axon for n in graph.neurons}
                try:
                    await asyncio.to_thread(validator.step, axons)
                except Exception as error:  # one bad round must not stop the validator
                    log.warning("audit step failed: %s", error)
                if time.time() >= next_weights:
                    weights = validator.weights({n.hotkey: n.uid for n in graph.neurons})
                    try:
                        if not weights:
                            raise ChainError("no miner has a positive score yet")
                        result = await chain.execute(bt.SetWeights(cfg.netuid, weights=weights), wallet)
                        if not result.success:
                            raise ChainError(result.message)
                        validator.state.last_weights = {str(k): v for k, v in weights.items()}
                        validator.state.last_weights_block = await chain.block()
                        validator.state.save(validator.state_path)
                        log.info(
                            "set weights on %d uids: %s", len(weights), {k: round(v, 3) for k, v in weights.items()}
                        )
                        next_weights, failures = time.time() + cfg.weights_interval, 0
                    except ChainError as error:
                        failures += 1
                        delay = min(cfg.weights_interval, 2.0**failures)
                        log.warning("setting weights failed (%s); retrying in %.0fs", error, delay)
                        next_weights = time.time() + delay
                await asyncio.sleep(cfg.poll_interval)
        finally:
            server.stop()
            orchestrator.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = tc.parse_config("neurons/validator.py", argv, add_args, description=__doc__)
    state_dir = Path(cfg.state_dir or f"./state/{cfg.wallet.name}-{cfg.wallet.hotkey}")
    state_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(cfg, logfile=str(state_dir / "validator.log"))
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    return asyncio.run(serve(cfg, stop))


if __name__ == "__main__":
    raise SystemExit(main())
