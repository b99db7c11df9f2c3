"""The orchestrator's state machine with explicit time: generations on join,
leave, timeout and failure; dense ranks; cool-down; rounds; restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bittensor.sp_core import Keypair

from orchestrator.coordinator import Coordinator
from orchestrator.liveness import NAMED_GRACE_S
from template import wire as p

SHA_A, SHA_B = "a" * 64, "b" * 64


def make(tmp_path: Path, **cfg) -> Coordinator:
    membership = p.MembershipConfig(**{"heartbeat_timeout_s": 10.0, "rejoin_cooldown_s": 5.0, **cfg})
    return Coordinator(tmp_path / "orch.sqlite", membership, "127.0.0.1", 29500, "run")


def ranks(c: Coordinator) -> list[str]:
    return list(c.generation.members) if c.generation else []


def beat(c, hk, now, **kw):
    gen = c.generation.id if c.generation and c.generation.rank_of(hk) is not None else None
    return c.heartbeat(hk, p.HeartbeatRequest(generation=gen, **kw), now)


def check_in(c: Coordinator, now: float, presence: bool = True, address: bool = True) -> None:
    """Every member's miner checks in (as each does when it starts for a generation), its store connection
    passes the tunnel, and it posts its presence and, once every presence is in, its gloo address."""
    for hk in c.generation.members:
        assert c.checkin(hk, p.CheckIn(generation=c.generation.id), now) is None
        c.arrive(c.generation.id, hk, now)
        for what, posts in (("presence", presence), ("address", presence and address)):
            if posts:
                c.saw_post(c.generation.id, hk, what, now)


def finish_round(c: Coordinator, now: float, state: str = SHA_A) -> p.RoundResponse:
    answer = None
    for hk in list(c.generation.members):
        answer = c.report_round(
            hk, p.RoundReport(generation=c.generation.id, round=c.round, state=state, loss=2.0), now
        )
    return answer


def test_first_join_starts_a_generation_and_assigns_rank_zero(tmp_path):
    c = make(tmp_path)
    answer = c.join("hk-a", "cpu", now=0)
    assert answer.status == "assigned"
    a = answer.assignment
    assert (a.rank, a.world_size, a.generation, a.round, a.checkpoint) == (0, 1, 0, 0, None)
    assert a.store_prefix.startswith("ts/0/") and len(a.store_prefix.split("/")[-1]) == 32  # 128 bits


def test_min_world_size_holds_training_until_enough_join(tmp_path):
    c = make(tmp_path, min_world_size=3)
    assert c.join("a", "cpu", 0).status == "waiting"
    assert c.join("b", "cpu", 0).status == "waiting"
    assert c.generation is None
    assert c.join("c", "cpu", 0).status == "assigned"
    assert ranks(c) == ["a", "b", "c"]


def test_joiner_waits_for_the_round_boundary(tmp_path):
    c = make(tmp_path)
    c.join("a", "cpu", 0)
    first = c.generation
    answer = c.join("b", "cpu", 1)
    assert answer.status == "waiting" and answer.queue_position == 0
    assert c.generation is first  # a live generation is never interrupted by a newcomer
    finish_round(c, 2)
    assert c.generation.id == first.id + 1
    assert ranks(c) == ["a", "b"] and c.round == 1 and c.state == SHA_A
    assert c.generation.prefix != first.prefix
    assert c.assignment("b", 2).assignment.checkpoint == SHA_A


def test_leave_mid_round_reforms_at_once_with_dense_ranks(tmp_path):
    c = make(tmp_path)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    finish_round(c, 1)
    assert ranks(c) == ["a", "b", "c"]
    before = c.generation.id
    assert c.leave("b", now=2)
    assert c.generation.id == before + 1
    assert ranks(c) == ["a", "c"]
    assert c.assignment("c", 2).assignment.rank == 1
    assert c.round == 1  # the round in progress restarts from the agreed state


def test_heartbeat_timeout_drops_a_dead_member_within_the_timeout(tmp_path):
    c = make(tmp_path, heartbeat_timeout_s=10)
    for hk in "ab":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    gen = c.generation.id
    for t in (4, 8):
        beat(c, "a", t)
    c.tick(10.5)
    assert ranks(c) == ["a"] and c.generation.id == gen + 1
    assert c.assignment("b", 10.5).status == "not_joined"


def test_reported_failure_ends_the_generation_and_survivors_resume(tmp_path):
    c = make(tmp_path)
    for hk in "ab":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    gen = c.generation.id
    answer = beat(c, "a", 1, failed=True)
    assert c.generation.id == gen + 1 and ranks(c) == ["a", "b"]
    assert answer.reassign
    # A failure report for an old generation is ignored.
    c.heartbeat("b", p.HeartbeatRequest(generation=gen, failed=True), 2)
    assert c.generation.id == gen + 1


def test_join_and_leave_loop_is_cooled_down(tmp_path):
    c = make(tmp_path, rejoin_cooldown_s=5)
    c.join("a", "cpu", 0)
    c.join("flap", "cpu", 0)
    finish_round(c, 0)
    c.leave("flap", 1)
    c.join("flap", "cpu", 1)  # first departure: no wait
    finish_round(c, 1)
    c.leave("flap", 2)
    refused = c.join("flap", "cpu", 2)
    assert refused.status == "cooldown" and refused.retry_after_s == pytest.approx(5)
    assert ranks(c) == ["a"]
    assert c.join("flap", "cpu", 7.1).status == "waiting"


def test_round_needs_every_member_and_a_majority(tmp_path):
    c = make(tmp_path, min_world_size=3)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    gen = c.generation.id
    partial = c.report_round("a", p.RoundReport(generation=gen, round=0, state=SHA_A), 1)
    assert partial.accepted and partial.agreed is None and c.round == 0
    stale = c.report_round("b", p.RoundReport(generation=gen, round=5, state=SHA_A), 1)
    assert not stale.accepted
    c.report_round("b", p.RoundReport(generation=gen, round=0, state=SHA_A), 1)
    done = c.report_round("c", p.RoundReport(generation=gen, round=0, state=SHA_B), 1)
    assert done.agreed == SHA_A and c.round == 1
    assert c.generation.id == gen + 1  # the dissenter forces a re-form so it reloads the agreed state
    assert c.is_known_state(SHA_A) == 1 and c.is_known_state(SHA_B) is None
    outsider = c.report_round("zz", p.RoundReport(generation=c.generation.id, round=1, state=SHA_A), 1)
    assert not outsider.accepted


def test_restart_restores_generation_round_state_and_slots(tmp_path):
    c = make(tmp_path)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    finish_round(c, 1)
    c.join("d", "cpu", 2)
    gen, prefix = c.generation.id, c.generation.prefix
    c.close()
    again = make(tmp_path)
    assert again.generation.id == gen and again.generation.prefix == prefix
    assert ranks(again) == ["a", "b", "c"] and again.round == 1 and again.state == SHA_A
    assert again.waiting() == ["d"]
    # Members keep their assignment: no re-assignment needed after a restart.
    answer = again.heartbeat("a", p.HeartbeatRequest(generation=gen), 3)
    assert not answer.reassign
    assert [r.round for r in again.round_records(0, 10)] == [0]


def test_a_member_that_never_reports_is_removed_at_the_round_deadline(tmp_path):
    c = make(tmp_path, min_world_size=3, round_timeout_s=60, straggler_grace_s=1000)  # the deadline comes first
    for hk in "abc":
        c.join(hk, "cpu", 0)
    check_in(c, 1)
    gen = c.generation.id
    for hk in "ab":
        c.report_round(hk, p.RoundReport(generation=gen, round=0, state=SHA_A), 10)
    for t in range(10, 61, 10):  # "c" heartbeats but never reports
        for hk in "abc":
            beat(c, hk, t)
        c.tick(t)
    assert c.generation.id == gen
    for hk in "abc":
        beat(c, hk, 61)
    c.tick(61)
    assert c.assignment("c", 61).status in ("not_joined", "cooldown")
    assert c.generation is None or "c" not in c.generation.members


def _in_round_1(tmp_path: Path, hks: str, **cfg) -> Coordinator:
    """Members ``hks`` (joined at 0, every one checked in) in round 1 of their generation, its clock started at 0."""
    c = make(tmp_path, **{"min_world_size": 3, "heartbeat_timeout_s": 1000.0, **cfg})
    for hk in hks:
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    check_in(c, 0)
    return c


def _exchanged(c: Coordinator, hks: str, now: float) -> None:
    """Members that finished the exchange report what they received (nothing here: no signature to check)."""
    n = len(c.generation.members)
    for hk in hks:
        report = p.ContributionReport(generation=c.generation.id, round=c.round, received=[None] * n)
        assert c.report_contributions(hk, report, now)[1] is None


def _majority_reported(c: Coordinator, hks: str, now: float) -> int:
    gen = c.generation.id
    for hk in hks:
        c.report_round(hk, p.RoundReport(generation=gen, round=c.round, state=SHA_A), now)
    return gen


def _beat_and_tick(c: Coordinator, hks: str, *times: float) -> None:
    for t in times:
        for hk in hks:
            beat(c, hk, t)
        c.tick(t)


def test_a_member_that_reports_long_after_the_majority_is_evicted_and_the_round_is_kept(tmp_path):
    """A member that reports every round in time (before the round timeout) but long after the others would
    hold each round that long. Once a strict majority agreed a state, the rest get max(10 s, what the
    majority took): "c" past that is evicted and the round commits with the majority's state; one inside it
    is waited for."""
    c = make(tmp_path, min_world_size=3, round_timeout_s=900, heartbeat_timeout_s=1000.0)
    for hk in "abcd":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)  # a, b, c, d from round 1 on; its clock starts at 0
    check_in(c, 0)
    _exchanged(c, "abcd", 25)
    gen = _majority_reported(c, "abd", 30)  # the majority took 30 s: the rest get 30 s more
    _beat_and_tick(c, "abcd", 31, 45, 59.9)
    assert c.generation.id == gen and c.round == 1  # within the grace, waited for
    _beat_and_tick(c, "abcd", 60)
    assert c.round == 2 and c.state == SHA_A  # the majority's round is kept
    assert "c" not in c.generation.members and c.evictions() == {"c": 1}
    # In time, a late reporter is waited for: d reports 9 s after a majority of a quick round.
    _exchanged(c, "abd", 61)
    gen = _majority_reported(c, "ab", 61)  # 2 of 3: a strict majority, 1 s into the round (grace: the 10 s floor)
    _beat_and_tick(c, "abd", 70)
    assert c.round == 2 and c.generation.id == gen
    c.report_round("d", p.RoundReport(generation=gen, round=2, state=SHA_A), 70)
    assert c.round == 3 and ranks(c) == ["a", "b", "d"] and c.evictions() == {"c": 1}


def test_a_generation_that_never_reports_lets_the_waiting_in_at_the_round_timeout(tmp_path):
    """Members that check in, heartbeat and never report a round (colluders holding every seat of a generation,
    say) once held it for ever: with nobody reported, the round timeout only restarted the round's clock, and
    joiners get in only at a round boundary. Now the waiting join then, as at a boundary (no work is lost: none
    was reported); with nobody waiting, the round just gets another period."""
    c = make(tmp_path, min_world_size=3, round_timeout_s=100, heartbeat_timeout_s=1000.0)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    gen = c.generation
    check_in(c, 0)
    _beat_and_tick(c, "abc", 50.0, 100.0)
    assert c.generation.id == gen.id
    _beat_and_tick(c, "abc", 100.1)  # the timeout with nobody waiting: another period
    assert c.generation.id == gen.id
    c.join("d", "cpu", 150.0)
    _beat_and_tick(c, "abcd", 200.0)
    assert c.generation.id == gen.id  # inside that period
    _beat_and_tick(c, "abcd", 200.2)
    assert c.generation.id != gen.id and sorted(ranks(c)) == list("abcd") and c.evictions() == {}


def test_after_an_orchestrator_restart_a_late_member_still_gets_its_whole_grace(tmp_path):
    """The round's start survives a restart, and the stragglers' graces count from the restart: a member that
    could not report while the orchestrator was down is waited for, not evicted 10 s after it is back. The
    contribution decision keeps the majority's pace (its reports' times are kept); the state reports' are not,
    so that grace is what the round had taken by the restart (at least what it was)."""
    c = make(tmp_path, min_world_size=3, round_timeout_s=900, heartbeat_timeout_s=1000.0)
    for hk in "abcd":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    check_in(c, 0)
    _exchanged(c, "abd", 25)  # the contribution decision would be due at 50 s
    gen = _majority_reported(c, "abd", 30)  # c's state report would be due by 60 s
    c.close()
    membership = p.MembershipConfig(heartbeat_timeout_s=1000.0, rejoin_cooldown_s=5.0, min_world_size=3)
    again = Coordinator(tmp_path / "orch.sqlite", membership, "127.0.0.1", 29500, "run", started_at=50.0)
    assert again.round_started == 0.0 and again.generation.id == gen
    assert not again.contribution_decision("a", gen, 1, 74.9)[0].decided  # 25 s after the restart
    _exchanged(again, "c", 74.9)  # c is through the exchange in time: the tight grace is its
    assert again.contribution_decision("a", gen, 1, 74.9)[0].decided
    _beat_and_tick(again, "abcd", 51, 65, 99.9)  # up to 50 s after the restart: still waited for
    assert again.generation.id == gen and again.round == 1 and again.evictions() == {}
    _beat_and_tick(again, "abcd", 100)
    assert again.round == 2 and again.evictions() == {"c": 1}  # past its whole grace, counted from the restart


def test_the_round_timeout_counts_from_an_orchestrator_restart(tmp_path):
    """Nobody could report while the orchestrator was down: restored 5 s before the round's 900 s were up, the
    members that have not reported get a whole round timeout again, not 5 s."""
    c = _in_round_1(tmp_path, "abc", round_timeout_s=900)
    gen = c.generation.id
    c.report_round("a", p.RoundReport(generation=gen, round=1, state=SHA_A), 5)
    c.close()
    membership = p.MembershipConfig(heartbeat_timeout_s=1000.0, rejoin_cooldown_s=5.0, min_world_size=3)
    again = Coordinator(tmp_path / "orch.sqlite", membership, "127.0.0.1", 29500, "run", started_at=895.0)
    _beat_and_tick(again, "abc", 905, 1794.9)
    assert again.generation.id == gen and ranks(again) == ["a", "b", "c"]
    _beat_and_tick(again, "abc", 1795.1)
    assert again.generation is None or again.generation.id != gen  # b and c left at the round timeout


def test_an_empty_stall_report_is_no_excuse_and_nobody_is_evicted_for_a_round_that_is_not_kept(tmp_path):
    """A stall report that names nobody starts no stall rule: filed to be waited for, it would hold every round to
    the round timeout; it neither excuses its reporter (past its grace it departs) nor keeps the contribution
    decision from going ahead.
    A report that names a peer does excuse its reporter, and then the round is the stall rules' to end: a laggard
    beside it is not evicted for a round that is not kept."""
    c = _in_round_1(tmp_path, "abcd")
    gen = c.generation
    _exchanged(c, "abcd", 2)
    _majority_reported(c, "abc", 3)
    assert c.report_stall("d", p.StallReport(generation=gen.id, round=1, missing=[]), 4) is None
    _beat_and_tick(c, "abcd", 12.9)
    assert c.round == 1 and c.evictions() == {}
    _beat_and_tick(c, "abcd", 13)  # the 10 s grace after the majority: d is late, its empty report no excuse
    # …and removed as a departure, not evicted: it said its group failed, and a failure is not held against the
    # one who reports it.
    assert c.round == 2 and c.state == SHA_A and ranks(c) == ["a", "b", "c"] and c.evictions() == {}

    # Five members: e names d, which is late too. The round is under the stall rules: nobody is a laggard.
    (tmp_path / "five").mkdir()
    c = _in_round_1(tmp_path / "five", "abcde")
    gen = c.generation
    _exchanged(c, "abcde", 2)
    _majority_reported(c, "abc", 3)
    assert c.report_stall("e", p.StallReport(generation=gen.id, round=1, missing=[3]), 4) is None
    _beat_and_tick(c, "abcde", 13.5)
    assert c.generation.id == gen.id and c.evictions() == {}
    _beat_and_tick(c, "abcde", 30)
    assert c.round == 1 and c.generation.id != gen.id and c.evictions() == {}  # a dispute re-formed it


def test_while_a_member_lacks_an_included_block_every_member_gets_the_loose_grace(tmp_path):
    """The repair after the decision: every holder of a block some member lacks waits for that lacker. A colluding
    lacker that answers one honest holder just inside each wait would otherwise get it evicted as a laggard
    after the tight grace; while anyone lacks a block, everyone gets the loose grace and a decision deadline
    (60 s) more per repair step."""
    c = _in_round_1(tmp_path, "abcd")
    gen = c.generation
    sha = "e" * 64
    decision = p.ContributionDecision(
        generation=gen.id, round=1, decided=True, included=[sha] * 4, lacking=[[3], [], [], []],
        reasons=[None] * 4, reporters=[0, 1, 2, 3],
    )  # fmt: skip
    c.db.execute(
        "INSERT INTO contribution_decisions VALUES (?,?,?,?)", (gen.id, 1, decision.model_dump_json(), 2.0)
    )  # d (rank 3) lacks a's block: a, b and c hold it, and each waits for d in the repair
    _majority_reported(c, "abd", 3)
    _beat_and_tick(c, "abcd", 13, 92.9, 152.9)  # 90 s + one step's 60 s after the majority
    assert c.round == 1 and c.evictions() == {}  # c, held in the repair, is waited for
    _beat_and_tick(c, "abcd", 153)
    assert c.round == 2 and c.evictions() == {"c": 1}


def test_the_early_contribution_decision_waits_while_a_missing_report_could_change_the_set(tmp_path):
    """c, a colluder, reports nothing valid; a holds its own block and b's; b, a little slower than the grace, has
    not reported. Deciding now would exclude a's and b's blocks (1 of 3 each): the decision waits (b, or the
    deadline)."""
    c = _in_round_1(tmp_path, "abc")
    gen = c.generation.id
    entry = lambda sha: {"sha256": sha, "signature": "00" * 64}  # signatures are checked on arrival
    for rank, received in {0: [entry(SHA_A), entry(SHA_B), None], 2: [None, None, None]}.items():
        c.db.execute("INSERT INTO contribution_reports VALUES (?,?,?,?,?)", (gen, 1, rank, json.dumps(received), 2.0))
    assert not c.contribution_decision("a", gen, 1, 30.0)[0].decided  # well past the 10 s grace
    decision = c.contribution_decision("a", gen, 1, 62.0)[0]  # the deadline, 60 s after the first report
    assert decision.decided and decision.included == [None, None, None]


def test_a_late_member_that_is_silent_since_the_majority_reported_departs(tmp_path):
    """A laggard not heard from since the majority reported is a dead host: removed without an eviction."""
    c = make(tmp_path, min_world_size=2, heartbeat_timeout_s=1000.0)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    for hk in "abc":
        beat(c, hk, 4)
    _exchanged(c, "abc", 4.5)
    _majority_reported(c, "ab", 5)
    _beat_and_tick(c, "ab", 15)
    assert c.round == 2 and ranks(c) == ["a", "b"] and c.evictions() == {}


def test_a_member_a_peer_withholds_from_is_not_a_laggard(tmp_path):
    """A member still in the exchange (it reported no contributions) may be waiting for a peer that sent its block
    to everyone else: it gets the loose grace, longer than its collective's timeout, and its stall report at that
    timeout puts it under the stall rules (a dispute, nobody evicted), never the laggards'. One that neither
    reports nor stalls is removed after the loose grace."""
    c = _in_round_1(tmp_path, "abcd")
    gen = c.generation
    _exchanged(c, "abd", 2)
    _majority_reported(c, "abd", 3)
    _beat_and_tick(c, "abcd", 20, 50)
    assert c.generation.id == gen.id and c.round == 1  # c is still waited for
    d = gen.members.index("d")
    assert c.report_stall("c", p.StallReport(generation=gen.id, round=1, missing=[d]), 61) is None
    _beat_and_tick(c, "abcd", 62, 95)
    assert c.evictions() == {}  # a minority's word: a re-form with nobody blamed
    assert c.generation.id != gen.id and "c" in c.generation.members
    check_in(c, 96)
    # Next round, d neither reports nor stalls: removed once the loose grace (90 s) after the majority is over.
    gen = c.generation
    _exchanged(c, "abc", 97)
    _majority_reported(c, "abc", 98)
    _beat_and_tick(c, "abcd", 150, 187.9)
    assert c.generation.id == gen.id
    _beat_and_tick(c, "abcd", 188)
    assert "d" not in c.generation.members and c.evictions() == {"d": 1}


def test_a_slow_round_with_no_reports_is_not_punished(tmp_path):
    c = make(tmp_path, min_world_size=2, round_timeout_s=60)
    for hk in "ab":
        c.join(hk, "cpu", 0)
    check_in(c, 1)
    gen = c.generation.id
    for t in (30, 61, 90):
        for hk in "ab":
            beat(c, hk, t)
        c.tick(t)
    assert c.generation.id == gen and ranks(c) == ["a", "b"]


def test_forged_failure_reports_cost_the_reporter(tmp_path):
    c = make(tmp_path, rejoin_cooldown_s=30)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    finish_round(c, 1)
    assert ranks(c) == ["a", "b", "c"]
    beat(c, "c", 2, failed=True)  # first: no wait (an honest crash)
    assert ranks(c) == ["a", "b", "c"]
    beat(c, "c", 3, failed=True)  # again: "c" sits out the next generation
    assert ranks(c) == ["a", "b"]
    assert c.cooldown_left("c", 3) > 0


def test_a_member_cannot_change_its_report(tmp_path):
    c = make(tmp_path, min_world_size=2)
    for hk in "ab":
        c.join(hk, "cpu", 0)
    gen = c.generation.id
    assert c.report_round("a", p.RoundReport(generation=gen, round=0, state=SHA_A), 1).accepted
    changed = c.report_round("a", p.RoundReport(generation=gen, round=0, state=SHA_B), 1)
    assert not changed.accepted and "already reported" in changed.detail
    assert c.is_known_state(SHA_A) is None  # reported, not agreed: not uploadable
    c.report_round("b", p.RoundReport(generation=gen, round=0, state=SHA_A), 1)
    assert c.is_known_state(SHA_A) == 1


def test_reports_stored_before_a_crash_complete_the_round_on_restart(tmp_path):
    c = make(tmp_path, min_world_size=2)
    for hk in "ab":
        c.join(hk, "cpu", 0)
    gen = c.generation.id
    c.report_round("a", p.RoundReport(generation=gen, round=0, state=SHA_A), 1)
    # The last report hits the disk, then the process dies before settling the round.
    c.db.execute("INSERT INTO reports VALUES (?,?,?,?,?)", (gen, 0, "b", SHA_A, 1.0))
    c.close()
    again = make(tmp_path, min_world_size=2)
    assert again.round == 1 and again.state == SHA_A


def test_roll_back_to_an_agreed_round_keeps_the_undone_rounds_for_audit(tmp_path):
    """The owner's rollback (orchestrator.rollback runs it on a stopped orchestrator): round R's state is
    current again, later rounds move to the audit table, the generation ends, and after a restart the
    members are re-assigned to round R + 1 from that state."""
    c = make(tmp_path)
    for hk in "ab":
        c.join(hk, "cpu", 0)
    states = [ch * 64 for ch in "0123"]
    for r, state in enumerate(states):
        finish_round(c, 1 + r, state=state)
    assert c.round == 4 and len(ranks(c)) == 2
    gen = c.generation.id
    c.report_round("a", p.RoundReport(generation=gen, round=4, state="9" * 64), 5)  # pending
    for r in (1, 3):  # stored checkpoints: a row's round is the round its state starts
        c.db.execute("INSERT INTO checkpoints VALUES (?,?,?,?)", (states[r], r + 1, 10, 1.0))
    with pytest.raises(LookupError):
        c.roll_back_to(7, now=6)
    assert c._kv("round") == 4  # a refused rollback changes nothing
    assert c.roll_back_to(1, now=6) == [2, 3]
    c.close()

    again = make(tmp_path)
    assert (again.round, again.state, again.generation) == (2, states[1], None)
    assert [rec.round for rec in again.round_records(0, 10)] == [0, 1]
    audit = again.db.execute("SELECT round, state, to_round FROM rolled_back_rounds ORDER BY round").fetchall()
    assert audit == [(2, states[2], 1), (3, states[3], 1)]
    assert again.is_known_state(states[3]) is None and again.is_known_state(states[1]) == 2
    assert [sha for (sha,) in again.db.execute("SELECT sha256 FROM checkpoints")] == [states[1]]
    assert again.db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
    again.tick(7)
    assert ranks(again) == ["a", "b"] and again.generation.id > gen
    a = again.assignment("a", 7).assignment
    assert (a.round, a.checkpoint, a.generation) == (2, states[1], again.generation.id)
    assert finish_round(again, 8, state="f" * 64).agreed == "f" * 64 and again.round == 3


def test_misbehaviour_reports_are_bounded_to_the_generation_and_a_window_of_rounds(tmp_path):
    from orchestrator.ledger import REPORT_WINDOW_ROUNDS

    a, b, c_ = (Keypair.create_from_uri(f"//tensorswarm-coord-{x}").ss58_address for x in "abc")
    c = make(tmp_path, min_world_size=3)
    for hk in (a, b, c_):
        c.join(hk, "cpu", 0)
    gen = c.generation.id

    def report(reporter, accused, round_):
        return c.report_misbehavior(
            reporter, p.MisbehaviorReport(generation=gen, round=round_, accused=accused, reason="bad"), 1
        )

    assert report(a, c_, 0) is None and report(b, c_, 0) is None
    assert report(a, c_, 0) is None  # the same again: still one row
    assert "not started" in report(a, c_, 5)
    assert c.misbehavior_counts() == {c_: 2}
    for r in range(REPORT_WINDOW_ROUNDS + 1):
        finish_round(c, 2 + r)
    assert report(a, b, c.round) is None
    # Round 0's reports fell out of the window and were deleted, not just left uncounted.
    assert c.misbehavior_counts() == {b: 1}
    # The generation re-forms within the round (a broken group): the same report again counts once.
    now = 2 + REPORT_WINDOW_ROUNDS
    for hk in (a, b):
        beat(c, hk, now)
    c.leave(c_, now)
    c.join(c_, "cpu", now)
    assert c.generation.id != gen
    gen = c.generation.id
    assert report(a, b, c.round) is None
    assert c.misbehavior_counts() == {b: 1}
    assert c.db.execute("SELECT COUNT(*) FROM misbehavior WHERE round = 0").fetchone()[0] == 0
    # Agreed state sizes come from the members' reports.
    assert c.state_size(SHA_A) is None  # finish_round reports no size
    for hk, size in ((a, 123), (b, 123), (c_, 999)):
        c.report_round(hk, p.RoundReport(generation=gen, round=c.round, state=SHA_B, state_bytes=size), 9)
    assert c.state_size(SHA_B) == 123


def test_a_member_that_never_checks_in_is_evicted_and_nobody_else_is_blamed(tmp_path):
    c = make(tmp_path, min_world_size=3, checkin_timeout_s=30.0)
    for hk in "abcd":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)  # d joins at the round boundary
    gen = c.generation
    assert gen.members == list("abcd") and gen.started_at == 0
    for hk in "abc":
        assert c.checkin(hk, p.CheckIn(generation=gen.id), 5) is None
        c.arrive(gen.id, hk, 5)
    assert c.checkin("a", p.CheckIn(generation=gen.id + 1), 5) == "not a member of the current generation"
    for now in (10, 20, 29.9):
        for hk in "abcd":
            beat(c, hk, now)  # the silent one heartbeats like everyone else
        c.tick(now)
        assert c.generation.id == gen.id
    c.tick(30.0)
    assert c.generation.members == list("abc") and c.generation.id > gen.id
    assert c.evictions() == {"d": 1}
    assert c.cooldown_left("d", 30.0) > 0 and all(c.cooldown_left(hk, 30.0) == 0 for hk in "abc")
    # The new generation's clock starts again: nobody is evicted before they had time to check in.
    c.tick(31.0)
    assert c.generation.members == list("abc")


def test_a_staller_named_by_most_of_the_others_is_evicted_and_one_report_names_nobody(tmp_path):
    c = make(tmp_path, min_world_size=3)
    for hk in "abcd":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)  # d joins at the round boundary
    gen = c.generation
    assert gen.members == list("abcd")
    check_in(c, 1)  # the group formed (every gloo address passed): what follows is a stall in training

    def stall(reporter, *missing):
        return c.report_stall(reporter, p.StallReport(generation=gen.id, round=1, missing=list(missing)), 5)

    assert stall("a", 9) == "ranks must be in 0..3"
    assert stall("a", 3, 0) is None  # naming itself (rank 0) does not count
    assert c.generation.id == gen.id  # one report removes nobody
    assert stall("d", 0) is None  # the staller names an honest one: still 1 vote each
    assert c.generation.id == gen.id
    assert stall("b", 3) is None  # 2 of d's 3 others
    assert c.generation.id == gen.id  # its own meta-miner may still report it dead (a departure)
    for hk in "abcd":
        beat(c, hk, 5)  # d's meta-miner is alive: d stalled, it did not die
    c.tick(5 + NAMED_GRACE_S)
    assert c.generation.members == list("abc") and c.evictions() == {"d": 1}
    assert all(c.cooldown_left(hk, 5) == 0 for hk in "abc")
    assert stall("c", 3) == "not a member of the current generation"  # that generation is over


def test_slow_starts_blame_nobody_and_a_generation_nobody_reaches_ends_without_evictions(tmp_path):
    """Every miner of a generation past the check-in timeout (a loaded host) is not evidence against any of
    them: the two that check in late stay, the one that never does is evicted half a timeout after the second
    arrived. A generation that nobody reaches for NOBODY_ARRIVED_TIMEOUTS timeouts ends, with nobody evicted."""
    from orchestrator.membership import NOBODY_ARRIVED_TIMEOUTS

    c = make(tmp_path, min_world_size=3, checkin_timeout_s=30.0, heartbeat_timeout_s=3600.0)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    gen = c.generation
    assert gen.members == list("abc")
    c.tick(31.0)
    assert c.generation.id == gen.id  # nobody in yet: nobody named
    for hk, at in (("a", 35.0), ("b", 45.0)):
        assert c.checkin(hk, p.CheckIn(generation=gen.id), at) is None
        c.arrive(gen.id, hk, at)
    c.tick(59.9)
    assert c.generation.id == gen.id
    c.join("d", "cpu", 59.9)
    c.tick(60.0)
    assert "c" not in ranks(c) and sorted(ranks(c)) == list("abd") and c.evictions() == {"c": 1}
    nobody = c.generation
    cap = nobody.started_at + NOBODY_ARRIVED_TIMEOUTS * 30.0
    for now in (100.0, cap - 0.1):
        c.tick(now)
        assert c.generation.id == nobody.id
    c.tick(cap)
    assert c.generation is None and not {hk for hk, _ in c.slots()} & set("abd")
    assert c.evictions() == {"c": 1}  # the ones nobody could tell apart left as departures


def test_the_store_stage_is_relative_too_and_nobody_at_the_store_blames_nobody(tmp_path):
    from orchestrator.membership import NOBODY_ARRIVED_TIMEOUTS

    c = make(tmp_path, min_world_size=3, checkin_timeout_s=30.0, heartbeat_timeout_s=3600.0)
    for hk in "abc":
        c.join(hk, "cpu", 0)
    gen = c.generation
    for hk in "abc":
        assert c.checkin(hk, p.CheckIn(generation=gen.id), 5.0) is None
    c.arrive(gen.id, "a", 20.0)
    c.arrive(gen.id, "b", 40.0)  # the second to the store: c has until 55 s
    c.tick(54.9)
    assert c.generation.id == gen.id
    c.join("d", "cpu", 54.9)
    c.tick(55.0)
    assert sorted(ranks(c)) == list("abd") and c.evictions() == {"c": 1}
    again = c.generation
    for hk in again.members:  # all check in, nobody reaches the store (its tunnel, say, is down)
        assert c.checkin(hk, p.CheckIn(generation=again.id), 60.0) is None
    cap = again.started_at + NOBODY_ARRIVED_TIMEOUTS * 30.0
    c.tick(cap - 0.1)
    assert c.generation.id == again.id
    c.tick(cap)
    assert c.generation is None and c.evictions() == {"c": 1}


def test_a_member_that_checks_in_but_never_comes_to_the_store_is_evicted(tmp_path):
    c = make(tmp_path, min_world_size=3, checkin_timeout_s=30.0)
    for hk in "abcd":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)  # d joins at the round boundary
    gen = c.generation
    assert gen.members == list("abcd")
    for hk in "abcd":
        assert c.checkin(hk, p.CheckIn(generation=gen.id), 5) is None
    for hk in "abc":
        c.arrive(gen.id, hk, 5)
    c.arrive(gen.id + 1, "d", 5)  # an arrival for another generation counts for nothing
    for now in (10, 29.9):
        for hk in "abcd":
            beat(c, hk, now)
        c.tick(now)
        assert c.generation.id == gen.id
    c.tick(30.0)
    assert c.generation.members == list("abc") and c.evictions() == {"d": 1}
    # A generation restored after an orchestrator restart met at its store before: no arrival is due.
    c.close()
    again = make(tmp_path, min_world_size=3, checkin_timeout_s=30.0)
    restored = again.generation
    for hk in restored.members:
        assert again.checkin(hk, p.CheckIn(generation=restored.id), 31) is None
    for now in (40.0, 80.0, 200.0):
        for hk in restored.members:
            beat(again, hk, now)
        again.tick(now)
    assert again.generation.id == restored.id and again.evictions() == {"d": 1}


def test_a_hotkey_evicted_again_and_again_is_refused_for_the_run(tmp_path):
    from orchestrator.coordinator import EVICTIONS_BEFORE_REFUSAL

    c = make(tmp_path, min_world_size=3, checkin_timeout_s=30.0, rejoin_cooldown_s=1.0)
    now = 0.0
    for hk in "abc":
        c.join(hk, "cpu", now)
    for i in range(EVICTIONS_BEFORE_REFUSAL):
        assert c.join("d", "cpu", now).status != "cooldown", i
        finish_round(c, now)
        assert "d" in c.generation.members
        for hk in "abc":
            assert c.checkin(hk, p.CheckIn(generation=c.generation.id), now) is None
            c.arrive(c.generation.id, hk, now)
        for _ in range(4):  # everyone heartbeats, the silent one too; only it never checks in
            now += 8
            for hk in "abcd":
                beat(c, hk, now)
            c.tick(now)
        assert "d" not in c.generation.members and c.evictions("d") == {"d": i + 1}
        wait = c.cooldown_left("d", now)
        assert wait > 0 and c.join("d", "cpu", now).status == "cooldown"
        while wait > 0:  # the others keep training and heartbeating through the cool-down
            now += min(wait, 8) + 0.5
            wait -= min(wait, 8) + 0.5
            for hk in "abc":
                beat(c, hk, now)
            c.tick(now)
    refused = c.join("d", "cpu", now)
    assert refused.status == "cooldown" and "refused:" in refused.detail and refused.retry_after_s >= 3600
    assert c.evictions() == {"d": EVICTIONS_BEFORE_REFUSAL}


def test_a_round_broken_by_a_minority_re_forms_and_a_pair_that_keeps_breaking_sits_out(tmp_path):
    from orchestrator.liveness import STALL_GRACE_S

    c = make(tmp_path, min_world_size=2, heartbeat_timeout_s=1000.0)
    for hk in "abcx":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    now = 1.0
    for broken in range(2):
        gen = c.generation
        assert gen.members == list("abcx"), broken
        check_in(c, now)
        # x withholds its block from a only: a names it, b and c got it and say nothing
        assert c.report_stall("a", p.StallReport(generation=gen.id, round=c.round, missing=[3]), now) is None
        c.tick(now + STALL_GRACE_S / 2)
        assert c.generation.id == gen.id  # the others' reports may still be coming
        now += STALL_GRACE_S
        c.tick(now)
        assert c.generation.id != gen.id and c.evictions() == {}  # re-formed, nobody evicted
        assert all(c.cooldown_left(hk, now) == 0 for hk in "abcx")  # nor charged
    # the pair (a, x) broke two generations: both sit out, b and c train on
    assert c.generation.members == list("bc")
    assert c.sitting_out(now) == {"a", "x"}
    assert "sitting out" in c.assignment("x", now).detail
    later = now + 1801.0
    for hk in "abcx":
        beat(c, hk, later)
    finish_round(c, later)  # back at a round boundary once the disputes are old
    assert c.sitting_out(later) == set() and sorted(c.generation.members) == list("abcx")


def test_a_group_most_members_say_broke_re_forms_but_one_members_word_does_not(tmp_path):
    from orchestrator.liveness import STALL_GRACE_S

    c = make(tmp_path, min_world_size=2, heartbeat_timeout_s=1000.0)
    for hk in "abcd":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    gen = c.generation
    assert gen.members == list("abcd")
    check_in(c, 1)
    unnamed = p.StallReport(generation=gen.id, round=c.round)  # a rendezvous that never completed
    assert c.report_stall("d", unnamed, 1) is None
    c.tick(1 + 2 * STALL_GRACE_S)
    assert c.generation.id == gen.id  # one member's unnamed word ends nothing
    for hk in "ab":
        assert c.report_stall(hk, unnamed, 30) is None  # three of four: the group is gone
    c.tick(30 + STALL_GRACE_S / 2)
    assert c.generation.id == gen.id
    c.tick(30 + STALL_GRACE_S)
    assert c.generation.id != gen.id and c.generation.members == list("abcd")  # a fresh generation
    assert c.evictions() == {} and c.sitting_out(40) == set()
    assert all(c.cooldown_left(hk, 40) == 0 for hk in "abcd")


def test_a_member_that_names_everyone_benches_only_itself_and_cannot_dodge_its_dispute(tmp_path):
    from orchestrator.liveness import STALL_GRACE_S

    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=1000.0)
    for hk in ["h1", "h2", "h3", "h4", "x"]:
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    now = 1.0
    for broken in range(2):
        gen = c.generation
        assert "x" in gen.members, broken
        check_in(c, now)
        everyone = [r for r, hk in enumerate(gen.members) if hk != "x"]
        assert c.report_stall("x", p.StallReport(generation=gen.id, round=c.round, missing=everyone), now) is None
        if broken == 0:
            now += STALL_GRACE_S
            c.tick(now)
        else:  # x ends the generation itself before the grace is over: the dispute still counts
            beat(c, "x", now + 1, failed=True)
        assert c.generation.id != gen.id
        now += 1
    assert c.sitting_out(now) == {"x"}
    assert sorted(c.generation.members) == ["h1", "h2", "h3", "h4"]
    assert c.evictions() == {}


def test_stallers_named_by_the_majority_leave_no_dispute_behind(tmp_path):
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=1000.0)
    for hk in ["a", "b", "c", "s1", "s2", "s3"]:
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    for staller in ["s1", "s2", "s3"]:
        gen = c.generation
        check_in(c, 1)
        rank = gen.members.index(staller)
        for reporter in ["a", "b", "c"]:  # the first report alone is no majority: the grace starts
            c.report_stall(reporter, p.StallReport(generation=gen.id, round=c.round, missing=[rank]), 1)
        beat(c, staller, 2)  # alive after it was named: a staller
        c.tick(1 + NAMED_GRACE_S)
        assert staller not in c.generation.members and c.evictions(staller) == {staller: 1}
    assert c.sitting_out(2) == set()  # the honest reporters are not benched for having reported


def test_a_dead_member_named_by_the_majority_is_removed_but_not_marked_hostile(tmp_path):
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=1000.0)
    for hk in ["a", "b", "c", "dead", "staller"]:
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    check_in(c, 1)
    gen = c.generation
    for hk in ["a", "b", "c", "staller"]:
        beat(c, hk, 20)  # "dead" stopped heartbeating at 0: its process is gone
    for reporter in ["a", "b", "c"]:
        c.report_stall(reporter, p.StallReport(generation=gen.id, round=c.round, missing=[3]), 20)
    c.tick(20 + NAMED_GRACE_S)
    assert "dead" not in c.generation.members and c.evictions() == {}
    assert c.cooldown_left("dead", 20) >= 0  # a departure, as any member that dies
    gen = c.generation
    check_in(c, 21)
    rank = gen.members.index("staller")
    for reporter in ["a", "b", "c"]:
        c.report_stall(reporter, p.StallReport(generation=gen.id, round=c.round, missing=[rank]), 21)
    beat(c, "staller", 22)
    c.tick(21 + NAMED_GRACE_S)
    assert "staller" not in c.generation.members and c.evictions() == {"staller": 1}  # alive: it stalled


def _abcv_training(tmp_path, check: bool = True) -> Coordinator:
    """Members a, b, c and v in a generation past its first round, every miner checked in (``check``)."""
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=1000.0)
    for hk in "abcv":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    if check:
        check_in(c, 1)
    return c


def test_a_member_whose_whole_host_died_is_a_departure_not_an_eviction(tmp_path):
    """kill -9 of a meta-miner (its miner dies with it; a host that crashed): the survivors name it within a
    heartbeat of its last one, and nobody reports for it. Not heard from since it was named, it is taken for
    dead, not hostile: removed with a departure; restarted, it rejoins at once (a first departure is free)."""
    c = _abcv_training(tmp_path)
    gen = c.generation
    for hk in "abcv":
        beat(c, hk, 10)  # v's last heartbeat: its host dies at 10.5
    for reporter in "abc":
        c.report_stall(reporter, p.StallReport(generation=gen.id, round=c.round, missing=[gen.members.index("v")]), 11)
    for hk in "abc":
        beat(c, hk, 12)
    c.tick(11 + NAMED_GRACE_S)
    assert "v" not in c.generation.members and c.evictions() == {}
    assert c.join("v", "cpu", 15).status == "waiting" and c.cooldown_left("v", 15) == 0  # a joiner, not cooled down


def _rendezvous_broken_by(c: Coordinator, late: str, now: float, rendezvous: bool = True) -> None:
    """Every member but ``late`` gives up at the rendezvous naming it (its gloo address was not in the
    store within gloo's connect wait)."""
    gen = c.generation
    for hk in gen.members:
        if hk != late:
            rank = gen.members.index(late)
            report = p.StallReport(generation=gen.id, round=c.round, missing=[rank], rendezvous=rendezvous)
            assert c.report_stall(hk, report, now) is None


def _presences(c: Coordinator, now: float, but: str = "") -> None:
    for hk in c.generation.members:
        if hk != but:
            c.saw_post(c.generation.id, hk, "presence", now)


def _disputes(c: Coordinator, generation: int) -> list[tuple[str, str]]:
    return c.db.execute("SELECT reporter, accused FROM disputes WHERE generation=?", (generation,)).fetchall()


def test_left_a_failed_rendezvous_needs_most_of_its_accusers_to_have_seen_it_fail():
    from orchestrator.membership import left_a_failed_rendezvous, named_at_a_failed_rendezvous

    named = {"b": ["a"], "c": ["a"], "h": ["a"], "a": []}
    assert left_a_failed_rendezvous(named, {"a", "b", "c"}, {"a"}) == {"a"}
    assert left_a_failed_rendezvous(named, {"a", "b"}, {"a"}) == set()  # 1 of 3 accusers saw a rendezvous fail
    assert left_a_failed_rendezvous(named, {"a", "b", "c"}, set()) == set()  # no excuse the orchestrator saw
    assert left_a_failed_rendezvous({"b": []}, {"a", "b"}, {"a"}) == set()  # nobody named a
    assert named_at_a_failed_rendezvous(named, {"b", "c"}) == {"a"}
    assert named_at_a_failed_rendezvous({"a": ["a"], "b": ["a"]}, {"a"}) == set()  # naming oneself counts for nothing


def test_the_assignment_gives_every_rank_the_generations_one_presence_deadline(tmp_path):
    from orchestrator.membership import NOBODY_ARRIVED_TIMEOUTS

    c = _abcv_training(tmp_path, check=False)
    gen = c.generation
    deadline = gen.started_at + NOBODY_ARRIVED_TIMEOUTS * c.membership_cfg.checkin_timeout_s
    assert c.assignment("a", gen.started_at + 5).assignment.presence_left_s == deadline - gen.started_at - 5
    assert c.assignment("b", gen.started_at + 50).assignment.presence_left_s == deadline - gen.started_at - 50
    assert c.assignment("c", deadline + 1).assignment.presence_left_s == 0.0


def test_a_member_frozen_at_the_rendezvous_is_late_not_hostile(tmp_path):
    """An honest miner frozen (SIGSTOP, a descheduled VM) after its presence and before its gloo address:
    its peers' connect wait (a few seconds) runs out and all of them name it, a majority. It is not evicted:
    its address reaches the store within the stall grace (the orchestrator sees it come through the tunnel),
    so it was late, not absent. It takes the dispute alone (its honest accusers keep their seats), and only a
    member that keeps breaking rendezvous so sits out."""
    from orchestrator.liveness import STALL_GRACE_S
    from orchestrator.membership import NOBODY

    c = _abcv_training(tmp_path, check=False)
    for broken in range(2):
        gen = c.generation
        now = gen.started_at + 1
        check_in(c, now, address=False)
        for hk in "abc":
            c.saw_post(gen.id, hk, "address", now + 0.1)
        for hk in "abcv":
            beat(c, hk, now)
        _rendezvous_broken_by(c, "v", now + 3)
        c.tick(now + 3 + NAMED_GRACE_S)  # longer than a death's grace: v may still be coming
        assert c.generation.id == gen.id and c.evictions() == {}
        c.saw_post(gen.id, "v", "address", now + 8)  # it wakes and goes on into gloo: late
        for hk in "abcv":
            beat(c, hk, now + 9)
        c.tick(now + 3 + STALL_GRACE_S)
        assert c.generation.id != gen.id and c.evictions() == {}, broken
        assert _disputes(c, gen.id) == [(NOBODY, "v")]  # nobody shares its dispute
        assert all(c.cooldown_left(hk, now + 20) == 0 for hk in "abcv")
        if broken == 0:  # once is nothing: the next generation breaks in its rendezvous too
            assert sorted(c.generation.members) == list("abcv")
    assert sorted(c.generation.members) == list("abc") and c.sitting_out(now + 20) == {"v"}


def test_a_member_that_never_comes_on_into_gloo_is_evicted_after_the_stall_grace_whatever_it_says(tmp_path):
    """A member that posts its presence on time and never its gloo address: named by a majority at the
    rendezvous, it is given the stall grace to come (not a death's short one) and then evicted, whether it
    says nothing or that it gave up too (every presence was in by the deadline: nothing to give up on). Its
    honest accusers take no dispute."""
    from orchestrator.liveness import STALL_GRACE_S

    for says in (False, True):
        c = _abcv_training(tmp_path / str(says), check=False)
        gen = c.generation
        check_in(c, 1, address=False)
        for hk in "abc":
            c.saw_post(gen.id, hk, "address", 1)
        _rendezvous_broken_by(c, "v", 10)
        if says:
            gave_up = p.StallReport(generation=gen.id, round=c.round, missing=[0], rendezvous=True)
            assert c.report_stall("v", gave_up, 10.5) is None
        for t in (10 + NAMED_GRACE_S, 10 + STALL_GRACE_S - 0.5):
            for hk in "abcv":
                beat(c, hk, t)
            c.tick(t)
            assert c.generation.id == gen.id, t
        c.tick(10 + STALL_GRACE_S)
        assert "v" not in c.generation.members and c.evictions() == {"v": 1}, says
        assert _disputes(c, gen.id) == [] and c.sitting_out(20) == set()


def test_a_presence_posted_just_late_enough_to_split_the_rendezvous_is_the_posters_alone(tmp_path):
    """Every rank gives up waiting for presences at the generation's one deadline (the assignment's
    ``presence_left_s``). Colluder v posts its presence at that moment, hoping to be seen by some ranks and
    not by others: here a gave up without it, b and c went on into gloo and, with v, name a, whose address
    never came. a is not evicted and takes no dispute: the orchestrator saw v's presence come at the deadline,
    so the break is v's alone, whatever the reports say. Twice, and v sits out; a, b and c train on."""
    from orchestrator.membership import NOBODY

    c = _abcv_training(tmp_path, check=False)
    for broken in range(2):
        gen = c.generation
        deadline = c.presence_deadline(gen)
        check_in(c, gen.started_at + 5, presence=False)
        _presences(c, gen.started_at + 5, but="v")
        c.saw_post(gen.id, "v", "presence", deadline - 0.2)  # just before the deadline, inside the slack
        gave_up = p.StallReport(generation=gen.id, round=c.round, rendezvous=True)
        assert c.report_stall("a", gave_up, deadline + 0.01) is None  # a's wait ran out
        for hk in "bcv":
            c.saw_post(gen.id, hk, "address", deadline + 0.1)
        _rendezvous_broken_by(c, "a", deadline + 3.1)  # b, c and v name a
        for hk in "abcv":
            beat(c, hk, deadline + 3.1)
        c.tick(deadline + 3.1)  # every member reported
        assert c.generation.id != gen.id and c.evictions() == {}, broken
        assert _disputes(c, gen.id) == [(NOBODY, "v")]
    assert c.sitting_out(deadline + 4) == {"v"} and sorted(c.generation.members) == list("abc")


def test_a_member_that_never_posts_its_presence_is_evicted_as_one_that_never_checks_in(tmp_path):
    """v checks in and comes to the store but never posts its presence: the honest ranks' presence waits
    could only name nobody (nothing read from the store is evidence), but the orchestrator saw v come and
    never post. It is evicted on the check-in rules (a check-in timeout after the generation formed, or half
    of one after most presences came), long before the presence deadline, whatever it reports; the
    generation's end frees the others."""
    for reports in (False, True):
        c = _abcv_training(tmp_path / str(reports), check=False)
        gen = c.generation
        timeout = c.membership_cfg.checkin_timeout_s
        check_in(c, gen.started_at + 5, presence=False)
        _presences(c, gen.started_at + 5, but="v")
        if reports:
            report = p.StallReport(generation=gen.id, round=c.round, rendezvous=True)
            assert c.report_stall("v", report, gen.started_at + 6) is None
        for hk in "abcv":
            beat(c, hk, gen.started_at + timeout - 1)  # v heartbeats on: alive, withholding
        c.tick(gen.started_at + timeout - 1)
        assert c.generation.id == gen.id
        c.tick(gen.started_at + timeout)
        assert "v" not in c.generation.members and c.evictions() == {"v": 1}, reports
        assert timeout < c.presence_deadline(gen) - gen.started_at


def _abcvw_forming(tmp_path) -> Coordinator:
    """Members a, b, c, v and w in a generation's first round: checked in, every presence posted on time,
    the gloo addresses of all but w posted."""
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=1000.0)
    for hk in "abcvw":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    gen = c.generation
    check_in(c, gen.started_at + 1, address=False)
    for hk in "abcv":
        c.saw_post(gen.id, hk, "address", gen.started_at + 1.1)
    return c


