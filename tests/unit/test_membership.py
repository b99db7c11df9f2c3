"""Pure membership decisions: ranks, timeouts, cool-down, transitions, round agreement."""

from __future__ import annotations

from orchestrator import membership as m


def test_next_members_keeps_survivor_order_then_joiners_dense():
    order = m.next_members(["a", "b", "c", "d"], alive={"a", "c", "d", "x", "y"}, waiting=["y", "x"], max_world_size=10)
    assert order == ["a", "c", "d", "y", "x"]


def test_next_members_caps_at_max_world_size_and_dedups():
    assert m.next_members(["a"], {"a", "b", "c"}, ["b", "b", "c"], max_world_size=2) == ["a", "b"]
    assert m.next_members([], {"b"}, ["b", "b"], max_world_size=5) == ["b"]


def test_timed_out_is_strictly_older_than_timeout():
    assert m.timed_out({"a": 0.0, "b": 5.0, "c": 9.0}, now=10.0, timeout_s=5.0) == {"a"}


def test_rejoin_cooldown_doubles_after_the_first_departure():
    assert m.rejoin_cooldown(1, 10) == 0
    assert [m.rejoin_cooldown(n, 10) for n in (2, 3, 4)] == [10, 20, 40]
    assert m.rejoin_cooldown(30, 10, cap_s=600) == 600
    assert m.rejoin_cooldown(5, 0) == 0


def _plan(**kw):
    args = dict(
        members=[], alive=[], waiting=[], failed=False, at_round_boundary=False, min_world_size=1, max_world_size=8
    )
    args.update(kw)
    return m.plan_transition(**args)


def test_start_needs_min_world_size():
    assert not _plan(alive=["a"], waiting=["a"], min_world_size=2).now
    assert _plan(alive=["a", "b"], waiting=["a", "b"], min_world_size=2).now


def test_dead_member_or_failure_ends_generation_at_once():
    assert _plan(members=["a", "b"], alive=["a"]).now
    assert _plan(members=["a", "b"], alive=["a", "b"], failed=True).now
    assert not _plan(members=["a", "b"], alive=["a", "b"]).now


def test_joiners_wait_for_a_round_boundary_and_room():
    live = dict(members=["a"], alive=["a", "b"], waiting=["b"])
    assert not _plan(**live, at_round_boundary=False).now
    assert _plan(**live, at_round_boundary=True).now
    assert not _plan(**live, at_round_boundary=True, max_world_size=1).now


def test_a_laggard_is_given_up_on_after_its_grace_and_counts_as_a_dissenter():
    assert m.straggler_grace_s(3.0, 10.0, 1.0) == 10.0 and m.straggler_grace_s(30.0, 10.0, 1.0) == 30.0
    assert m.straggler_grace_s(30.0, 10.0, 0.5) == 15.0 and m.straggler_grace_s(-5.0, 10.0, 2.0) == 10.0
    members = ["a", "b", "c"]
    assert m.majority_state(members, {"a": "x"}) is None
    assert m.majority_state(members, {"a": "x", "b": "x"}) == "x"
    assert m.majority_state(["a", "b", "c", "d"], {"a": "x", "b": "x", "c": "y"}) is None

    # The majority reported 20 s into the round: c, done with the exchange, is waited for 20 s, then given up on.
    def late(now, exchanged=("a", "b", "c"), excused=()):
        return m.laggards(
            members, {"a", "b"}, 20.0, 0.0, now, 10.0, 1.0, exchanged=exchanged, excused=excused, loose_s=90.0
        )

    assert late(39.9) == [] and late(40.0) == ["c"]
    # Still in the exchange (perhaps waiting for a peer that withholds from it alone): the loose grace.
    assert late(109.9, exchanged=("a", "b")) == [] and late(110.0, exchanged=("a", "b")) == ["c"]
    # It said whom it waited for (a stall report): the stall rules judge, it is never a laggard.
    assert late(1e6, excused=("c",)) == []
    # Only when dropping them completes the round: past its tight grace, d waits while e is excused or in its loose one.
    five = ["a", "b", "c", "d", "e"]

    def late5(now, excused=(), exchanged=five):
        reported = {"a", "b", "c"}
        return m.laggards(five, reported, 20.0, 0.0, now, 10.0, 1.0, exchanged=exchanged, excused=excused, loose_s=90.0)

    assert late5(40.0) == ["d", "e"] and late5(1e6, excused=("e",)) == []
    assert late5(40.0, exchanged=("a", "b", "c", "d")) == [] and late5(110.0, exchanged=five[:4]) == ["d", "e"]
    late = m.round_outcome(members, {"a": "x", "b": "x"}, late=["c"])
    assert late.complete and late.agreed == "x" and late.dissenters == {"c"}
    assert not m.round_outcome(members, {"a": "x", "b": "x"}).complete


