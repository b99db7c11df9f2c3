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

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python neurons/meta_miner.py`
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template.config import cli as tc
from template.config.logs import setup_logging
from template.net.connections import raise_fd_limit

# The docstring above is --help's description. This file is the entry point (flags, logging,
# wallet, signals); the supervision loop is template/miner/meta.py.
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
    g.add_argument(
        "--spare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep a warm spare miner (interpreter and torch loaded, waiting) to replace a crashed one at once; "
        "--no-spare saves its memory (a few hundred MB)",
    )
    a = parser.add_argument_group("axon (the HTTP endpoint validators reach)")
    a.add_argument("--axon.ip", default="127.0.0.2", help="listen address")
    a.add_argument("--axon.port", type=tc.port, default=8091)
    a.add_argument("--axon.external_ip", default=None, help="address published on chain (default: --axon.ip)")
    a.add_argument("--axon.external_port", type=tc.port, default=None, help="default: --axon.port")


def main(argv: list[str] | None = None) -> int:
    cfg = tc.parse_config("neurons/meta_miner.py", argv, add_args, description=__doc__)
    work = Path(cfg.work_dir or f"./state/{cfg.wallet.name}-{cfg.wallet.hotkey}")
    (work / "miner").mkdir(parents=True, exist_ok=True)
    setup_logging(cfg, logfile=str(work / "meta_miner.log"))
    raise_fd_limit()  # its API serves any client that reaches the port: a descriptor each

    import bittensor as bt

    from template.miner.meta import MetaMiner, check_chain

    wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
    orchestrator_hotkey = asyncio.run(check_chain(cfg, wallet.hotkey.ss58_address))
    meta = MetaMiner(cfg, wallet, work, orchestrator_hotkey)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, meta.stop)
    return meta.run()


if __name__ == "__main__":
    raise SystemExit(main())