def _name_w(c: Coordinator, reporters: str, now: float) -> None:
    gen = c.generation
    for hk in reporters:
        report = p.StallReport(generation=gen.id, round=c.round, missing=[gen.members.index("w")], rendezvous=True)
        assert c.report_stall(hk, report, now) is None


def test_what_excuses_a_member_named_at_the_rendezvous_is_what_the_orchestrator_saw(tmp_path):
    """w never posts its gloo address and a majority names it. Nothing a colluder says excuses it: not its
    own "I gave up" after v posted its presence just before the deadline (every rank saw it: nothing to give
    up on), nor v's early empty report (w's address must come after w was first named to be late). What does:
    w reported its group broke before a majority named it (the first to fail: its store link broke, say; a
    saboteur can say so too, and pays the same), which one early accuser cannot deny it, or its address came
    about as it was first named; then it takes the dispute alone instead of an eviction."""
    from orchestrator.liveness import STALL_GRACE_S
    from orchestrator.membership import NOBODY, PRESENCE_SLACK_S

    gave_up = {"rendezvous": True, "missing": [0]}
    cases = ("lies after a presence just in time", "comes after an early empty report", "failed first")
    for case in cases + ("failed first despite an early accuser", "came just before it was named"):
        c = _abcvw_forming(tmp_path / case.replace(" ", "-"))
        gen = c.generation
        t0 = gen.started_at + 2
        if case == "lies after a presence just in time":
            c.saw_post(gen.id, "v", "presence", c.presence_deadline(gen) - 2 * PRESENCE_SLACK_S)
        elif case == "comes after an early empty report":
            assert c.report_stall("v", p.StallReport(generation=gen.id, round=c.round), t0) is None
            c.saw_post(gen.id, "w", "address", t0 + 1)  # refuses connections, say: named when gloo fails
        elif case == "came just before it was named":  # its address passed as the first report was on its way
            c.saw_post(gen.id, "w", "address", t0 + 3 - 0.5)
        else:
            if case == "failed first despite an early accuser":  # v names w first, to deny it the excuse
                _name_w(c, "v", t0 - 0.5)
            assert c.report_stall("w", p.StallReport(generation=gen.id, round=c.round, **gave_up), t0) is None
        _name_w(c, "abcv", t0 + 3)
        if case == "lies after a presence just in time":
            assert c.report_stall("w", p.StallReport(generation=gen.id, round=c.round, **gave_up), t0 + 4) is None
        for hk in "abcvw":
            beat(c, hk, t0 + 3 + STALL_GRACE_S - 1)
        c.tick(t0 + 3 + STALL_GRACE_S)
        if case not in cases[:2]:
            assert c.evictions() == {} and _disputes(c, gen.id) == [(NOBODY, "w")], case
        else:
            assert c.evictions() == {"w": 1} and _disputes(c, gen.id) == [], case


