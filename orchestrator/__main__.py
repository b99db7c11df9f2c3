"""``python -m orchestrator``: the subnet owner's orchestrator service.

    python -m orchestrator --subtensor.chain_endpoint sim://./localnet --netuid 1 \\
        --wallet.path ./localnet/wallets --wallet.name owner --state-dir ./state/orchestrator
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from template import wire as p
from template.config import cli as tc
from template.config.logs import setup_logging
from template.config.presets import PRESETS

log = logging.getLogger("tensorswarm.orchestrator")


def port_or_zero(value) -> int:
    """A TCP port, or 0 for an ephemeral one (handy for tests and demos)."""
    return 0 if str(value).strip() == "0" else tc.port(value)


def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("service")
    g.add_argument("--host", default="127.0.0.1", help="HTTP listen address (0.0.0.0 to expose)")
    g.add_argument("--port", type=tc.port, default=8600, help="HTTP port")
    g.add_argument(
        "--tcp-store-host",
        default="127.0.0.1",
        help="address of the TCPStore that ranks connect to (must be reachable by miners)",
    )
    g.add_argument("--tcp-store-port", type=port_or_zero, default=29500, help="0 = pick a free port")
    g.add_argument(
        "--state-dir",
        type=tc.expanded_path,
        default="./state/orchestrator",
        help="SQLite state, dataset shards and checkpoints (survive restarts)",
    )
    g.add_argument("--keep-checkpoints", type=tc.positive_int, default=5)
    g.add_argument("--max-checkpoint-mb", type=tc.positive_int, default=1024)
    g.add_argument("--metagraph-refresh", type=tc.positive_float, default=12.0, help="seconds")

    d = p.TrainingConfig()
    t = parser.add_argument_group("training run (fixed for the life of --state-dir)")
    t.add_argument(
        "--run-config",
        type=tc.expanded_path,
        default=None,
        help="JSON training config (python -m template.presets write NAME FILE); flags override it",
    )
    t.add_argument("--preset", choices=list(PRESETS), default=d.preset)
    t.add_argument(
        "--dataset",
        type=tc.expanded_path,
        default=None,
        help="text file or directory of text files (default: this Python's stdlib sources)",
    )
    t.add_argument("--dataset-max-mb", type=tc.positive_int, default=16)
    t.add_argument("--shard-size-kb", type=tc.positive_int, default=1024)
    t.add_argument("--heldout-fraction", type=tc.positive_float, default=0.05)
    t.add_argument("--strategy", choices=["diloco", "ddp", "fsdp"], default=d.strategy)
    t.add_argument("--inner-steps", type=tc.positive_int, default=d.inner_steps, help="H")
    t.add_argument("--batch-size", type=tc.positive_int, default=d.batch_size)
    t.add_argument("--seq-len", type=tc.positive_int, default=d.seq_len)
    t.add_argument("--inner-lr", type=tc.positive_float, default=d.inner_lr)
    t.add_argument("--weight-decay", type=tc.non_negative_float, default=d.weight_decay)
    t.add_argument("--outer-lr", type=tc.positive_float, default=d.outer_lr)
    t.add_argument("--outer-momentum", type=tc.non_negative_float, default=d.outer_momentum)
    t.add_argument("--compression", choices=["none", "int8", "topk", "topk_int8"], default=d.compression)
    t.add_argument("--topk-fraction", type=tc.positive_float, default=d.topk_fraction)
    t.add_argument("--aggregator", choices=["mean", "trimmed_mean", "centered_clip"], default=d.aggregator)
    t.add_argument("--trim-fraction", type=tc.non_negative_float, default=d.trim_fraction)
    t.add_argument("--clip-tau", type=tc.positive_float, default=d.clip_tau)
    t.add_argument("--seed", type=tc.non_negative_int, default=d.seed)

    m = p.MembershipConfig()
    mg = parser.add_argument_group("membership")
    mg.add_argument("--min-world-size", type=tc.positive_int, default=m.min_world_size)
    mg.add_argument("--max-world-size", type=tc.positive_int, default=m.max_world_size)
    mg.add_argument("--heartbeat-timeout", type=tc.positive_float, default=m.heartbeat_timeout_s, help="seconds")
    mg.add_argument("--rejoin-cooldown", type=tc.non_negative_float, default=m.rejoin_cooldown_s, help="seconds")
    mg.add_argument(
        "--round-timeout",
        type=tc.positive_float,
        default=m.round_timeout_s,
        help="seconds before members that have not reported (while others have) are removed",
    )


def settings_from(cfg: tc.Config, parser_error):
    from .service import Settings

    try:
        training = p.TrainingConfig(
            preset=cfg.preset,
            strategy=cfg.strategy,
            inner_steps=cfg.inner_steps,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            inner_lr=cfg.inner_lr,
            weight_decay=cfg.weight_decay,
            outer_lr=cfg.outer_lr,
            outer_momentum=cfg.outer_momentum,
            compression=cfg.compression,
            topk_fraction=cfg.topk_fraction,
            aggregator=cfg.aggregator,
            trim_fraction=cfg.trim_fraction,
            clip_tau=cfg.clip_tau,
            seed=cfg.seed,
        )
        membership = p.MembershipConfig(
            min_world_size=cfg.min_world_size,
            max_world_size=cfg.max_world_size,
            heartbeat_timeout_s=cfg.heartbeat_timeout,
            rejoin_cooldown_s=cfg.rejoin_cooldown,
            round_timeout_s=cfg.round_timeout,
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = f"--{str(first['loc'][0]).replace('_', '-')}: " if first["loc"] else ""
        parser_error(f"{where}{first['msg']}")
    return Settings(
        state_dir=Path(cfg.state_dir),
        netuid=cfg.netuid,
        training=training,
        membership=membership,
        dataset_path=Path(cfg.dataset) if cfg.dataset else None,
        dataset_max_bytes=cfg.dataset_max_mb * 2**20,
        shard_size=cfg.shard_size_kb * 2**10,
        heldout_fraction=cfg.heldout_fraction,
        store_host=cfg.tcp_store_host,
        store_port=cfg.tcp_store_port,
        keep_checkpoints=cfg.keep_checkpoints,
        max_checkpoint_bytes=cfg.max_checkpoint_mb * 2**20,
    )


def apply_run_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Defaults from --run-config FILE, so explicit flags still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--run-config")
    known, _ = pre.parse_known_args(argv)
    if not known.run_config:
        return
    path = Path(known.run_config).expanduser()
    try:
        config = p.TrainingConfig.model_validate_json(path.read_bytes())
    except OSError as error:
        parser.error(f"--run-config {path}: {error.strerror or error}")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "file"
        parser.error(f"--run-config {path}: {where}: {first['msg']}")
    parser.set_defaults(**config.model_dump())


def main(argv: list[str] | None = None) -> int:
    parser = tc.build_parser("python -m orchestrator", __doc__, add_args)
    apply_run_config(parser, argv)
    cfg = tc.Config.from_namespace(parser.parse_args(argv))
    settings = settings_from(cfg, parser.error)
    setup_logging(cfg, logfile=str(Path(cfg.state_dir) / "orchestrator.log"))

    import bittensor as bt
    import uvicorn

    from template.chain.client import client_for
    from template.wire.dataset import DatasetError

    from .app import create_app
    from .service import OrchestratorService, RunMismatch

    endpoint = tc.endpoint_of(cfg)
    try:
        wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
        hotkey = wallet.hotkey.ss58_address
        client_for(endpoint)  # fail fast on a bad sim:// path
        svc = OrchestratorService(
            settings,
            hotkey_ss58=hotkey,
            client_factory=lambda: client_for(endpoint),
            metagraph_refresh_s=cfg.metagraph_refresh,
        )
    except (RunMismatch, DatasetError, OSError, ValueError, RuntimeError) as error:
        print(f"python -m orchestrator: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # e.g. a missing or locked wallet, an unreachable chain
        print(f"python -m orchestrator: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    log.info(
        "orchestrator %s on http://%s:%d, TCPStore %s:%d, netuid %d, chain %s, run %s",
        hotkey,
        cfg.host,
        cfg.port,
        settings.store_host,
        svc.store.port,
        cfg.netuid,
        endpoint,
        svc.run.run_id,
    )
    uvicorn.run(create_app(svc), host=cfg.host, port=cfg.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
