"""Agreed states and this rank's agreed contributions to the orchestrator, off the training path:
``StateUploader`` sends them from a background thread, contributions first (small, and every one of them is
needed: the orchestrator rebuilds the states between checkpoints from them, ``orchestrator/replays.py``),
then the newest state. An upload still running when the next state is agreed lets that one
wait, and a state superseded while it waits is skipped (every member holds the agreed states, a joiner
can get one from them, and whoever holds one the orchestrator lacks uploads it at catch-up), so a slow
uplink uploads every K-th state instead of holding up every round. ``uploads_round`` picks the states
(after every ``checkpoint_every``-th round: the state is the largest thing a miner sends) and spreads the
work over the ranks in turn, so no single host carries every upload."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Optional

log = logging.getLogger("tensorswarm.miner")
PAYLOAD_BACKLOG = 256  # contributions waiting for the uplink (older ones are dropped)


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
        # (round, rank, payload), oldest first; bounded: on an uplink that cannot keep up, the oldest go
        self.payloads: deque = deque(maxlen=PAYLOAD_BACKLOG)
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
            self.payloads.append((round_, rank, payload))
            self.cond.notify()

    def close(self, timeout_s: float = 0.0) -> None:
        with self.cond:
            self.closed, self.pending = True, None
            self.cond.notify()
        self.thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self.cond:
                while self.pending is None and not self.payloads and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                if self.payloads:
                    job = ("payload", self.payloads.popleft())
                else:
                    job, self.pending = ("state", self.pending), None
            kind, item = job
            if kind == "payload":
                round_, rank, payload = item
                try:
                    self.client.upload_payload(round_, rank, payload)
                except Exception as error:  # refused (not included) or unreachable: the state upload covers it
                    log.info("upload of round %d's contribution failed: %s", round_, error)
                continue
            sha, data = item
            try:
                self.client.upload_checkpoint(sha, data)
                self.uploaded.append(sha)
            except Exception as error:  # the orchestrator is down, or refused it: the next state is offered
                log.warning("upload of agreed state %s failed: %s", sha[:12], error)