def test_round_outcome_majority_and_dissent():
    assert not m.round_outcome(["a", "b"], {"a": "x"}).complete
    agreed = m.round_outcome(["a", "b", "c"], {"a": "x", "b": "x", "c": "y"})
    assert agreed.complete and agreed.agreed == "x" and agreed.dissenters == {"c"}
    split = m.round_outcome(["a", "b"], {"a": "x", "b": "y"})
    assert split.complete and split.agreed is None
    unanimous = m.round_outcome(["a", "b"], {"a": "x", "b": "x", "z": "q"})
    assert unanimous.agreed == "x" and not unanimous.dissenters


def test_a_tolerant_run_needs_three_ranks():
    """2·max(1, b(n)) + 1 ranks: with 2, a trimmed mean or median is the plain mean of both."""
    assert [m.least_world_size(f) for f in (0.0, 0.1, 1 / 3, 0.49)] == [1, 3, 3, 3]
    assert m.effective_min_world_size(1, 1 / 3) == 3
    assert m.effective_min_world_size(2, 0.2) == 3
    assert m.effective_min_world_size(5, 1 / 3) == 5
    assert m.effective_min_world_size(1, 0.0) == 1  # a trusted run may train alone
    least = m.effective_min_world_size(1, 1 / 3)
    assert not _plan(alive=["a", "b"], waiting=["a", "b"], min_world_size=least).now
    assert _plan(alive=["a", "b", "c"], waiting=["a", "b", "c"], min_world_size=least).now


def test_never_checked_in_names_nobody_before_the_deadline():
    from orchestrator.membership import never_checked_in

    members = ["a", "b", "c"]
    came = {"a": 105.0, "b": 106.0}
    assert never_checked_in(members, came, started_at=100.0, now=129.9, timeout_s=30) == []
    assert never_checked_in(members, came, started_at=100.0, now=130.0, timeout_s=30) == ["c"]
    everyone = {"c": 1.0, "a": 2.0, "b": 3.0, "x": 4.0}
    assert never_checked_in(members, everyone, started_at=0.0, now=1e9, timeout_s=30) == []


