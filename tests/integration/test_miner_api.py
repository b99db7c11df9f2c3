"""The meta-miner's API (``create_miner_app``, as the meta-miner serves it) on the embedded chain: a validator
hotkey that loops receipt and contribution requests is answered 429 with ``Retry-After`` past its burst,
without costing anyone else an answer, and is served again once its rate allows."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest
from bittensor.sp_core import Keypair

from template.chain.client import client_for
from template.chain.metagraph import MetagraphCache
from template.miner.api import VALIDATOR_BURST, VALIDATOR_PER_S, create_miner_app
from template.miner.receipts import ReceiptStore
from template.net.auth import Authenticator, BtAuth
from template.net.http import ServerThread
from template.wire.miner import MinerStatus
from template.wire.signing import sign_receipt
from tests.conftest import run
from tests.integration.test_supervisor import _receipt

pytestmark = pytest.mark.timeout(120)


def test_a_validator_looping_requests_is_rate_limited_alone(sim_chain, tmp_path):
    subnet = sim_chain.subnet
    miner = Keypair.create_from_uri("//tensorswarm-miner-api")
    store = ReceiptStore(tmp_path / "miner")
    store.put(sign_receipt(_receipt(miner.ss58_address, 7), miner.sign), b"abc")
    cache = MetagraphCache(lambda: client_for(sim_chain.endpoint), subnet.netuid, 60.0, 0.5)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await cache.start()
        yield
        await cache.stop()

    async def epoch():
        async with sim_chain.client() as client:
            await client.wait_for_epoch(subnet.netuid, timeout=30)  # the validator's permit

    run(epoch())
    status = MinerStatus(hotkey=miner.ss58_address, state="training")
    app = create_miner_app(Authenticator(miner.ss58_address, cache), store, lambda: status, lifespan=lifespan)
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, auth=BtAuth(subnet.validators[0], miner.ss58_address)) as http,
    ):
        deadline = time.monotonic() + 10
        while http.get("/v1/receipts", params={"round": 7}).status_code != 200:  # the permit miss refreshes
            assert time.monotonic() < deadline
            time.sleep(0.2)
        started = time.monotonic()
        answers = [http.get(path) for path in ["/v1/contribution/7", "/v1/receipts?round=7"] * VALIDATOR_BURST]
        took = time.monotonic() - started
        codes = [a.status_code for a in answers]
        assert set(codes) == {200, 429} and answers[0].content == b"abc", codes
        # The burst (less the one the permit wait used), then what the rate refilled meanwhile, and no more.
        assert VALIDATOR_BURST - 1 <= codes.count(200) <= VALIDATOR_BURST + VALIDATOR_PER_S * took, (codes, took)
        refused = [a for a in answers if a.status_code == 429]
        assert int(refused[0].headers["Retry-After"]) >= 1 and "requests a second" in refused[0].json()["detail"]
        # Everyone else is still answered: the public status, and another caller (refused for its own reason).
        assert httpx.get(server.url + "/v1/status").json()["hotkey"] == miner.ss58_address
        other = httpx.get(server.url + "/v1/receipts", auth=BtAuth(subnet.miners[0], miner.ss58_address))
        assert other.status_code == 403 and "validator permit" in other.json()["detail"]
        time.sleep(1.5 / VALIDATOR_PER_S)
        assert http.get("/v1/receipts", params={"round": 7}).status_code == 200
