"""Agreed states and this rank's agreed contributions to the orchestrator, off the training path:
``StateUploader`` sends them from a background thread, contributions first (small, and every one of them is
needed: the orchestrator rebuilds the states between checkpoints from them, ``orchestrator/replays.py``),
then the newest state. An upload still running when the next state is agreed lets that one
wait, and a state superseded while it waits is skipped (every member holds the agreed states, a joiner
can get one from them, and whoever holds one the orchestrator lacks uploads it at catch-up), so a slow
uplink uploads every K-th state instead of holding up every round. ``uploads_round`` picks the states
(after every ``checkpoint_every``-th round: the state is the largest thing a miner sends) and spreads the
work over the ranks in turn, so no single host carries every upload. A contribution refused for a reason
that can pass (its round not recorded yet, the orchestrator down) is tried again, a few times, later."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Optional

log = logging.getLogger("tensorswarm.miner")
PAYLOAD_BACKLOG = 256  # contributions waiting for the uplink (older ones are dropped)
PAYLOAD_BACKLOG_BYTES = 256 * 2**20  # and their bytes: an int8 contribution of a large model is its size
PAYLOAD_TRIES = 6  # a contribution's uploads before it is given up (waits of 2, 4, ... 32 s between them)
PAYLOAD_RETRY_S = 2.0
# Refusals that can pass: the round's record not yet written (this rank's upload raced its own round
# report through an orchestrator restart), a throttle, an orchestrator down. Anything else is final.
TRANSIENT_STATUS = (409, 429, 502, 503, 504)


def uploads_round(round_: int, rank: int, world_size: int, every: int = 1) -> bool:
    """Whether ``rank`` offers the agreed state at the end of round ``round_``: after every ``every``-th
    round (the run's ``checkpoint_every``), by the ranks in turn."""
    return (round_ + 1) % every == 0 and (round_ // every) % world_size == rank


class StateUploader:
    """One background thread uploading the newest offered state (see the module docstring).
    ``offer`` never blocks; ``close`` stops after the upload in flight (a pending one is dropped)."""

    def __init__(self, client):
        self.client = client
        self.pending: Optional[tuple[str, bytes]] = None
        # (round, rank, payload, tries, not_before), oldest first; bounded: on an uplink that cannot keep
        # up, the oldest go
        self.payloads: deque = deque()
        self.closed = False
        self.uploaded: list[str] = []  # hashes uploaded, in order (for logs and tests)
        self.skipped = 0
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="state-uploader", daemon=True)
        self.thread.start()

    def offer(self, sha256: str, data: bytes) -> None:
        with self.cond:
            if self.pending is not None:
                self.skipped += 1
                log.info("agreed state %s superseded before its upload: skipped", self.pending[0][:12])
            self.pending = (sha256, data)
            self.cond.notify()

    def offer_payload(self, round_: int, rank: int, payload: bytes) -> None:
        with self.cond:
            self._keep((round_, rank, payload, 0, 0.0))
            self.cond.notify()

    def close(self, timeout_s: float = 0.0) -> None:
        with self.cond:
            self.closed, self.pending = True, None
            self.cond.notify()
        self.thread.join(timeout_s)

    def _keep(self, item: tuple) -> None:
        """Queue a contribution (under ``cond``); past the bounds the oldest go (the orchestrator then
        replays no state across their rounds, and the next checkpoint covers them)."""
        self.payloads.append(item)
        while len(self.payloads) > 1 and (
            len(self.payloads) > PAYLOAD_BACKLOG or sum(len(i[2]) for i in self.payloads) > PAYLOAD_BACKLOG_BYTES
        ):
            # The oldest round goes, not the head: a retried contribution is queued again behind fresher ones.
            oldest = min(range(len(self.payloads)), key=lambda i: self.payloads[i][0])
            dropped = self.payloads[oldest]
            del self.payloads[oldest]
            log.warning("the uplink is behind: round %d's contribution dropped", dropped[0])

    def _due(self) -> Optional[tuple]:
        """The oldest contribution whose wait is over (taken out of the backlog), else None."""
        now = time.monotonic()
        for i, item in enumerate(self.payloads):
            if item[4] <= now:
                del self.payloads[i]
                return item
        return None

    def _next_wait(self) -> Optional[float]:
        return min((item[4] for item in self.payloads), default=None)

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.closed:
                        return
                    due = self._due()
                    if due is not None or self.pending is not None:
                        break
                    wake = self._next_wait()
                    self.cond.wait(None if wake is None else max(0.0, wake - time.monotonic()))
                if due is not None:
                    job = ("payload", due)
                else:
                    job, self.pending = ("state", self.pending), None
            kind, item = job
            if kind == "payload":
                self._upload_payload(*item)
                continue
            sha, data = item
            try:
                self.client.upload_checkpoint(sha, data)
                self.uploaded.append(sha)
            except Exception as error:  # the orchestrator is down, or refused it: the next state is offered
                log.warning("upload of agreed state %s failed: %s", sha[:12], error)

    def _upload_payload(self, round_: int, rank: int, payload: bytes, tries: int, _not_before: float) -> None:
        try:
            self.client.upload_payload(round_, rank, payload)
            return
        except Exception as error:
            status = getattr(error, "status", None)
            final = status is not None and status not in TRANSIENT_STATUS
            if final or tries + 1 >= PAYLOAD_TRIES:
                # The orchestrator replays no state across this round then; it still gets the next checkpoint.
                log.warning("upload of round %d's contribution given up: %s", round_, error)
                return
            log.info("upload of round %d's contribution failed (%s); retrying", round_, error)
        with self.cond:
            self._keep((round_, rank, payload, tries + 1, time.monotonic() + PAYLOAD_RETRY_S * 2**tries))