def test_a_member_is_late_only_beside_honest_ones_that_were_not():
    """On a loaded host every miner starts slowly (a CI run had all three of a generation's miners past the
    12 s check-in timeout, and all three were evicted, two of them honest). The deadline counts from the
    check-in of the k-th member to come (k = ⌊(n − 1)/2⌋ + 1, more than may be hostile), plus half a timeout."""
    from orchestrator.membership import NOBODY_ARRIVED_TIMEOUTS, never_checked_in, nobody_arrived

    members = ["h", "a", "b"]
    cap = NOBODY_ARRIVED_TIMEOUTS * 12
    assert never_checked_in(members, {}, started_at=0.0, now=1e6, timeout_s=12) == []
    assert never_checked_in(members, {"x": 1.0}, started_at=0.0, now=1e6, timeout_s=12) == []  # not a member
    # A hostile h checks in at once; the slow honest a and b are not late beside it alone.
    assert never_checked_in(members, {"h": 0.1}, started_at=0.0, now=12.0, timeout_s=12) == []
    assert never_checked_in(members, {"h": 0.1, "a": 14.0}, started_at=0.0, now=19.9, timeout_s=12) == []
    assert never_checked_in(members, {"h": 0.1, "a": 14.0}, started_at=0.0, now=20.0, timeout_s=12) == ["b"]
    # A silent h: the second to come (b at 16 s) gives it until 22 s.
    assert never_checked_in(members, {"a": 14.0, "b": 16.0}, started_at=0.0, now=21.9, timeout_s=12) == []
    assert never_checked_in(members, {"a": 14.0, "b": 16.0}, started_at=0.0, now=22.0, timeout_s=12) == ["h"]
    # Early arrivals leave the others the whole timeout, not less.
    assert never_checked_in(members, {"a": 1.0, "b": 2.0}, started_at=0.0, now=11.9, timeout_s=12) == []
    assert never_checked_in(members, {"a": 1.0, "b": 2.0}, started_at=0.0, now=12.0, timeout_s=12) == ["h"]
    # Fewer than k came: the others are late at the cap.
    assert never_checked_in(members, {"a": 5.0}, started_at=0.0, now=cap - 0.1, timeout_s=12) == []
    assert never_checked_in(members, {"a": 5.0}, started_at=0.0, now=cap, timeout_s=12) == ["h", "b"]
    # Nobody at all, for as long: the generation ends (as departures, see test_coordinator).
    assert not nobody_arrived(members, {}, started_at=0.0, now=cap - 0.1, timeout_s=12)
    assert nobody_arrived(members, {"x": 1.0}, started_at=0.0, now=cap, timeout_s=12)
    assert not nobody_arrived(members, {"b": 30.0}, started_at=0.0, now=cap, timeout_s=12)
    # Five members, two of them hostile and prompt: the third to come is honest.
    five = ["h1", "h2", "a", "b", "c"]
    prompt = {"h1": 0.1, "h2": 0.2, "a": 14.0}
    assert never_checked_in(five, prompt, started_at=0.0, now=19.9, timeout_s=12) == []
    assert never_checked_in(five, prompt, started_at=0.0, now=20.0, timeout_s=12) == ["b", "c"]


def test_named_by_majority_needs_most_of_the_others():
    from orchestrator.membership import named_by_majority

    members = ["a", "b", "c", "d"]
    # Three honest ranks name the staller d: 3 of its 3 others.
    assert named_by_majority(members, {"a": ["d"], "b": ["d"], "c": ["d"]}) == ["d"]
    # Two of three others is a strict majority too; one is not.
    assert named_by_majority(members, {"a": ["d"], "b": ["d"]}) == ["d"]
    assert named_by_majority(members, {"a": ["d"]}) == []
    # The bound is the run's Byzantine fraction: one colluder of four (f = 1/4) cannot name anyone out;
    # two of six (f = 1/3) cannot either (2 of 5 others). Two of four (f = 1/2, beyond what a run
    # tolerates) could.
    assert named_by_majority(members, {"d": ["a"]}) == []
    assert named_by_majority(members, {"c": ["a"], "d": ["a"]}) == ["a"]
    six = ["a", "b", "c", "d", "e", "f"]
    assert named_by_majority(six, {"e": ["a"], "f": ["a"]}) == []
    # Self-accusations, strangers and repeated names do not count.
    assert named_by_majority(members, {"a": ["a", "a"], "x": ["b"], "c": ["b", "b"]}) == []
    assert named_by_majority(["a"], {"a": ["a"]}) == []


def test_pairs_that_keep_breaking_generations_sit_out_both_and_nobody_else():
    from orchestrator.membership import sitting_out

    assert sitting_out([]) == set()
    # one broken generation: nobody sits out yet (a link can fail once)
    assert sitting_out([(1, "h0", "x")]) == set()
    # the same pair in two generations, in either direction: both sit out, the others stay
    assert sitting_out([(1, "h0", "x"), (2, "x", "h0"), (2, "h1", "h2")]) == {"h0", "x"}
    # two reports in one generation are one generation
    assert sitting_out([(1, "h0", "x"), (1, "x", "h0")]) == set()
    # an accuser that names a different member each time (or a sender that withholds from a different
    # one) sits out alone after three broken generations; none of its counterparts does
    assert sitting_out([(1, "a", "h1"), (2, "a", "h2")]) == set()
    assert sitting_out([(1, "a", "h1"), (2, "a", "h2"), (3, "a", "h3")]) == {"a"}
    assert sitting_out([(1, "h1", "x"), (2, "h2", "x"), (3, "h3", "x")]) == {"x"}
    assert sitting_out([(1, "a", "h1"), (2, "a", "h2"), (3, "a", "h1")]) == {"a", "h1"}
    assert sitting_out([(1, "a", "a"), (2, "a", "a")]) == set()  # naming oneself is no dispute


