"""Set up a development subnet through the SDK: the same steps on the embedded
chain and on a real local node (``ws://``), because every step is an ordinary
signed extrinsic sent through ``bt.Client``.

Wallets are created under ``wallets_dir`` (btcli layout, no password), funded
from //Alice, then: subnet created by ``owner``, tempo set by sudo, subnet
started, every hotkey registered, validators staked so they hold a permit
after the first epoch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import bittensor as bt
from bittensor.result import ErrorCode
from bittensor.sp_core import Keypair

from .store import LocalnetError

TAO = 10**9
OWNER_FUNDS_TAO = 10_000
VALIDATOR_FUNDS_TAO = 10_000
MINER_FUNDS_TAO = 100
VALIDATOR_STAKE_TAO = 1_000


@dataclass
class Subnet:
    netuid: int
    owner: bt.Wallet
    validators: list
    miners: list


def create_wallet(root: Path, name: str):
    """A password-less wallet with hotkey ``default`` (btcli-compatible layout)."""
    return bt.wallets.create(name, "default", path=str(root), use_password=False, on_mnemonic=lambda kind, m: None)


def check(result, what: str):
    if not result.success:
        raise LocalnetError(f"{what} failed: {result.message}")
    return result


async def sudo(client, call, what: str) -> None:
    inner = await client.compose(call)
    alice = Keypair.create_from_uri("//Alice")
    check(await client.submit_call(bt.calls.Sudo.sudo(call=inner), alice), what)


async def fund(client, address: str, amount_tao: int) -> None:
    alice = Keypair.create_from_uri("//Alice")
    check(await client.execute(bt.Transfer(address, amount_tao), alice), f"fund {address}")


async def register(client, wallet, netuid: int) -> None:
    """BurnedRegister (MEV-shielded, as `execute` sends it), retrying a block later
    when the per-block registration limit is hit."""
    for _ in range(40):
        result = await client.execute(bt.BurnedRegister(netuid), wallet)
        if result.success or result.error is None or result.error.code != ErrorCode.RATE_LIMITED:
            break
        await asyncio.sleep(await client.block_time())
    check(result, f"register {wallet.name}")


async def bootstrap(
    client,
    wallets_dir: Path,
    *,
    miners: int,
    validators: int,
    tempo: int = 10,
    weights_rate_limit: Optional[int] = None,
) -> Subnet:
    owner = create_wallet(wallets_dir, "owner")
    vals = [create_wallet(wallets_dir, f"validator-{i}") for i in range(validators)]
    mins = [create_wallet(wallets_dir, f"miner-{i}") for i in range(miners)]
    await fund(client, owner.coldkeypub.ss58_address, OWNER_FUNDS_TAO)
    for w in vals:
        await fund(client, w.coldkeypub.ss58_address, VALIDATOR_FUNDS_TAO)
    for w in mins:
        await fund(client, w.coldkeypub.ss58_address, MINER_FUNDS_TAO)

    result = check(await client.execute(bt.RegisterSubnet(), owner), "create subnet")
    netuid = int(result.data["netuid"])
    # Local tempos are below the owner-settable range (360..50400): root sets
    # them, as on a fast-runtime node.
    await sudo(client, bt.calls.AdminUtils.sudo_set_tempo(netuid, tempo), "set tempo")
    if weights_rate_limit is not None:
        await sudo(
            client,
            bt.calls.AdminUtils.sudo_set_weights_set_rate_limit(netuid, weights_rate_limit),
            "set weights rate limit",
        )
    # Reveals need drand, unreachable offline: weights are set in the clear.
    check(
        await client.execute(bt.SetHyperparameter(netuid, "commit_reveal_weights_enabled", False), owner),
        "disable commit-reveal",
    )
    for _ in range(200):  # a real node enforces a start delay after registration
        result = await client.execute(bt.StartCall(netuid), owner)
        if result.success:
            break
        await asyncio.sleep(await client.block_time())
    check(result, "start subnet")
    for w in vals + mins:
        await register(client, w, netuid)
    for w in vals:
        check(
            await client.execute(
                bt.AddStake(w.hotkey.ss58_address, netuid, VALIDATOR_STAKE_TAO, slippage_protection=False),
                w,
            ),
            f"stake {w.name}",
        )
    return Subnet(netuid, owner, vals, mins)
