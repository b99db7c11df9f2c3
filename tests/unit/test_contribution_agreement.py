"""orchestrator.agreement: the contribution set every member aggregates."""

from __future__ import annotations

import pytest

from orchestrator.agreement import (
    AGREEMENT_WINDOW_S,
    decide_contributions,
    decision_deadline_s,
    decision_due,
    missing_can_change,
)

H = [f"{i:x}" * 64 for i in range(10)]  # sender i's honest payload hash
OTHER = "e" * 64  # a second payload a sender signed (equivocation)


def _honest(n: int) -> dict[int, list]:
    return {r: [H[i] for i in range(n)] for r in range(n)}


def test_honest_members_include_everyone():
    out = decide_contributions(5, _honest(5))
    assert out.included == tuple(H[:5])
    assert out.lacking == ((),) * 5 and out.reasons == (None,) * 5
    assert out.equivocators == ()


def test_one_lying_reporter_neither_excludes_nor_splits():
    reports = _honest(5)
    reports[3] = [None] * 5  # rank 3 claims it received nothing valid
    out = decide_contributions(5, reports)
    assert out.included == tuple(H[:5])  # 4 of 5 hold every sender's hash
    assert all(lacking == (3,) for lacking in out.lacking)  # rank 3 gets every payload point to point


def test_a_sender_that_corrupts_its_block_for_a_minority_is_repaired():
    # n = 5, sender 0 sends ranks 3 and 4 garbage: they lack it.
    reports = _honest(5)
    for r in (3, 4):
        reports[r][0] = None
    out = decide_contributions(5, reports)
    assert out.included == tuple(H[:5])  # 3 of 5 hold it: included, ranks 3 and 4 fetch it
    assert out.lacking[0] == (3, 4) and all(x == () for x in out.lacking[1:])


def test_senders_that_corrupt_for_some_or_most():
    # n = 5: sender 1 corrupts its block for 3, 4 and 0; sender 0 for 3 and 4; sender 4 for 3.
    reports = _honest(5)
    for sender, lackers in {1: (3, 4, 0), 0: (3, 4), 4: (3,)}.items():
        for r in lackers:
            reports[r][sender] = None
    out = decide_contributions(5, reports)
    assert out.included == (H[0], None, H[2], H[3], H[4])  # sender 1 is held by only 2 of 5
    assert "2 of 5" in out.reasons[1]
    assert out.lacking[0] == (3, 4) and out.lacking[4] == (3,) and out.lacking[1] == ()


def test_equivocation_is_excluded_whoever_holds_which():
    reports = _honest(4)
    reports[2][1] = OTHER  # sender 1 signed a second payload, which rank 2 received
    out = decide_contributions(4, reports)
    assert out.included == (H[0], None, H[2], H[3])
    assert out.equivocators == (1,) and "equivocation" in out.reasons[1]


def test_missing_reporters_count_against_inclusion():
    # Only ranks 0 and 1 of 4 reported (the others stalled): nothing has a strict majority of members.
    reports = {0: [H[0], H[1], H[2], H[3]], 1: [H[0], H[1], H[2], H[3]]}
    out = decide_contributions(4, reports)
    assert out.included == (None,) * 4
    assert all("2 of 4" in why for why in out.reasons)
    # Three of five reported and agree: included; the silent ones are lacking (they fetch it).
    reports = {r: [H[i] for i in range(5)] for r in (0, 1, 2)}
    out = decide_contributions(5, reports)
    assert out.included == tuple(H[:5]) and all(x == (3, 4) for x in out.lacking)


def test_nothing_valid_from_a_sender():
    reports = _honest(3)
    for r in range(3):
        reports[r][2] = None
    out = decide_contributions(3, reports)
    assert out.included[2] is None and "no member" in out.reasons[2]


def test_malformed_reports_are_refused():
    with pytest.raises(ValueError):
        decide_contributions(3, {0: [H[0], H[1]]})
    with pytest.raises(ValueError):
        decide_contributions(3, {3: [H[0], H[1], H[2]]})
    with pytest.raises(ValueError):
        decide_contributions(0, {})


