"""Shared fixtures: a bootstrapped dev subnet on the embedded chain, or on a real
node when ``TENSORSWARM_E2E_ENDPOINT=ws://…`` is set."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from bittensor.sp_core import Keypair

from template.chain import client_for
from utils.localnet.bootstrap import Subnet, bootstrap

E2E_ENDPOINT = os.environ.get("TENSORSWARM_E2E_ENDPOINT")
DEV_BALANCE = 1_000_000 * 10**9


def run(coro):
    return asyncio.run(coro)


def new_localnet(directory: Path, block_time: float = 0.25) -> str:
    """An empty embedded chain (dev accounts funded, //Alice sudo); returns its endpoint."""
    from utils.localnet.runtime import Chain

    balances = {Keypair.create_from_uri(u).ss58_address: DEV_BALANCE for u in ("//Alice", "//Bob", "//Charlie")}
    Chain.create(
        directory / "chain.sqlite",
        block_time=block_time,
        balances=balances,
        sudo=Keypair.create_from_uri("//Alice").ss58_address,
    ).store.close()
    return f"sim://{directory}"


@dataclass
class DevChain:
    endpoint: str
    subnet: Subnet
    wallets_dir: Path
    simulated: bool

    def client(self):
        return client_for(self.endpoint)


@pytest.fixture(
    params=[
        "sim",
        pytest.param(
            "node",
            marks=[
                pytest.mark.e2e,
                pytest.mark.skipif(not E2E_ENDPOINT, reason="TENSORSWARM_E2E_ENDPOINT not set"),
            ],
        ),
    ]
)
def dev_chain(request, tmp_path) -> DevChain:
    """Subnet with 3 miners and 1 staked validator, tempo 10."""
    endpoint = new_localnet(tmp_path) if request.param == "sim" else E2E_ENDPOINT
    wallets = tmp_path / "wallets"

    async def setup():
        async with client_for(endpoint) as client:
            return await bootstrap(client, wallets, miners=3, validators=1, tempo=10)

    return DevChain(endpoint, run(setup()), wallets, request.param == "sim")


@pytest.fixture(autouse=True)
def _symbols_cache(tmp_path, monkeypatch):
    # Client.connect caches token symbols on disk; keep it out of $HOME.
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))