def test_ending_the_generation_does_not_dodge_a_pending_judgement(tmp_path):
    """w is named by a majority and its judgement is pending (the stall grace of a generation's first round);
    colluder v leaves (a first departure is free) to end the generation before it is due: w still takes a
    dispute."""
    from orchestrator.membership import NOBODY

    c = _abcvw_forming(tmp_path)
    gen = c.generation
    for hk in "abcvw":
        beat(c, hk, gen.started_at + 4)  # w is alive (a member silent since it was named would be taken for dead)
    _name_w(c, "abc", gen.started_at + 5)
    assert c.named
    c.leave("v", gen.started_at + 6)
    assert c.generation.id != gen.id and _disputes(c, gen.id) == [(NOBODY, "w")]


def test_saying_the_group_broke_while_forming_excuses_nobody_in_a_later_round(tmp_path):
    """Colluders file rendezvous failures in a round that trained, to make the member they withhold from
    look late rather than a staller: a group breaks while forming only in the round it formed in, so their
    reports count as plain stall reports, and the member a majority names is evicted."""
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=1000.0)
    for hk in ["h1", "h2", "h3", "c1", "c2", "v"]:
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    gen = c.generation
    check_in(c, 1)
    for hk in gen.members:
        c.saw_post(gen.id, hk, "address", 1)
    finish_round(c, 2)  # trained: the group formed
    assert c.generation.id == gen.id and c.round > gen.started_round
    v = gen.members.index("v")
    for hk, rendezvous in (("h1", False), ("h2", False), ("c1", True), ("c2", True)):
        report = p.StallReport(generation=gen.id, round=c.round, missing=[v], rendezvous=rendezvous)
        assert c.report_stall(hk, report, 3) is None
    for hk in gen.members:
        beat(c, hk, 4)
    c.tick(3 + NAMED_GRACE_S)
    assert "v" not in c.generation.members and c.evictions() == {"v": 1}


