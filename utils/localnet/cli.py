"""``python -m utils.localnet``: create, inspect and nudge an embedded chain.

init    create a chain, subnet 1 and funded, registered wallets
status  print the subnet's metagraph as a table
advance jump the block clock forward (dev tool)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .store import DB_NAME, LocalnetError

NETUID = 1
TAO = 10**9
DEV_ACCOUNTS = ("//Alice", "//Bob", "//Charlie")
DEV_BALANCE = 1_000_000 * TAO


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 — same contract as template.config
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m utils.localnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    init = sub.add_parser("init", help="create a chain with subnet 1 and registered wallets")
    init.add_argument("--dir", required=True, help="directory for the chain and its wallets")
    init.add_argument("--miners", type=_positive_int, default=3)
    init.add_argument("--validators", type=_positive_int, default=1)
    init.add_argument("--tempo", type=_positive_int, default=10, help="blocks per epoch (default 10)")
    init.add_argument("--block-time", type=_positive_float, default=0.25, help="seconds per block")
    init.add_argument(
        "--weights-rate-limit", type=_positive_int, default=None, help="blocks between weight sets (chain default 100)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing chain in --dir")
    status = sub.add_parser("status", help="print the subnet's metagraph")
    status.add_argument("--dir", required=True)
    status.add_argument("--netuid", type=_positive_int, default=NETUID)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    adv = sub.add_parser("advance", help="jump the chain clock forward")
    adv.add_argument("--dir", required=True)
    adv.add_argument("--blocks", type=_positive_int, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("BTCLI_TOKEN_SYMBOLS_CACHE", str(Path(args.dir) / ".token_symbols.json"))
    # A fixed width when piped, so tables stay readable in logs.
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        if args.command == "init":
            return asyncio.run(init(args, console))
        if args.command == "status":
            return asyncio.run(status(args, console))
        if args.command == "advance":
            from . import open_substrate

            head = open_substrate(args.dir).advance_blocks(args.blocks)
            console.print(f"head is now block {head}")
            return 0
    except LocalnetError as error:
        print(f"python -m utils.localnet: error: {error}", file=sys.stderr)
        return 1
    return 0


def _client(directory: str):
    import bittensor as bt

    from . import open_substrate

    return bt.Client("local", substrate=open_substrate(directory))


async def init(args, console: Console) -> int:
    from bittensor.sp_core import Keypair

    from .bootstrap import bootstrap
    from .runtime import Chain

    directory = Path(args.dir).expanduser().resolve()
    db = directory / DB_NAME
    wallets_dir = directory / "wallets"
    if db.exists() or wallets_dir.exists():
        if not args.force:
            print(
                f"python -m utils.localnet: error: {directory} already holds a localnet; pass --force to replace it",
                file=sys.stderr,
            )
            return 1
        for stale in directory.glob(DB_NAME + "*"):
            stale.unlink()
        shutil.rmtree(wallets_dir, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)

    balances = {Keypair.create_from_uri(uri).ss58_address: DEV_BALANCE for uri in DEV_ACCOUNTS}
    Chain.create(
        db, block_time=args.block_time, balances=balances, sudo=Keypair.create_from_uri("//Alice").ss58_address
    ).store.close()
    async with _client(str(directory)) as client:
        subnet = await bootstrap(
            client,
            wallets_dir,
            miners=args.miners,
            validators=args.validators,
            tempo=args.tempo,
            weights_rate_limit=args.weights_rate_limit,
        )

    endpoint = f"sim://{directory}"
    console.print(
        f"[bold green]localnet ready[/] in {directory}: subnet {subnet.netuid}, "
        f"{args.miners} miners, {args.validators} validators, tempo {args.tempo}, "
        f"block time {args.block_time}s"
    )
    console.print(f"endpoint: {endpoint}")
    console.print("neuron flags:")
    # Plain print: rich would wrap the line and break copy-paste.
    print(
        f"  --subtensor.chain_endpoint {endpoint} --netuid {subnet.netuid} "
        f"--wallet.path {wallets_dir} --wallet.name miner-0 --wallet.hotkey default"
    )
    console.print(f"validators hold a permit from the first epoch (~{(args.tempo + 1) * args.block_time:.1f}s).")
    return 0


def wallet_names(directory: Path) -> dict[str, str]:
    """hotkey ss58 → wallet name, from the btcli layout under DIR/wallets."""
    names = {}
    for pub in sorted((directory / "wallets").glob("*/hotkeys/*pub.txt")):
        try:
            address = json.loads(pub.read_text())["ss58Address"]
        except (OSError, ValueError, KeyError):
            continue
        names[address] = pub.parent.parent.name
    return names


async def status(args, console: Console) -> int:
    directory = Path(args.dir).expanduser().resolve()
    async with _client(str(directory)) as client:
        graph = await client.subnets.metagraph(args.netuid)
    if graph is None:
        print(f"python -m utils.localnet: error: subnet {args.netuid} does not exist", file=sys.stderr)
        return 1
    names = wallet_names(directory)
    rows = [
        {
            "uid": n.uid,
            "wallet": names.get(n.hotkey, ""),
            "hotkey": n.hotkey,
            "stake": n.total_stake.alpha,
            "validator_permit": n.validator_permit,
            "incentive": n.incentive,
            "dividends": n.dividends,
            "emission": n.emission.alpha,
            "axon": n.axon,
        }
        for n in graph.neurons
    ]
    if args.json:
        print(
            json.dumps({"netuid": graph.netuid, "block": graph.block, "tempo": graph.tempo, "neurons": rows}, indent=2)
        )
        return 0
    table = Table(
        title=f"subnet {graph.netuid} at block {graph.block} (tempo {graph.tempo}, last epoch {graph.last_step})"
    )
    for column in ("uid", "wallet", "hotkey", "stake α", "permit", "incentive", "dividends", "emission α", "axon"):
        table.add_column(column, justify="right" if column not in ("wallet", "hotkey", "axon") else "left")
    for r in rows:
        table.add_row(
            str(r["uid"]),
            r["wallet"],
            r["hotkey"][:12] + "…",
            f"{r['stake']:.4f}",
            "yes" if r["validator_permit"] else "",
            f"{r['incentive']:.4f}",
            f"{r['dividends']:.4f}",
            f"{r['emission']:.4f}",
            r["axon"] or "",
        )
    console.print(table)
    return 0
