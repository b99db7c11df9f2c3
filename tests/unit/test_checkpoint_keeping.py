"""Which uploaded agreed states the orchestrator keeps as checkpoints (``OrchestratorService.store_upload``):
the current state, or an older one while nothing newer is held (a slow uplink's upload can start after the
next round was agreed), decided again as it lands; kept are the newest and the newest on the run's cadence, so
a member uploading every agreed state in turn cannot push out the checkpoints that replays start from."""

from __future__ import annotations

import hashlib

import pytest

from template import wire as p
from tests.unit.test_byzantine_config import _service


def test_the_newest_and_the_cadence_are_kept_and_a_late_older_state_is_refused_as_it_lands(tmp_path):
    svc = _service(tmp_path, checkpoint_every=2)
    svc.settings.keep_checkpoints = 3
    c = svc.coordinator
    try:
        assert [c.join(hk, "cpu", 0).status for hk in "abc"][-1] == "assigned"
        states = {}  # the round a state starts -> its bytes

        def agree():
            data = f"the state that starts round {c.round + 1}".encode()
            states[c.round + 1] = data
            for hk in "abc":
                c.report_round(hk, p.RoundReport(generation=c.generation.id, round=c.round, state=sha(data)), 1)

        def upload(r):
            return svc.store_checkpoint(sha(states[r]), states[r], 2)

        def kept():
            return [info.round for info in svc.checkpoints()]

        for _ in range(8):
            agree()
        assert c.round == 8
        # Every agreed state, oldest first, after the fact (each newer than every checkpoint as it lands): the
        # checkpoints a replay starts from (every 2nd round) stay; only the newest is off-cadence.
        for r in range(1, 9):
            assert upload(r).round == r
        assert kept() == [8, 6, 4]
        with pytest.raises(LookupError, match="newer than every checkpoint"):
            upload(5)  # its check passed before the body, say; it lands after newer ones did
        assert not (svc.checkpoint_dir / sha(states[5])).exists() and kept() == [8, 6, 4]
        agree()
        assert upload(9).round == 9 and kept() == [9, 8, 6]  # the newest, whatever its round
        agree()
        assert upload(10).round == 10 and kept() == [10, 8, 6]  # off-cadence 9 is no longer the newest
        assert not (svc.checkpoint_dir / sha(states[9])).exists()
        assert upload(10).round == 10 and kept() == [10, 8, 6]  # the current state again: idempotent
    finally:
        svc.coordinator.close()
        svc.store.close()
        svc._state_lock.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