def test_a_miner_killed_under_its_peers_leaves_no_dispute_behind(tmp_path):
    """kill -9 of a miner in its generation's first round: the survivors name it, and its meta-miner's crash
    report ends the generation before the judgement is due. A death is a departure, nothing more: no
    dispute toward sitting out (a few kills within the window would otherwise bench an honest miner)."""
    c = _abcv_training(tmp_path)
    gen = c.generation
    _rendezvous_broken_by(c, "v", 2, rendezvous=False)
    assert c.named  # its judgement is pending
    beat(c, "v", 2.5, failed=True)  # its meta-miner: my miner died
    assert c.generation.id != gen.id  # re-formed (it is relaunched: a first departure costs no cool-down)
    assert _disputes(c, gen.id) == [] and c.evictions() == {} and not c.named


def test_a_restarted_meta_miner_joining_after_the_grace_is_a_departure_not_an_eviction(tmp_path):
    """kill -9 of v's meta-miner (its miner dies with it), restarted by systemd: the survivors name v, and the
    restarted meta-miner's join comes after the named grace. The join's own tick judged v with the last_seen
    the join had just set, and evicted it (seen in the chaos bench); a join is a departure (its miner
    restarted), so v is not judged: it departs and rejoins."""
    c = _abcv_training(tmp_path)
    gen = c.generation
    for hk in "abcv":
        beat(c, hk, 10)  # v's last heartbeat: its host dies at 10.5
    _rendezvous_broken_by(c, "v", 11.5, rendezvous=False)
    for hk in "abc":
        beat(c, hk, 12)
    answer = c.join("v", "cpu", 11.5 + NAMED_GRACE_S + 0.1)  # restarted, joining again
    assert c.evictions() == {} and c.generation.id != gen.id
    assert answer.status in ("assigned", "waiting", "cooldown"), answer


