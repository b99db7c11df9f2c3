"""The validator: follows the run, audits a random sample of miners each round
from evidence it can reproduce (template/validator/audit.py), keeps EMA scores
on disk, and sets weights on chain every --weights-interval seconds (within the
chain's rate limit; chain errors are retried with backoff, never fatal). The
service itself lives in template/validator/service.py; this is its entry point.

    python neurons/validator.py --subtensor.chain_endpoint sim://./localnet --netuid 1 \\
        --wallet.path ./localnet/wallets --wallet.name validator-0 \\
        --orchestrator-url http://127.0.0.1:8600 --state-dir ./state/validator-0 --port 8800
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run as `python neurons/validator.py`
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template.config import cli as tc
from template.config.logs import setup_logging
from template.net.connections import raise_fd_limit


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
    from template.net.tracking import add_tracking_args

    add_tracking_args(parser)
    g.add_argument("--host", default="127.0.0.1", help="status endpoint address")
    g.add_argument("--port", type=tc.port, default=8800, help="status endpoint port (GET /v1/status)")


def main(argv: list[str] | None = None) -> int:
    cfg = tc.parse_config("neurons/validator.py", argv, add_args, description=__doc__)
    state_dir = Path(cfg.state_dir or f"./state/{cfg.wallet.name}-{cfg.wallet.hotkey}")
    state_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(cfg, logfile=str(state_dir / "validator.log"))
    raise_fd_limit()  # its API serves any client that reaches the port: a descriptor each

    import bittensor as bt

    from template.validator.service import StartupError, serve

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
    try:
        asyncio.run(serve(cfg, wallet, state_dir, stop))
    except StartupError as error:
        print(f"validator: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
