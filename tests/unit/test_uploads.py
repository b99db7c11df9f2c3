"""The background uploader of agreed states (``template/miner/uploads.py``): offering never waits for
the network, the newest state wins, and the ranks take turns."""

from __future__ import annotations

import threading
import time

from template.miner.uploads import StateUploader, uploads_round


class SlowOrchestrator:
    """Takes 0.3 s per upload (a slow uplink); the first upload fails until ``fail_first`` is cleared."""

    def __init__(self, fail_first: bool = False):
        self.got: list[str] = []
        self.fail_first = fail_first
        self.gate = threading.Event()

    def upload_checkpoint(self, sha, data):
        time.sleep(0.3)
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("orchestrator restarting")
        self.got.append(sha)
        self.gate.set()


def test_offers_never_wait_and_the_newest_state_wins():
    orch = SlowOrchestrator()
    up = StateUploader(orch)
    up.offer("s0", b"x" * 1000)
    while up.pending is not None:  # the uploader took s0 and is sending it
        time.sleep(0.01)
    t0 = time.monotonic()
    for r in range(1, 5):
        up.offer(f"s{r}", b"x" * 1000)
    assert time.monotonic() - t0 < 0.1  # the rounds go on while the upload runs
    deadline = time.monotonic() + 5
    while orch.got[-1:] != ["s4"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orch.got == ["s0", "s4"]  # s1..s3 were superseded while s0 was on the wire
    assert up.skipped == 3 and up.uploaded == ["s0", "s4"]
    up.close(timeout_s=2)
    assert not up.thread.is_alive()


def test_a_failed_upload_does_not_stop_the_next():
    orch = SlowOrchestrator(fail_first=True)
    up = StateUploader(orch)
    up.offer("s0", b"x")
    time.sleep(0.5)
    up.offer("s1", b"x")
    assert orch.gate.wait(3)
    assert orch.got == ["s1"]
    up.close(timeout_s=2)


def test_ranks_take_turns_every_kth_round():
    assert [r for r in range(8) if uploads_round(r, 1, 4)] == [1, 5]
    assert all(sum(uploads_round(r, k, 3) for k in range(3)) == 1 for r in range(9))
    # every 5th state (after rounds 4, 9, 14, ...), the ranks in turn
    assert [r for r in range(30) if any(uploads_round(r, k, 2, every=5) for k in range(2))] == [4, 9, 14, 19, 24, 29]
    assert [r for r in range(30) if uploads_round(r, 1, 2, every=5)] == [9, 19, 29]


class RestartingOrchestrator:
    """Refuses each contribution with ``status`` the first ``refusals`` times (an orchestrator that restarted
    and has not yet recorded the round: 409), then takes it."""

    def __init__(self, status: int, refusals: int):
        self.status, self.refusals = status, refusals
        self.tries: dict = {}
        self.got: list = []
        self.done = threading.Event()

    def upload_payload(self, round_, rank, payload):
        from template.net.orchestrator_client import OrchestratorError

        n = self.tries[round_] = self.tries.get(round_, 0) + 1
        if n <= self.refusals:
            raise OrchestratorError(self.status, f"round {round_} is not agreed")
        self.got.append((round_, rank, payload))
        self.done.set()


def test_a_contribution_refused_for_now_is_sent_again(monkeypatch):
    import template.miner.uploads as uploads

    monkeypatch.setattr(uploads, "PAYLOAD_RETRY_S", 0.05)
    orch = RestartingOrchestrator(409, refusals=2)
    up = StateUploader(orch)
    up.offer_payload(8, 1, b"p8")
    assert orch.done.wait(3)
    assert orch.got == [(8, 1, b"p8")] and orch.tries == {8: 3}
    up.close(timeout_s=2)


def test_a_final_refusal_or_too_many_tries_gives_the_contribution_up(monkeypatch):
    import template.miner.uploads as uploads

    monkeypatch.setattr(uploads, "PAYLOAD_RETRY_S", 0.01)
    forbidden = RestartingOrchestrator(403, refusals=1)
    up = StateUploader(forbidden)
    up.offer_payload(3, 0, b"p3")
    time.sleep(0.5)
    assert forbidden.tries == {3: 1} and not forbidden.got  # 403 is final: asked once
    up.close(timeout_s=2)

    down = RestartingOrchestrator(503, refusals=100)
    up = StateUploader(down)
    up.offer_payload(4, 0, b"p4")
    deadline = time.monotonic() + 5
    while down.tries.get(4, 0) < uploads.PAYLOAD_TRIES and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    assert down.tries == {4: uploads.PAYLOAD_TRIES} and not up.payloads  # given up, not kept forever
    up.close(timeout_s=2)


def test_a_waiting_retry_does_not_hold_up_the_states(monkeypatch):
    import template.miner.uploads as uploads

    monkeypatch.setattr(uploads, "PAYLOAD_RETRY_S", 30.0)

    class Both(RestartingOrchestrator):
        def upload_checkpoint(self, sha, data):
            self.got.append(sha)

    orch = Both(409, refusals=5)
    up = StateUploader(orch)
    up.offer_payload(2, 0, b"p2")
    time.sleep(0.2)
    up.offer("s2", b"x")
    deadline = time.monotonic() + 3
    while "s2" not in orch.got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert orch.got == ["s2"] and len(up.payloads) == 1  # the refused contribution waits its turn
    up.close(timeout_s=2)


def test_the_backlog_is_bounded_in_bytes(monkeypatch):
    import template.miner.uploads as uploads

    monkeypatch.setattr(uploads, "PAYLOAD_BACKLOG_BYTES", 1000)
    gate = threading.Event()

    class Stuck:
        def upload_payload(self, round_, rank, payload):
            gate.wait(5)  # the uplink is busy with the first one

    up = StateUploader(Stuck())
    up.offer_payload(0, 0, bytes(300))
    while up.payloads:  # the uploader took round 0
        time.sleep(0.01)
    for r in range(1, 10):
        up.offer_payload(r, 0, bytes(300))
    time.sleep(0.2)
    with up.cond:
        held = [item[0] for item in up.payloads]
    assert held == [7, 8, 9]  # round 0 on the wire; the newest that fit in 1000 bytes wait
    gate.set()
    up.close(timeout_s=2)


def test_past_the_bounds_the_oldest_round_goes_even_when_it_was_queued_again(monkeypatch):
    """A refused contribution is queued again behind fresher ones; when the backlog is full it is the one
    dropped (the oldest round), not the fresh contribution at the head. The count is bounded too."""
    import template.miner.uploads as uploads

    monkeypatch.setattr(uploads, "PAYLOAD_BACKLOG", 3)
    up = StateUploader(RestartingOrchestrator(409, refusals=0))
    with up.cond:  # as the uploader leaves it: round 5 fresh, then round 1 back from a refusal, then round 6
        for item in ((5, 0, b"p5", 0, 0.0), (1, 0, b"p1", 1, time.monotonic() + 60), (6, 0, b"p6", 0, 0.0)):
            up._keep(item)
        up._keep((7, 0, b"p7", 0, 0.0))
        held = sorted(item[0] for item in up.payloads)
    assert held == [5, 6, 7]
    up.close(timeout_s=2)