def test_a_member_named_by_the_majority_whose_miner_died_is_a_departure_not_an_eviction(tmp_path):
    """kill -9 of a miner: the survivors' exchange fails first and they name it; its meta-miner, alive,
    reports the crash a moment later. Within NAMED_GRACE_S that is a departure (the generation re-forms with
    it, relaunched), not an eviction toward the refusal."""
    c = _abcv_training(tmp_path)
    gen = c.generation
    rank = gen.members.index("v")
    for reporter in "abc":
        c.report_stall(reporter, p.StallReport(generation=gen.id, round=c.round, missing=[rank]), 2)
    assert c.generation.id == gen.id and c.evictions() == {}
    beat(c, "v", 2.5, failed=True)  # its meta-miner: my miner died
    c.tick(2 + NAMED_GRACE_S)
    assert c.generation.id != gen.id and c.evictions() == {}
    assert "v" in c.generation.members or "v" in {hk for hk in c.live}  # it rejoins once its cool-down is over


def _unnamed_break(c: Coordinator, now: float) -> None:
    """Every member of the generation reports that gloo's connect timed out with nobody to name."""
    gen = c.generation
    check_in(c, now)
    for hk in gen.members:
        report = p.StallReport(generation=gen.id, round=c.round, rendezvous=True, unnamed_connect=True)
        assert c.report_stall(hk, report, now) is None