def test_a_sweeping_accusation_nobody_backs_is_the_accusers_own_trouble():
    from orchestrator.membership import NOBODY, disputes_of, sitting_out

    assert disputes_of({"h0": ["x"], "h1": []}) == [("h0", "x")]
    # one rank names everyone, nobody else names any of them: a dispute with nobody
    assert disputes_of({"x": ["h0", "h1", "h2"]}) == [("x", NOBODY)]
    # of several names, the ones another reporter backs stay
    assert sorted(disputes_of({"h0": ["x", "h2"], "h1": ["x"]})) == [("h0", "x"), ("h1", "x")]
    assert disputes_of({"x": ["x"]}) == []
    # twice in the window: the sweeping accuser sits out, alone; NOBODY is nobody
    assert sitting_out([(1, "x", NOBODY), (2, "x", NOBODY)]) == {"x"}


def test_rendezvous_test_sits_out_one_member_at_a_time_newest_first():
    seniority = ["a", "b", "c", "s"]  # oldest first: s joined last
    four = ["a", "b", "c", "s"]
    assert m.rendezvous_test([], seniority, 3) is None  # no break, no test
    assert m.rendezvous_test([(four, None)], seniority, 3) == "s"
    # s was out and the next generation broke too: s is back, the next newest is tried.
    assert m.rendezvous_test([(four, None), (["a", "b", "c"], "s")], seniority, 3) == "c"
    streak = [(four, None), (["a", "b", "c"], "s"), (["a", "b", "s"], "c"), (["a", "c", "s"], "b")]
    assert m.rendezvous_test(streak, seniority, 3) == "a"
    # Every member was tried and the rendezvous still broke: not one saboteur; nobody is tested.
    assert m.rendezvous_test([*streak, (["b", "c", "s"], "a")], seniority, 3) is None
    # A generation without one member would be below the minimum: no test.
    assert m.rendezvous_test([(["a", "b", "s"], None)], seniority, 3) is None
    # A hotkey the slots no longer know counts as the newest; ties go by hotkey.
    assert m.rendezvous_test([(["a", "x", "b", "c"], None)], seniority, 3) == "x"
    # A member found before is tried first, whatever its seniority.
    assert m.rendezvous_test([(four, None)], seniority, 3, {"a": 1}) == "a"


def test_rendezvous_suspect_is_the_member_that_sat_out_when_a_round_was_agreed():
    assert m.rendezvous_suspect("s", ["a", "b", "c"]) == "s"
    assert m.rendezvous_suspect("s", ["a", "b", "s"]) is None  # it was back: nothing learned
    assert m.rendezvous_suspect(None, ["a", "b", "c"]) is None


def test_a_member_a_majority_named_at_a_failed_rendezvous_disputes_alone():
    from orchestrator.membership import NOBODY, disputes_of, sitting_out

    named = {"a": ["v"], "b": ["v"], "c": ["v", "b"], "v": ["a"]}
    # v's accusers share none of its dispute, and v's own word (naming a) counts for nothing
    assert sorted(disputes_of(named, alone=["v"])) == [(NOBODY, "v"), ("c", "b")]
    assert sorted(disputes_of(named)) == [("a", "v"), ("b", "v"), ("c", "v"), ("v", "a")]  # pairs otherwise
    # twice: v sits out, alone
    assert sitting_out([(1, NOBODY, "v"), (2, NOBODY, "v"), (2, "c", "b")]) == {"v"}
