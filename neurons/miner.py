"""One rank of the swarm. Normally spawned by neurons/meta_miner.py with its
assignment; runnable by hand with --rank/--world-size/--tcp-store-address/
--tcp-store-port/--store-prefix/--generation.

    join the group  →  catch up to the global state  →  for each round:
        train H steps on (seed, round, hotkey)'s samples, exchange signed
        compressed contributions, aggregate, outer step → receipt → report
        the new state hash → wait until every member agreed → next round

Exit codes (template/miner/exit_codes.py) tell the meta-miner why it stopped.
"""
# The docstring above is --help's description. This file is the entry point (flags, logging,
# wallet); the rounds are run by template/miner/round_manager.py.

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python neurons/miner.py`: make the repo importable
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template.config import cli as tc
from template.config.logs import setup_logging


def add_args(parser) -> None:
    g = parser.add_argument_group("miner")
    g.add_argument("--orchestrator-url", required=True)
    g.add_argument(
        "--orchestrator-hotkey",
        default=None,
        help="the orchestrator's hotkey (default: the subnet owner's hotkey from the metagraph)",
    )
    g.add_argument(
        "--work-dir",
        type=tc.expanded_path,
        default="./state/miner",
        help="dataset cache, local global states, receipts, progress",
    )
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    g.add_argument(
        "--timeout", type=tc.positive_float, default=60.0, help="seconds before a silent peer fails a collective"
    )
    g.add_argument("--max-rounds", type=tc.non_negative_int, default=0, help="stop after N rounds (0: run on)")
    g.add_argument(
        "--standby",
        action="store_true",
        help="load everything, then wait for a line on stdin before starting (the meta-miner's warm spare); "
        "stdin closed without one: exit 0",
    )
    m = parser.add_argument_group("manual assignment (normally fetched from the orchestrator)")
    m.add_argument("--rank", type=tc.non_negative_int, default=None)
    m.add_argument("--world-size", type=tc.positive_int, default=None)
    m.add_argument("--tcp-store-address", default=None)
    m.add_argument("--tcp-store-port", type=tc.port, default=None)
    m.add_argument("--store-prefix", default=None)
    m.add_argument("--generation", type=tc.non_negative_int, default=None)


def main(argv: list[str] | None = None) -> int:
    parser = tc.build_parser("neurons/miner.py", __doc__, add_args)
    cfg = tc.Config.from_namespace(parser.parse_args(argv))
    from template.miner.assignment import MANUAL, manual_flags
    from template.miner.round_manager import run_miner  # after parsing: --help skips torch

    if manual_flags(cfg) and not all(getattr(cfg, name) is not None for name in MANUAL):
        parser.error("--rank, --world-size, --tcp-store-address, --tcp-store-port and --store-prefix go together")
    if cfg.rank is not None and cfg.rank >= cfg.world_size:
        parser.error(f"--rank {cfg.rank} must be below --world-size {cfg.world_size}")
    work = Path(cfg.work_dir)
    (work / "states").mkdir(parents=True, exist_ok=True)
    setup_logging(cfg, logfile=str(work / "miner.log"))

    import bittensor as bt

    wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
    if cfg.standby:  # a spare: the imports above, and torch's first-use loading, are what it saves
        from template.engine.trainer import warm_up

        try:
            warm_up()
        except Exception as error:  # a spare is an optimization: it serves cold rather than not at all
            logging.getLogger("tensorswarm.miner").warning("the spare's warm-up failed: %s", error)
        if not sys.stdin.readline():
            return 0
        # Started: its stdin is no longer the spare's pipe, which is how tools tell a waiting spare
        # (utils.procs.is_waiting_spare) from this miner, whose command line still says --standby.
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    return run_miner(cfg, wallet, work)


if __name__ == "__main__":
    raise SystemExit(main())