def test_a_rendezvous_that_breaks_with_nobody_to_name_is_tested_one_member_out_at_a_time(tmp_path):
    """Every rank's gloo connect timed out and nobody could be named (a saboteur's address accepts and never
    answers): the generation re-forms without one member at a time, newest first; the one whose absence lets
    a round be agreed is found, tried first the next time, and sits out for a while when found again.
    Nobody is evicted, reported or cooled down; the honest members that sat out a test are back at once."""
    from orchestrator.liveness import STALL_GRACE_S, SUSPECT_SIT_OUT_S

    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0)
    for i, hk in enumerate("sabc"):  # the saboteur is the oldest: every honest member is tried first
        c.join(hk, "cpu", i)
    finish_round(c, 5)
    now = 10.0

    def break_until_a_round_is_agreed_without_s() -> list[str]:
        nonlocal now
        tried = []
        while set(c.generation.members) != set("abc"):
            gen = c.generation
            _unnamed_break(c, now)
            now += STALL_GRACE_S
            c.tick(now)
            assert c.generation.id != gen.id
            (out,) = set("sabc") - set(c.generation.members)
            tried.append(out)
            assert c.sitting_out(now) == {out}
            now += 1
        check_in(c, now)
        finish_round(c, now)
        return tried

    assert break_until_a_round_is_agreed_without_s() == ["c", "b", "a", "s"]
    assert c.sitting_out(now) == set()  # found once: a peer frozen through one rendezvous looks the same
    finish_round(c, now)  # s is back at the round boundary
    assert "s" in c.generation.members
    assert break_until_a_round_is_agreed_without_s() == ["s"]  # tried first: found again
    assert c.sitting_out(now) == {"s"} and c.sitting_out(now + SUSPECT_SIT_OUT_S + 1) == set()
    assert c.evictions() == {} and all(c.cooldown_left(hk, now) == 0 for hk in "sabc")
    # One member's word, or a break somebody was named for, starts no test.
    gen = c.generation
    check_in(c, now)
    c.report_stall("a", p.StallReport(generation=gen.id, round=c.round, rendezvous=True, unnamed_connect=True), now)
    for hk in "bc":
        c.report_stall(hk, p.StallReport(generation=gen.id, round=c.round, missing=[0], rendezvous=True), now)
    c.tick(now + STALL_GRACE_S + NAMED_GRACE_S)
    assert c.rendezvous.testing is None