def test_decision_is_due_when_all_reported_after_the_deadline_or_a_majoritys_grace():
    def due(n, times, now, deadline=60.0, started=0.0):
        return decision_due(n, times, now, deadline, round_started=started, grace_floor_s=10.0, grace_factor=1.0)

    assert due(3, [10.0] * 3, 10.0)
    assert not due(3, [10.0], 69.9) and due(3, [10.0], 70.0)  # one report: the deadline after it
    assert not due(3, [], 1e9)
    # A strict majority (2 of 3) reported by 12 s into the round: the last one gets max(10 s, 12 s) more.
    assert not due(3, [10.0, 12.0], 23.9) and due(3, [12.0, 10.0], 24.0)
    # A slow round: the majority took 40 s, so the rest get 40 s (the deadline after the first comes later).
    assert not due(3, [38.0, 40.0], 79.9) and due(3, [38.0, 40.0], 80.0)
    # ...and the deadline after the first report still bounds it.
    assert due(3, [5.0, 40.0], 65.0)
    # A member said the group broke (a stall report): the stall rules end the round; only the deadline decides.
    assert not decision_due(
        3, [10.0, 12.0], 69.9, 60.0, round_started=0.0, grace_floor_s=10.0, grace_factor=1.0, broken=True
    )
    # Half is not a majority: 2 of 4 wait for the deadline.
    assert not due(4, [1.0, 2.0], 60.9) and due(4, [1.0, 2.0], 61.0)
    # The orchestrator restarted at 30 s (down since 15 s): both waits count from the restart, the grace
    # keeping the majority's pace (12 s), so the one that could not report meanwhile is still waited for.
    kw = dict(round_started=0.0, grace_floor_s=10.0, grace_factor=1.0, resumed_at=30.0)
    assert not decision_due(3, [10.0, 12.0], 41.9, 60.0, **kw) and decision_due(3, [10.0, 12.0], 42.0, 60.0, **kw)
    # The deadline moves by half the members' grace at most (each gives up that grace past it: 90 s after its report).
    assert not decision_due(3, [10.0], 84.9, 60.0, **kw) and decision_due(3, [10.0], 85.0, 60.0, **kw)
    assert decision_deadline_s(900) == AGREEMENT_WINDOW_S
    assert decision_deadline_s(30) == 15


def test_no_early_decision_while_the_missing_reports_could_change_the_set():
    """n = 3: a colluder (rank 2) reports nothing valid, the honest rank 0 everything; honest rank 1, a little
    slower than the grace, has not reported. Deciding now would exclude both honest blocks (each held by 1 of 3):
    the decision waits for rank 1 or the deadline."""
    lie, honest = [None, None, None], [H[0], H[1], None]
    assert missing_can_change(3, {0: honest, 2: lie})
    # A member that sent its block to 1 of 3 and never reports: its own report is not waited for.
    assert not missing_can_change(3, {0: [H[0], H[1], H[2]], 1: [H[0], H[1], None]})
    assert not missing_can_change(3, {0: honest, 1: honest, 2: lie})  # everyone reported: nothing left to change
    # Four of five held every block: whatever the fifth says, every sender is included.
    assert not missing_can_change(5, {r: [H[i] for i in range(5)] for r in range(4)})
    # A sender nobody holds, with one report missing of five: 0 + 1 ≤ 5 / 2, excluded whatever comes.
    assert not missing_can_change(5, {r: [H[0], H[1], H[2], H[3], None] for r in range(4)})
    # An equivocator is excluded whatever comes.
    assert not missing_can_change(3, {0: [H[0], H[1], H[2]], 1: [H[0], H[1], OTHER]})

    kw = dict(round_started=0.0, grace_floor_s=10.0, grace_factor=1.0)
    assert not decision_due(3, [1.0, 2.0], 30.0, 60.0, changeable=lambda: True, **kw)
    assert decision_due(3, [1.0, 2.0], 30.0, 60.0, changeable=lambda: False, **kw)
    assert decision_due(3, [1.0, 2.0], 61.0, 60.0, changeable=lambda: True, **kw)  # the deadline still ends it
