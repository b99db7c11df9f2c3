"""The contribution agreement's endpoints over real signed HTTP (uvicorn) on the embedded chain:
``POST /v1/contributions`` and ``GET /v1/contributions/{generation}/{round}``, the decision's evidence in
``GET /v1/status`` and the included hashes in ``GET /v1/rounds``.

Five registered miners form one generation. Round 0: sender 0 sent ranks 3 and 4 a block that fails its
signature (they report nothing valid from it), and sender 1 signed two payloads, which ranks 3 and 4 received in
place of the one ranks 0–2 got. Round 1: ranks 3 and 4 never report, so the decision waits for the
deadline. Signatures are the miners' real sr25519 signatures over the contribution message.
"""

from __future__ import annotations

import hashlib
import threading
import time

import httpx
import pytest

from template import wire as p
from template.net.orchestrator_client import OrchestratorClient, OrchestratorError
from template.wire.orchestrator import ContributionDecision, ContributionReport, SignedHash, contribution_context
from template.wire.signing import contribution_message
from tests.conftest import DevChain, OrchestratorHandle, new_localnet, orchestrator_settings, run, small_corpus

pytestmark = pytest.mark.timeout(180)
N = 5
ROUND_TIMEOUT_S = 6.0  # the decision deadline is half of it: 3 s


@pytest.fixture
def swarm(tmp_path):
    """An orchestrator whose first generation waits for all five miners."""
    from orchestrator.app import create_app
    from orchestrator.service import OrchestratorService
    from template.chain.client import client_for
    from template.net.http import ServerThread
    from utils.localnet.bootstrap import bootstrap

    endpoint = new_localnet(tmp_path)

    async def setup():
        async with client_for(endpoint) as client:
            return await bootstrap(client, tmp_path / "wallets", miners=N, validators=1, tempo=10)

    chain = DevChain(endpoint, run(setup()), tmp_path / "wallets", True)
    settings = orchestrator_settings(
        tmp_path / "orch",
        chain.subnet.netuid,
        small_corpus(tmp_path),
        min_world_size=N,
        round_timeout_s=ROUND_TIMEOUT_S,
        heartbeat_timeout_s=120.0,
    )
    svc = OrchestratorService(
        settings,
        hotkey_ss58=chain.subnet.owner.hotkey.ss58_address,
        client_factory=chain.client,
        metagraph_refresh_s=1.0,
    )
    server = ServerThread(create_app(svc)).start()
    try:
        yield OrchestratorHandle(server.url, svc, chain, server)
    finally:
        server.stop()


def _signed(wallet, context: str, round_: int, rank: int, payload: bytes) -> SignedHash:
    sha = hashlib.sha256(payload).hexdigest()
    return SignedHash(
        sha256=sha, signature=bytes(wallet.hotkey.sign(contribution_message(context, round_, rank, sha))).hex()
    )