def test_rendezvous_tests_survive_an_orchestrator_restart(tmp_path):
    """A saboteur must not wipe its record by outlasting a restart: the streak, the member sitting out to be
    tested and the findings are in the database, so the test goes on where it was and a suspect found before
    the restart is tried first after it."""
    from orchestrator.liveness import STALL_GRACE_S

    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0)
    for i, hk in enumerate("sabc"):
        c.join(hk, "cpu", i)
    finish_round(c, 5)
    now = 10.0

    def break_once() -> str:
        nonlocal c, now
        _unnamed_break(c, now)
        now += STALL_GRACE_S
        c.tick(now)
        (out,) = set("sabc") - set(c.generation.members)
        now += 1
        return out

    def restart() -> None:
        nonlocal c
        c.close()
        c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0)

    assert break_once() == "c"
    restart()
    assert c.rendezvous.testing == "c" and len(c.rendezvous.streak) == 1 and c.sitting_out(now) == {"c"}
    assert [break_once(), break_once()] == ["b", "a"]  # c was tried before the restart: not again
    restart()
    assert break_once() == "s"
    check_in(c, now)
    finish_round(c, now)  # agreed without s: found
    restart()
    assert c.rendezvous.found.keys() == {"s"} and c.rendezvous.streak == [] and c.rendezvous.testing is None
    finish_round(c, now)  # s is back at the round boundary
    assert "s" in c.generation.members
    assert break_once() == "s"  # tried first, from the finding made before the restart
    assert c.evictions() == {}


def test_a_rendezvous_test_needs_most_reporters_to_have_seen_the_connect_time_out(tmp_path):
    from orchestrator.liveness import STALL_GRACE_S

    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0)
    for i, hk in enumerate("abcs"):
        c.join(hk, "cpu", i)
    finish_round(c, 5)
    gen = c.generation
    check_in(c, 10)
    # The saboteur reports nothing; two of the three that did saw gloo's connect time out.
    for hk, unnamed in (("a", True), ("b", True), ("c", False)):
        report = p.StallReport(generation=gen.id, round=c.round, rendezvous=True, unnamed_connect=unnamed)
        assert c.report_stall(hk, report, 10) is None
    c.tick(10 + STALL_GRACE_S)
    assert c.rendezvous.testing == "s" and "s" not in c.generation.members


def test_a_rendezvous_test_never_holds_a_swarm_too_small_without_the_tested_member(tmp_path):
    """The saboteur leaves while an honest member sits out for its test: the ones left could train only with
    that member, so the test ends and they do (before, nobody trained until someone new joined)."""
    from orchestrator.liveness import STALL_GRACE_S

    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0)
    for i, hk in enumerate("sabc"):
        c.join(hk, "cpu", i)
    finish_round(c, 5)
    _unnamed_break(c, 10.0)
    c.tick(10.0 + STALL_GRACE_S)
    assert c.rendezvous.testing == "c" and set(c.generation.members) == set("sab")
    c.leave("s", 21.0)
    c.tick(22.0)
    assert c.generation is not None and set(c.generation.members) == set("abc")
    assert c.rendezvous.testing is None and c.sitting_out(22.0) == set()
    c.close()
    assert make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0).rendezvous.testing is None  # as persisted


