"""The embedded chain the swarm benchmarks run on (``byzantine.py``, ``chaos.py``): miner wallets and
one validator registered by ``python -m utils.localnet init``, the serving rate limit lifted (each run's
meta-miners publish their axons again), the validator's permit waited for. Imported from the scripts'
own directory."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A benchmark's flag parser: ``--help`` shows its docstring as written; a bad flag is one line on
    stderr and exit status 2."""

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"{self.prog}: error: {message}\n")

    return Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def bench_env(tmp: Path, processes: int) -> dict:
    """The environment a benchmark's processes run with: ``processes`` torch processes share the CPUs,
    the SDK's caches live in ``tmp``, output is unbuffered, and the repository is importable."""
    from utils.procs import shared_cpu_env

    return {
        **shared_cpu_env(processes),
        "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp / "token_symbols.json"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def create_chain(chain_dir: Path, env: dict, netuid: int, miners: int, *init_flags: str) -> dict[str, str]:
    """Make the chain; returns wallet name -> hotkey."""
    command = [sys.executable, "-m", "utils.localnet", "init", "--dir", str(chain_dir)]
    command += ["--miners", str(miners), "--validators", "1", *init_flags]
    init = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if init.returncode != 0:
        raise RuntimeError(f"localnet init failed:\n{init.stdout[-2000:]}{init.stderr[-2000:]}")
    from utils.localnet.cli import wallet_names

    hotkeys = {name: hotkey for hotkey, name in wallet_names(chain_dir).items()}
    asyncio.run(_settle(f"sim://{chain_dir}", netuid, hotkeys["validator-0"]))
    return hotkeys


async def _settle(endpoint: str, netuid: int, validator: str) -> None:
    import bittensor as bt

    from template.chain.client import client_for
    from utils.localnet.bootstrap import sudo

    async with client_for(endpoint) as client:
        await sudo(client, bt.calls.AdminUtils.sudo_set_serving_rate_limit(netuid, 0), "serving rate limit")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            me = (await client.subnets.metagraph(netuid)).by_hotkey(validator)
            if me is not None and me.validator_permit:
                return
            await asyncio.sleep(0.5)
    raise RuntimeError("the validator got no permit within 120 s")


def wallet(chain_dir: Path, name: str):
    import bittensor as bt

    return bt.Wallet(name, "default", str(chain_dir / "wallets"))


def chain_flags(chain_dir: Path, netuid: int, wallet_name: str) -> list[str]:
    """A neuron's chain and wallet flags on this chain."""
    return [
        "--subtensor.chain_endpoint",
        f"sim://{chain_dir}",
        "--netuid",
        str(netuid),
        "--wallet.path",
        str(chain_dir / "wallets"),
        "--wallet.name",
        wallet_name,
    ]


def trained(rounds: list, training: dict, t0: float, t1: float) -> tuple[int, int]:
    """Of ``rounds`` (``/v1/rounds`` records), those agreed in [t0, t1] and the tokens they trained into
    the model: the contributions each included (every member's, for a strategy without an agreed
    contribution set) × H × batch size × sequence length."""
    per_rank = training["inner_steps"] * training["batch_size"] * training["seq_len"]
    count = tokens = 0
    for r in rounds:
        if t0 <= r.completed_at <= t1:
            count += 1
            ranks = len(r.members) if r.included is None else sum(1 for h in r.included if h is not None)
            tokens += ranks * per_rank
    return count, tokens


def figure(name: str, value, unit: str, digits: str = ".4g") -> None:
    """One figure per line: name, value, unit."""
    text = str(value) if isinstance(value, int) else format(value, digits)
    print(f"{name} {text} {unit}", flush=True)
