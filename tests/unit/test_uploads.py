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