def test_the_rendezvous_tests_row_stays_bounded(tmp_path):
    """A member that files an unnamed-connect report every round keeps one round's worth on record, and two
    colluders breaking every generation in turn grow the streak to one entry per member tried, no further."""
    from orchestrator.liveness import STALL_GRACE_S
    from orchestrator.membership import RENDEZVOUS_KEY

    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0, max_world_size=5)
    for i, hk in enumerate("abch"):
        c.join(hk, "cpu", i)
    finish_round(c, 5)
    check_in(c, 6)
    gen = c.generation
    for i in range(50):
        report = p.StallReport(generation=gen.id, round=c.round, rendezvous=True, unnamed_connect=True)
        c.report_stall("h", report, 10.0 + i)
        finish_round(c, 10.0 + i)
    assert c.generation.id == gen.id and len(c.rendezvous.unnamed) <= 1

    c.close()
    (tmp_path / "orch.sqlite").unlink()
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0, max_world_size=5)
    for i, hk in enumerate("xyabd"):  # x and y collude: whichever is in breaks the generation
        c.join(hk, "cpu", i)
    finish_round(c, 5)
    now = 10.0
    for _ in range(30):
        _unnamed_break(c, now)
        now += STALL_GRACE_S
        c.tick(now)
        now += 1
    assert len(c.rendezvous.streak) <= 5 + 1 and len(c.rendezvous.unnamed) <= 1
    assert c.evictions() == {}
    c._set_kv(RENDEZVOUS_KEY, {"streak": "not a list"})  # a hand-edited (or older) row
    c.close()
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=3600.0, max_world_size=5)
    assert c.rendezvous.streak == [] and c.rendezvous.testing is None  # started over, not a crash


def _abcv_then_w_joins(tmp_path) -> Coordinator:
    """a, b, c and v train (every presence seen), then w joins at a round boundary: a generation of five; a
    check-in timeout of a cold start's 60 s."""
    c = make(tmp_path, min_world_size=3, heartbeat_timeout_s=1000.0, checkin_timeout_s=60.0)
    for hk in "abcv":
        c.join(hk, "cpu", 0)
    finish_round(c, 0)
    check_in(c, 1)
    c.join("w", "cpu", 2)
    finish_round(c, 3)
    assert sorted(c.generation.members) == list("abcvw")
    return c


def _next_generation_with(c: Coordinator, joiner: str, now: float):
    """The current generation trains a round, every presence in; ``joiner`` joins at its boundary."""
    check_in(c, now)
    finish_round(c, now)
    c.join(joiner, "cpu", now + 0.5)
    finish_round(c, now + 1)
    assert joiner in c.generation.members
    return c.generation


def test_a_member_slow_to_present_twice_in_ten_minutes_is_removed_the_second_time(tmp_path):
    """The check-in rules give every member a cold start's 60 s to post its presence, at every re-form, where
    a running miner needs a second or two. v keeps its presence back: the first time is its one slow start in
    SLOW_PASS_WINDOW_S (a restarted or frozen honest miner looks the same) and the others wait; the second
    time it is removed SLOW_PRESENCE_GRACE_S after a majority presented, as a departure, not an eviction, with a
    dispute of its own kind: two such, and it sits out."""
    from orchestrator.membership import SLOW
    from orchestrator.presence import SLOW_PRESENCE_FLOOR_S, SLOW_PRESENCE_GRACE_S

    c = _abcv_then_w_joins(tmp_path)
    gen = c.generation
    t = gen.started_at + 1
    _presences(c, t, but="v")
    check_in(c, t, presence=False)
    c.tick(t + 30)  # later than the grace and the floor: its slow start, granted
    assert c.generation.id == gen.id and c.slow_passes == {"v": (gen.id, t + 30)}
    c.saw_post(gen.id, "v", "presence", t + 40)  # in the check-in rules' time
    gen = _next_generation_with(c, "x", t + 41)
    t = gen.started_at + 1
    _presences(c, t, but="v")
    deadline = max(t + SLOW_PRESENCE_GRACE_S, gen.started_at + SLOW_PRESENCE_FLOOR_S)
    c.tick(deadline - 0.1)
    assert c.generation.id == gen.id
    c.tick(deadline)
    assert "v" not in c.generation.members and c.evictions() == {} and _disputes(c, gen.id) == [(SLOW, "v")]
    assert "v" not in c.slow_passes  # the removal ends its slow start: rejoining starts cold
    # It rejoins (a first departure costs no cool-down; a rejoin starts cold: a new slow start) and keeps its
    # presence back again: waited for once more, then removed again, and with its second such dispute it sits out.
    gen = _next_generation_with(c, "v", deadline + 1)
    _presences(c, gen.started_at + 1, but="v")
    c.tick(gen.started_at + 1 + SLOW_PRESENCE_FLOOR_S)
    assert "v" in c.generation.members and c.slow_passes["v"][0] == gen.id
    c.saw_post(gen.id, "v", "presence", gen.started_at + 40)
    gen = _next_generation_with(c, "y", gen.started_at + 41)
    _presences(c, gen.started_at + 1, but="v")
    c.tick(gen.started_at + 1 + SLOW_PRESENCE_FLOOR_S)
    assert "v" not in c.generation.members and c.sitting_out(gen.started_at + 30) == {"v"} and c.evictions() == {}


def test_a_slow_start_the_generation_ended_before_is_not_used_up(tmp_path):
    """v starts cold and is slow to present; a colluder ends the generation before v's presence came (a crash
    report costs it one free departure). v's slow start did not end: in the next generation it is slow again,
    and waited for, not removed."""
    c = _abcv_then_w_joins(tmp_path)
    gen = c.generation
    _presences(c, gen.started_at + 1, but="v")
    c.tick(gen.started_at + 25)
    assert c.slow_passes["v"][0] == gen.id
    beat(c, "w", gen.started_at + 26, failed=True)  # w: "my miner crashed", the generation ends
    new = c.generation
    assert new.id != gen.id and "v" in new.members and "v" not in c.slow_passes
    _presences(c, new.started_at + 1, but="v")
    c.tick(new.started_at + 25)
    assert c.generation.id == new.id and c.slow_passes["v"][0] == new.id


def test_colluders_presenting_at_once_do_not_make_an_honest_member_slow_before_the_floor(tmp_path):
    from orchestrator.presence import SLOW_PRESENCE_FLOOR_S, slow_to_present

    members = list("abcde")  # k = 3: d and e (colluders) present at once, a a second later
    early = {"d": 0.1, "e": 0.1, "a": 1.0}
    assert slow_to_present(members, early, 0.0, 16.0) == []  # a + 15 s, but before the floor
    assert slow_to_present(members, early, 0.0, SLOW_PRESENCE_FLOOR_S) == ["b", "c"]
    assert slow_to_present(members, {"d": 0.1, "e": 0.1}, 0.0, 100.0) == []  # fewer than k: the check-in rules
    assert slow_to_present(members, {**early, "b": 30.0}, 0.0, 44.9) == ["c"]


def test_removals_for_slowness_bench_only_in_pairs_and_do_not_add_up_with_accusations():
    from orchestrator.membership import NOBODY, SLOW, sitting_out

    assert sitting_out([(1, SLOW, "c"), (2, SLOW, "c")]) == {"c"}
    assert sitting_out([(1, SLOW, "c"), (2, NOBODY, "c")]) == set()  # a late address is another matter
    # Two colluders' accusations and one engineered slow start: not the three generations that bench alone.
    assert sitting_out([(1, "d", "c"), (2, "e", "c"), (3, SLOW, "c")]) == set()


def test_a_slow_start_is_granted_once_per_window_and_only_across_generations():
    from orchestrator.presence import SLOW_PASS_WINDOW_S, slow_pass

    remove, passes = slow_pass({}, ["v"], 7, 100.0)
    assert remove == [] and passes == {"v": (7, 100.0)}
    assert slow_pass(passes, ["v"], 7, 200.0) == ([], passes)  # the same generation: still its slow start
    assert slow_pass(passes, ["v", "w"], 8, 200.0) == (["v"], {"w": (8, 200.0)})  # removed: its start ended
    later = 100.0 + SLOW_PASS_WINDOW_S
    assert slow_pass(passes, ["v"], 9, later) == ([], {"v": (9, later)})  # expired: a new one


def test_a_restored_generation_has_no_slow_starts_to_judge(tmp_path):
    """After an orchestrator restart every rank may be slow (their store went with the old process): the
    check-in rules alone apply to the restored generation."""
    c = _abcv_then_w_joins(tmp_path)
    gen, cfg = c.generation, c.membership_cfg
    c.close()
    c = Coordinator(tmp_path / "orch.sqlite", cfg, "127.0.0.1", 29500, "run", started_at=gen.started_at + 1)
    assert c.generation.id == gen.id
    _presences(c, gen.started_at + 2, but="v")
    c.tick(gen.started_at + 2 + 30)
    assert c.generation.id == gen.id and c.slow_passes == {}
