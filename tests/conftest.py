"""Shared fixtures: a bootstrapped dev subnet on the embedded chain, or on a real
node when ``TENSORSWARM_NODE_ENDPOINT=ws://…`` is set (tests marked ``real_node``).

Layout: ``unit/`` (pure functions and single components, no processes), ``integration/`` (real
processes, HTTP servers and process groups on the embedded chain), ``node/`` (the chain SDK flows,
which also run against a real subtensor node)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

# The suite starts many torch processes on few cores (miners, validators, ranks): one OpenMP thread each,
# or they wait on each other's threads (utils.procs.shared_cpu_env says what that costs). Set before
# anything imports torch, so this process and every process it starts agree (float results depend on it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from bittensor.sp_core import Keypair

from template.chain.client import client_for
from utils.localnet.bootstrap import Subnet, bootstrap

# TENSORSWARM_E2E_ENDPOINT is the variable's earlier name, still honoured.
NODE_ENDPOINT = os.environ.get("TENSORSWARM_NODE_ENDPOINT") or os.environ.get("TENSORSWARM_E2E_ENDPOINT")
DEV_BALANCE = 1_000_000 * 10**9


# scripts/test.sh runs the suite on two pytest-xdist workers (--dist loadgroup). Whole swarms — many processes
# each, with timeouts sized for one swarm on the machine — run one at a time, on one worker, while the other
# works through the rest, module by module; the network-namespace tests (fixed namespace and bridge names) sit
# with the swarms too. Two small swarms whose waits are minutes, not a protocol's seconds (the token-dataset
# run's memory, the dashboard's page), run with the rest: the swarms' worker was the suite's critical path.
SWARMS = {
    "test_adversaries_e2e.py",
    "test_bench_byzantine.py",
    "test_bench_chaos.py",
    "test_bench_wan.py",
    "test_byzantine_e2e.py",
    "test_dawdler_e2e.py",
    "test_demo_e2e.py",
    "test_liveness_e2e.py",
    "test_multihost_e2e.py",
    "test_split_sender_e2e.py",
    "test_swarm_e2e.py",
    "test_validators_e2e.py",
    "test_withholding_e2e.py",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # Every other module stays whole on one worker: its tests keep their order and share its fixtures (the
    # chain-flow tests build on each other's blocks). First: xdist's own hook reads the marks to group the
    # tests, and hooks registered after a conftest run before it.
    for item in items:
        group = "swarms" if item.path.name in SWARMS else str(item.path.relative_to(config.rootpath))
        item.add_marker(pytest.mark.xdist_group(group))


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
                pytest.mark.real_node,
                pytest.mark.skipif(not NODE_ENDPOINT, reason="TENSORSWARM_NODE_ENDPOINT not set"),
            ],
        ),
    ]
)
def dev_chain(request, tmp_path) -> DevChain:
    """Subnet with 3 miners and 1 staked validator, tempo 10 (embedded chain, or a real node)."""
    simulated = request.param == "sim"
    return _dev_chain(new_localnet(tmp_path) if simulated else NODE_ENDPOINT, tmp_path, simulated)


@pytest.fixture
def sim_chain(tmp_path) -> DevChain:
    """The same subnet, on the embedded chain only (whole-swarm runs of many processes)."""
    return _dev_chain(new_localnet(tmp_path), tmp_path, True)


@pytest.fixture
def sim_chain_two_validators(tmp_path) -> DevChain:
    """3 miners and 2 staked validators, on the embedded chain."""
    return _dev_chain(new_localnet(tmp_path), tmp_path, True, validators=2)


def _dev_chain(endpoint: str, tmp_path: Path, simulated: bool, validators: int = 1) -> DevChain:
    wallets = tmp_path / "wallets"

    async def setup():
        async with client_for(endpoint) as client:
            return await bootstrap(client, wallets, miners=3, validators=validators, tempo=10)

    return DevChain(endpoint, run(setup()), wallets, simulated)


@pytest.fixture(autouse=True)
def _symbols_cache(tmp_path, monkeypatch):
    # Client.connect caches token symbols on disk; keep it out of $HOME.
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))


@dataclass
class OrchestratorHandle:
    url: str
    service: object
    chain: DevChain
    server: object

    @property
    def hotkey(self) -> str:
        return self.service.hotkey

    def client(self, wallet, **kw):
        """An httpx client signing as ``wallet`` for this orchestrator."""
        import httpx

        from template.net.auth import BtAuth

        return httpx.Client(base_url=self.url, auth=BtAuth(wallet, self.hotkey), timeout=30, **kw)


def small_corpus(directory: Path, size: int = 96 * 1024) -> Path:
    """A deterministic text corpus big enough for a dozen 8 KiB shards."""
    import random

    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "swarm", "tensor", "miner", "round", "train", "loss"]
    text = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
        text.append(line)
        total += len(line)
    path = directory / "corpus.txt"
    path.write_text("".join(text))
    return path


def orchestrator_settings(state_dir: Path, netuid: int, corpus: Path, **membership):
    from orchestrator.service import Settings
    from template import wire as p

    return Settings(
        state_dir=state_dir,
        netuid=netuid,
        training=p.TrainingConfig(preset="tiny", inner_steps=5, batch_size=4, seq_len=32, byzantine_fraction=0),
        membership=p.MembershipConfig(**{"heartbeat_timeout_s": 5.0, "rejoin_cooldown_s": 2.0, **membership}),
        dataset_path=corpus,
        shard_size=8 * 1024,
        store_port=0,
        tick_s=0.2,
    )


@pytest.fixture
def orchestrator(dev_chain, tmp_path):
    """A real orchestrator (uvicorn in a thread) for the dev subnet, owner's hotkey."""
    from orchestrator.app import create_app
    from orchestrator.service import OrchestratorService
    from template.net.http import ServerThread

    settings = orchestrator_settings(tmp_path / "orch", dev_chain.subnet.netuid, small_corpus(tmp_path))
    settings.tensorboard_dir = tmp_path / "tensorboard"  # the owner's optional tracking, on for every test
    svc = OrchestratorService(
        settings,
        hotkey_ss58=dev_chain.subnet.owner.hotkey.ss58_address,
        client_factory=dev_chain.client,
        metagraph_refresh_s=1.0,
    )
    server = ServerThread(create_app(svc)).start()
    try:
        yield OrchestratorHandle(server.url, svc, dev_chain, server)
    finally:
        server.stop()
