"""``python -m orchestrator``: the subnet owner's orchestrator service.

    python -m orchestrator --subtensor.chain_endpoint sim://./localnet --netuid 1 \\
        --wallet.path ./localnet/wallets --wallet.name owner --state-dir ./state/orchestrator

On a stopped orchestrator, ``python -m orchestrator rollback --state-dir DIR --to-round R`` makes the
state agreed after round R the current one (``orchestrator.rollback``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from template import wire as p
from template.config import cli as tc
from template.config.flags import ModelFlags
from template.config.logs import setup_logging
from template.config.presets import PRESETS, RUN_FIELDS, defaults_by_preset
from template.config.run import SPARSE_DEFAULTS
from template.net.connections import guarded_http, raise_fd_limit
from template.net.tracking import add_tracking_args

from . import membership

log = logging.getLogger("tensorswarm.orchestrator")
# Open HTTP connections one address may hold (template.net.connections): more than a miner's or a
# validator's, since several members may share an address (one host's miners, a NAT).
ORCHESTRATOR_PER_ADDRESS = 256

# The run's flags are its config's fields (names, types, choices, help, bounds), spelled once in
# template.config.run; left out, a field takes the --run-config file's value, then the preset's.
TRAINING_FLAGS = ModelFlags(
    p.TrainingConfig,
    choices={"preset": list(PRESETS)},
    default_help={
        **{field: f"the preset's: {defaults_by_preset(field)}" for field in RUN_FIELDS},
        "vocab_size": "256 (bytes), or a tokenized --dataset's",
        **{
            field: f"{p.TrainingConfig.model_fields[field].default}; with sparseloco {value}"
            for field, value in SPARSE_DEFAULTS.items()
        },
    },
)
MEMBERSHIP_FLAGS = ModelFlags(
    p.MembershipConfig,
    flags={  # today's names, in seconds without the fields' _s
        "heartbeat_timeout_s": "--heartbeat-timeout",
        "rejoin_cooldown_s": "--rejoin-cooldown",
        "round_timeout_s": "--round-timeout",
        "checkin_timeout_s": "--checkin-timeout",
        "straggler_grace_s": "--straggler-grace",
    },
)


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
        help="address the store tunnel listens on, that ranks connect to (must be reachable by miners; the "
        "TCPStore itself listens on 127.0.0.1 only)",
    )
    g.add_argument(
        "--tcp-store-port", type=port_or_zero, default=29500, help="the store tunnel's port; 0 = pick a free one"
    )
    g.add_argument(
        "--state-dir",
        type=tc.expanded_path,
        default="./state/orchestrator",
        help="SQLite state, dataset shards and checkpoints (survive restarts)",
    )
    g.add_argument("--keep-checkpoints", type=tc.positive_int, default=5)
    g.add_argument("--max-checkpoint-mb", type=tc.positive_int, default=1024)
    g.add_argument("--metagraph-refresh", type=tc.positive_float, default=12.0, help="seconds")

    t = parser.add_argument_group("training run (fixed for the life of --state-dir)")
    t.add_argument(
        "--run-config",
        type=tc.expanded_path,
        default=None,
        help="JSON training config (python -m template.config.presets write NAME FILE); "
        "flags override it, it overrides the preset's defaults",
    )
    t.add_argument(
        "--dataset",
        type=tc.expanded_path,
        default=None,
        help="text file or directory of text files, or a directory of token files (llm.c *.bin or *.npy; "
        "python -m template.data.tokenize makes them) (default: this Python's stdlib sources)",
    )
    t.add_argument("--dataset-max-mb", type=tc.positive_int, default=16)
    t.add_argument("--shard-size-kb", type=tc.positive_int, default=1024)
    t.add_argument("--heldout-fraction", type=tc.positive_float, default=0.05)
    TRAINING_FLAGS.add_to(t)
    MEMBERSHIP_FLAGS.add_to(parser.add_argument_group("membership"))
    add_tracking_args(parser)


def read_run_config(path: str, parser_error) -> dict:
    """The fields a ``--run-config`` file sets (validated as a whole TrainingConfig first)."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
        config = p.TrainingConfig.model_validate_json(data)
    except OSError as error:
        parser_error(f"--run-config {path}: {error.strerror or error}")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "file"
        parser_error(f"--run-config {path}: {where}: {first['msg']}")
    # Only what the file says: the rest follows the preset, which --preset may change.
    return config.model_dump(include=set(json.loads(data)))


