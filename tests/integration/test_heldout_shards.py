"""Held-out shards are the validators' measuring stick: the orchestrator serves them, over real signed
HTTP, only to hotkeys with a validator permit; training shards stay open to every registered hotkey."""

from __future__ import annotations

import hashlib
import time

import pytest

from template.data.store import ShardCache, shard_reader
from template.net.orchestrator_client import OrchestratorClient, OrchestratorError
from tests.conftest import run
from utils.localnet.bootstrap import create_wallet

pytestmark = pytest.mark.timeout(180)


def _manifest(orchestrator):
    return orchestrator.service.manifest


def test_heldout_shards_are_served_to_validators_only(orchestrator, tmp_path):
    subnet = orchestrator.chain.subnet
    miner, validator = subnet.miners[0], subnet.validators[0]
    manifest = _manifest(orchestrator)
    training, heldout = manifest.train_shards[0], manifest.heldout_shards[0]

    with orchestrator.client(miner) as http:
        ok = http.get(f"/v1/data/{training.sha256}")
        assert ok.status_code == 200 and hashlib.sha256(ok.content).hexdigest() == training.sha256
        for shard in manifest.heldout_shards:
            denied = http.get(f"/v1/data/{shard.sha256}")
            assert denied.status_code == 403, denied.text
            detail = denied.json()["detail"]
            assert "validators only" in detail and miner.hotkey.ss58_address in detail
            assert denied.content != shard.sha256.encode() and len(denied.content) < 500  # no shard bytes
    stranger = create_wallet(orchestrator.chain.wallets_dir.parent / "extra", "stranger")
    with orchestrator.client(stranger) as http:
        for shard in (training, heldout):
            refused = http.get(f"/v1/data/{shard.sha256}")
            assert refused.status_code == 403 and "not registered" in refused.json()["detail"]

    async def epoch():
        async with orchestrator.chain.client() as client:
            await client.wait_for_epoch(subnet.netuid, timeout=30)

    run(epoch())  # validator permits arrive with the first epoch
    # The validator's own client and shard cache (what template.validator.service builds): the permit is
    # picked up by the orchestrator's refresh on a permit miss, within seconds.
    with OrchestratorClient(orchestrator.url, validator, orchestrator.hotkey) as client:
        data = None
        for _ in range(20):
            try:
                data = client.shard(heldout.sha256)
                break
            except OrchestratorError as error:
                assert error.status == 403, error
                time.sleep(0.5)
        assert data is not None and hashlib.sha256(data).hexdigest() == heldout.sha256
        read = shard_reader(manifest, ShardCache(tmp_path / "cache", client.shard).get)
        assert read(heldout.index) == data and len(read(training.index)) == training.size
    # …and a miner still cannot, after the epoch either.
    with orchestrator.client(miner) as http:
        assert http.get(f"/v1/data/{heldout.sha256}").status_code == 403
