"""The run's history over real signed HTTP (uvicorn) on the embedded chain: ``GET /v1/history`` (public,
bounded, paged) carries what members reported for each agreed round, and ``POST /v1/evaluation`` takes
validators' held-out losses and weights (permit holders only, agreed states only). The page that plots
it is tested in a real browser by tests/integration/test_dashboard_browser.py."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from template import wire as p
from tests.conftest import run

pytestmark = pytest.mark.timeout(180)


def _agree_rounds(orchestrator, losses: list[float]) -> list[str]:
    """One miner (a generation of one) reports and so agrees rounds 0..len(losses)-1; returns their states."""
    miner = orchestrator.chain.subnet.miners[0]
    states = []
    with orchestrator.client(miner) as http:
        joined = http.post("/v1/join", json={})
        assert joined.status_code == 200, joined.text
        a = p.AssignmentResponse.model_validate(joined.json()).assignment
        for r, loss in enumerate(losses):
            sha = hashlib.sha256(f"state {r}".encode()).hexdigest()
            report = {"generation": a.generation, "round": r, "state": sha, "loss": loss, "bytes_sent": 1000 + r}
            answer = http.post("/v1/round", json=report)
            assert answer.status_code == 200 and answer.json()["agreed"] == sha, answer.text
            states.append(sha)
    return states


def test_history_is_public_bounded_paged_and_carries_the_reported_figures(orchestrator):
    url = orchestrator.url
    empty = httpx.get(url + "/v1/history").json()
    assert empty == {"points": [], "validators": [], "next_since": 0}
    states = _agree_rounds(orchestrator, [4.0, 3.5, 3.25, 3.0, 2.5])
    h = p.History.model_validate(httpx.get(url + "/v1/history").json())
    assert [pt.round for pt in h.points] == [0, 1, 2, 3, 4] and h.next_since == 5
    training = orchestrator.service.run.training
    per_round = training.inner_steps * training.batch_size * training.seq_len
    for pt, loss in zip(h.points, [4.0, 3.5, 3.25, 3.0, 2.5]):
        assert (pt.loss, pt.loss_min, pt.loss_max) == (loss, loss, loss)
        assert pt.members == 1 and pt.dropped == 0 and pt.tokens == per_round
        assert pt.bytes_sent == 1000 + pt.round and pt.wall_s is not None and pt.wall_s >= 0
        assert pt.heldout_loss is None
    assert h.points[0].completed_at <= h.points[-1].completed_at
    # The same figures went to the owner's TensorBoard (--tensorboard-dir), round by round.
    tensorboard = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    orchestrator.service.tracker.flush()
    events = tensorboard.EventAccumulator(str(orchestrator.service.settings.tensorboard_dir))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(pt.round, pt.loss) for pt in h.points]
    assert [e.value for e in events.Scalars("bytes_sent")] == [1000.0 + r for r in range(5)]
    page = httpx.get(url + "/v1/history", params={"since": 2, "limit": 2}).json()
    assert [pt["round"] for pt in page["points"]] == [2, 3] and page["next_since"] == 4
    beyond = httpx.get(url + "/v1/history", params={"since": 99}).json()
    assert beyond["points"] == [] and beyond["next_since"] == 99
    for bad in ({"limit": 0}, {"limit": 1001}, {"since": -1}, {"since": "x"}):
        refused = httpx.get(url + "/v1/history", params=bad)
        assert refused.status_code == 422, (bad, refused.text)
    # The page and its vendored chart library are served, with nothing fetched from elsewhere.
    page_html = httpx.get(url + "/").text
    assert "/static/uPlot.iife.min.js" in page_html and "http://" not in page_html.split("<script>")[0]
    assert httpx.get(url + "/static/uPlot.iife.min.js").status_code == 200
    assert httpx.get(url + "/static/dashboard.py").status_code == 401  # not a public path: signed callers only
    with orchestrator.client(orchestrator.chain.subnet.miners[1]) as http:
        assert http.get("/static/dashboard.py").status_code == 404  # only the vendored files are served
    assert states


def test_validators_report_evaluations_of_agreed_states_only(orchestrator):
    url = orchestrator.url
    states = _agree_rounds(orchestrator, [4.0, 3.0, 2.0])
    subnet = orchestrator.chain.subnet
    validator, miner = subnet.validators[0], subnet.miners[1]
    good = {"round": 1, "state": states[1], "heldout_loss": 3.2, "weights": {"0": 0.25, "1": 0.75}}

    async def epoch():  # the validator's permit comes with the first epoch
        async with orchestrator.chain.client() as client:
            await client.wait_for_epoch(subnet.netuid, timeout=30)

    run(epoch())
    with orchestrator.client(validator) as http:
        for _ in range(20):  # the orchestrator's metagraph cache refreshes on a permit miss
            answer = http.post("/v1/evaluation", json=good)
            if answer.status_code != 403:
                break
            time.sleep(0.5)
        assert answer.status_code == 200, answer.text
        wrong_state = http.post("/v1/evaluation", json={**good, "state": states[0]})
        assert wrong_state.status_code == 409 and "another state" in wrong_state.json()["detail"]
        unagreed = http.post("/v1/evaluation", json={**good, "round": 7})
        assert unagreed.status_code == 409 and "not an agreed round" in unagreed.json()["detail"]
        for bad in ({"weights": {"0": 1.5}}, {"heldout_loss": -1}, {"heldout_loss": "nan"}, {"extra": 1}):
            refused = http.post("/v1/evaluation", json={**good, **bad})
            assert refused.status_code == 422, (bad, refused.text)
        later = {"round": 2, "state": states[2], "heldout_loss": 2.4, "weights": {"1": 1.0}}
        assert http.post("/v1/evaluation", json=later).status_code == 200
    with orchestrator.client(miner) as http:  # no validator permit
        assert http.post("/v1/evaluation", json=good).status_code == 403
    assert httpx.post(url + "/v1/evaluation", json=good).status_code == 401  # unsigned
    h = p.History.model_validate(httpx.get(url + "/v1/history").json())
    assert [pt.heldout_loss for pt in h.points] == [None, 3.2, 2.4]
    (view,) = h.validators
    assert view.hotkey == validator.hotkey.ss58_address and view.round == 2 and view.weights == {1: 1.0}
    # Only the newest evaluation keeps its weights: the table grows by a few numbers per round.
    kept = orchestrator.service.coordinator.db.execute(
        "SELECT round, weights FROM evaluations ORDER BY round"
    ).fetchall()
    assert kept == [(1, "{}"), (2, '{"1": 1.0}')]


def test_the_public_history_is_rate_limited_per_client_address(orchestrator):
    with httpx.Client(base_url=orchestrator.url) as http:  # one connection: faster than the refill (10/s)
        answers = [http.get("/v1/history", params={"limit": 1}) for _ in range(150)]
    limited = [a for a in answers if a.status_code == 429]
    assert answers[0].status_code == 200 and limited, [a.status_code for a in answers]
    assert "history request" in limited[0].json()["detail"] and int(limited[0].headers["Retry-After"]) >= 1