def byzantine_world_refusal(training, members, *, min_given: bool) -> str | None:
    """Why generations of the configured size cannot tolerate the run's Byzantine fraction, naming the
    flags, or None. A --min-world-size left out is raised to the least size (3) by the service instead."""
    fraction = training.byzantine_fraction
    least = membership.least_world_size(fraction)
    for field, given in (("min_world_size", min_given), ("max_world_size", True)):
        size = getattr(members, field)
        if given and size < least:
            flag, f_flag = MEMBERSHIP_FLAGS.flag(field), TRAINING_FLAGS.flag("byzantine_fraction")
            return (
                f"{flag} {size} is below {least}, the fewest ranks in which a run with {f_flag} {fraction:g} "
                f"outvotes its Byzantine miners: raise {flag}, or pass {f_flag} 0 for a trusted run"
            )
    return None


def settings_from(cfg: tc.Config, parser_error):
    """The service's settings from parsed flags. Training fields: explicit flag > --run-config file >
    the preset's defaults > TrainingConfig's defaults."""
    from .service import Settings

    from_file = read_run_config(cfg.run_config, parser_error) if cfg.run_config else {}
    try:
        training = TRAINING_FLAGS.build(cfg, base=from_file)
        members = MEMBERSHIP_FLAGS.build(cfg)
    except ValueError as error:
        parser_error(str(error))
    refusal = byzantine_world_refusal(training, members, min_given="min_world_size" in MEMBERSHIP_FLAGS.given(cfg))
    if refusal:
        parser_error(refusal)
    return Settings(
        state_dir=Path(cfg.state_dir),
        netuid=cfg.netuid,
        training=training,
        membership=members,
        dataset_path=Path(cfg.dataset) if cfg.dataset else None,
        dataset_max_bytes=cfg.dataset_max_mb * 2**20,
        shard_size=cfg.shard_size_kb * 2**10,
        heldout_fraction=cfg.heldout_fraction,
        store_host=cfg.tcp_store_host,
        store_port=cfg.tcp_store_port,
        keep_checkpoints=cfg.keep_checkpoints,
        max_checkpoint_bytes=cfg.max_checkpoint_mb * 2**20,
        wandb_project=cfg.wandb_project,
        tensorboard_dir=Path(cfg.tensorboard_dir) if cfg.tensorboard_dir else None,
    )


def _few_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own heap arena (up to 8 per core), and a long-running
    server's HTTP and store threads each keep one partly used: cap them (mallopt M_ARENA_MAX) before the
    threads start. Measured: the orchestrator's peak RSS over a run that serves 200 MB of shards."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rollback"]:
        from .rollback import main as rollback

        return rollback(argv[1:])
    parser = tc.build_parser("python -m orchestrator", __doc__, add_args)
    cfg = tc.Config.from_namespace(parser.parse_args(argv))
    settings = settings_from(cfg, parser.error)
    setup_logging(cfg, logfile=str(Path(cfg.state_dir) / "orchestrator.log"))
    _few_malloc_arenas()
    # Every admitted store-tunnel connection holds three descriptors, beside HTTP, SQLite and
    # checkpoint files: take all the process may have (the soft limit is often 1024).
    raise_fd_limit()

    import bittensor as bt
    import uvicorn

    from template.chain.client import client_for
    from template.wire.dataset import DatasetError

    from .app import create_app
    from .runs import RunMismatch
    from .service import OrchestratorService

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
        "orchestrator %s on http://%s:%d, store tunnel %s:%d (TCPStore on 127.0.0.1:%d), netuid %d, chain %s, run %s",
        hotkey,
        cfg.host,
        cfg.port,
        settings.store_host,
        svc.tunnel.port,
        svc.store.port,
        cfg.netuid,
        endpoint,
        svc.run.run_id,
    )
    # Members behind one address (a host running several miners, a NAT) share its cap of connections.
    http = guarded_http(max_per_address=ORCHESTRATOR_PER_ADDRESS)
    uvicorn.run(create_app(svc), host=cfg.host, port=cfg.port, log_level="warning", http=http)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