def test_members_agree_on_the_contribution_set(swarm):
    miners = swarm.chain.subnet.miners
    clients = [OrchestratorClient(swarm.url, m, swarm.hotkey, retry_s=0) for m in miners]
    try:
        for c in clients:
            c.join()
        a = clients[0].assignment().assignment
        assert a.world_size == N
        ranked = {m.hotkey.ss58_address: m for m in miners}
        by_rank = [ranked[m.hotkey] for m in a.members]
        clients = [clients[miners.index(w)] for w in by_rank]
        context = contribution_context(a.run_id, a.generation)
        honest = [_signed(w, context, 0, r, b"delta %d" % r) for r, w in enumerate(by_rank)]
        second = _signed(by_rank[1], context, 0, 1, b"another delta 1")  # sender 1 equivocates

        def report(rank, received, round_=0):
            return ContributionReport(generation=a.generation, round=round_, received=received)

        views = {r: list(honest) for r in range(3)}
        views.update({r: [None, second, *honest[2:]] for r in (3, 4)})  # 0 sent them garbage, 1 its second
        for r in range(4):
            answer = clients[r].report_contributions(report(r, views[r]))
            assert not answer.decided and answer.reporters == list(range(r + 1))

        # Refused: a forged signature, another report from the same member, a short one, a stranger.
        forged = [*views[4][:4], honest[3]]
        with pytest.raises(OrchestratorError) as e:
            clients[4].report_contributions(report(4, forged))
        assert e.value.status == 422 and "rank 4" in e.value.detail
        with pytest.raises(OrchestratorError) as e:
            clients[0].report_contributions(report(0, [None] * N))
        assert e.value.status == 409
        with pytest.raises(OrchestratorError) as e:
            clients[4].report_contributions(report(4, views[4][:3]))
        assert e.value.status == 422
        validator = swarm.chain.subnet.validators[0]
        with OrchestratorClient(swarm.url, validator, swarm.hotkey, retry_s=0) as outsider:
            with pytest.raises(OrchestratorError) as e:
                outsider.report_contributions(report(0, views[0]))
            assert e.value.status == 409
            with pytest.raises(OrchestratorError) as e:
                outsider.contribution_decision(a.generation, 0)
            assert e.value.status == 403

        decision = clients[4].report_contributions(report(4, views[4]))
        assert decision.decided
        assert decision.included == [honest[0].sha256, None, *(h.sha256 for h in honest[2:])]
        assert decision.lacking[0] == [3, 4] and "equivocation" in decision.reasons[1]
        # Every member reads the same decision, a repeated report gets it too (idempotent).
        assert all(c.contribution_decision(a.generation, 0) == decision for c in clients)
        assert clients[0].report_contributions(report(0, views[0])) == decision

        # The evidence is counted in the public status: the equivocator once (its two signatures prove it);
        # nobody for sender 0's garbage (the receivers' word alone proves nothing), nobody else at all.
        status = httpx.get(swarm.url + "/v1/status").json()
        reports = {m["hotkey"]: m["reports"] for m in status["members"]}
        assert reports == {m.hotkey: int(r == 1) for r, m in enumerate(a.members)}
        kinds = {(e["kind"], e["accused"]) for e in swarm.service.coordinator.contribution_evidence()}
        assert kinds == {("equivocation", a.members[1].hotkey)}

        # The round completes; its record carries the included hashes. A member waiting for the agreement
        # on the orchestrator (a long poll) hears of it as soon as the last member reported.
        state = "ab" * 32
        held = []
        waiter = threading.Thread(target=lambda: held.append(clients[0].assignment(after_round=0, wait_s=5.0)))
        waiter.start()
        time.sleep(0.3)
        for c in clients:
            c.report_round(p.RoundReport(generation=a.generation, round=0, state=state))
        reported = time.monotonic()
        waiter.join()
        assert held[0].assignment.round == 1 and held[0].assignment.checkpoint == state
        assert time.monotonic() - reported < 2.0
        started = time.monotonic()  # nothing changes: the wait ends at its bound
        assert clients[0].assignment(after_round=1, wait_s=1.0).assignment.round == 1
        assert 0.9 <= time.monotonic() - started < 3.0

        # Round 1: ranks 3 and 4 stay silent; the decision comes at the deadline without them.
        honest1 = [_signed(w, context, 1, r, b"delta %d, round 1" % r) for r, w in enumerate(by_rank)]
        for r in range(3):
            assert not clients[r].report_contributions(report(r, honest1, round_=1)).decided
        # A member may wait for the decision on the orchestrator (a long poll), two requests at once at most.
        held = [
            threading.Thread(target=clients[1].contribution_decision, args=(a.generation, 1, 1.0)) for _ in range(2)
        ]
        for t in held:
            t.start()
        time.sleep(0.3)
        with pytest.raises(OrchestratorError) as e:
            clients[1].contribution_decision(a.generation, 1, wait_s=1.0)
        assert e.value.status == 429
        for t in held:
            t.join()
        started = time.monotonic()
        late = clients[0].agree_contributions(report(0, honest1, round_=1), timeout_s=30)
        waited = time.monotonic() - started
        assert late.decided and late.included == [h.sha256 for h in honest1] and late.reporters == [0, 1, 2]
        assert all(x == [3, 4] for x in late.lacking) and waited < ROUND_TIMEOUT_S
        assert isinstance(late, ContributionDecision)

        records = _rounds_as_validator(swarm, validator)
        assert records[0].included == decision.included and records[0].state == state
        # The dashboard's history counts what the agreed set left out, and whose: the equivocator's.
        (point,) = httpx.get(swarm.url + "/v1/history").json()["points"]
        t = swarm.service.run.training
        assert (point["members"], point["dropped"], point["dropped_members"]) == (N, 1, [a.members[1].hotkey])
        assert point["tokens"] == (N - 1) * t.inner_steps * t.batch_size * t.seq_len

        # A contribution the agreed set left out is never wanted: 410, which the uploader gives up at once
        # (a 409 it would retry); one of a round not agreed yet may still be: 409.
        with pytest.raises(OrchestratorError) as e:
            clients[1].upload_payload(0, 1, b"another delta 1")
        assert e.value.status == 410 and "no contribution of rank 1" in e.value.detail
        with pytest.raises(OrchestratorError) as e:
            clients[0].upload_payload(7, 0, b"delta 0")
        assert e.value.status == 409
    finally:
        for c in clients:
            c.close()


def _rounds_as_validator(swarm, validator) -> list[p.RoundRecord]:
    async def epoch():
        async with swarm.chain.client() as client:
            await client.wait_for_epoch(swarm.chain.subnet.netuid, timeout=30)

    run(epoch())  # the validator permit arrives with the first epoch
    with OrchestratorClient(swarm.url, validator, swarm.hotkey, retry_s=0) as client:
        for _ in range(40):
            try:
                return client.rounds()
            except OrchestratorError as error:
                assert error.status == 403
                time.sleep(0.5)
    raise AssertionError("no validator permit")
