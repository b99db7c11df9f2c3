"""Blame the one who is missing, never the one who reports: a real swarm on the embedded chain (the
orchestrator, three honest meta-miners, then hostile ones, one at a time, as real processes over a real gloo group).

1. A member that joins and heartbeats but never starts a rank (``tests/adversaries/silent_miner.py``)
   is in the first generation: it never checks in, and the orchestrator removes it on its own observation,
   ``--checkin-timeout`` after the generation formed or half of it after the honest members checked in,
   whichever is later (``membership.never_checked_in``: a slow host's start blames nobody).
2. A member that trains a round and then stalls the exchange (``tests/adversaries/stalling_miner.py``)
   joins at a round boundary: every honest rank's exchange times out on it alone (``--timeout``), each
   reports the rank it waited for, and the orchestrator removes the member most of the others name.
3. A member that checks in, reaches the store and posts its presence, but never joins the gloo group
   (``tests/adversaries/rendezvous_saboteur.py``): every honest rank's rendezvous times out waiting for
   its address alone; each names it (``group.rendezvous_culprits``), and it is removed the same way once
   the stall grace shows it never came (a member whose address arrives late is not evicted: it may be an
   honest miner frozen for a few seconds; it takes a dispute alone).

4. A member whose posted gloo address accepts connections and never answers
   (``tests/adversaries/mute_saboteur.py``): every honest rank's connect times out with nobody to name.
   The orchestrator re-forms without one member at a time, newest first (``membership.rendezvous_test``);
   the round agreed without it finds it (found again, it would be tried first and sit out; not evicted: a
   finding could be a colluder's framing, or a peer frozen through one rendezvous). It costs a broken
   rendezvous: gloo's connect wait (5 attempts of ``group.connect_timeout_s``: 15 s here) and the stall grace.

5. A member that trains honestly but reports each round's state 40 s after the others, inside the round timeout
   (``tests/adversaries/late_reporter.py``): once a strict majority agreed the round, it gets the straggler grace
   (``--straggler-grace``), then the round commits with the majority's state and it is evicted.

6. The same late reporter, filing an empty stall report for each round first
   (``tests/adversaries/excused_late_reporter.py``): an empty report excuses nobody, so it is removed after
   the same grace (as a departure: a failure is never held against the one who reports it).

7. A member that passes the store tunnel but never posts its presence (``tests/adversaries/absent_presence.py``):
   the orchestrator sees every presence pass its tunnel and evicts it on the check-in rules.

8. A member that posts its presence, never joins gloo, and says at once that its group broke while forming
   (``tests/adversaries/quitting_saboteur.py``), before anyone names it: what an honest miner whose store link
   broke says. It is not evicted; it takes each broken generation's dispute alone and sits out after the
   second, while its honest accusers keep their seats.

Each time the honest members have agreed a round in a new generation within 2 × ``--timeout`` and 20 s
(the new generation's forming and first round on a loaded 2-core host), the hostile hotkey is not in it, and no honest meta-miner counted a crash or got a cool-down: the
orchestrator's ``evictions`` name only hostile hotkeys.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from orchestrator.liveness import STALL_GRACE_S
from template.miner.group import connect_timeout_s
from tests.integration.test_swarm_e2e import (
    _spawn,
    _status,
    _wait,
    meta_miner_starter,
    register_extra,
    small_swarm,
    stop_all,
)

pytestmark = [pytest.mark.timeout(480)]
TIMEOUT = 10  # the miners' collective timeout, seconds
CHECKIN_TIMEOUT = 12  # a miner on a loaded 2-core machine took more than 6 s to start and check in


def test_a_silent_member_and_a_staller_are_removed_and_nobody_honest_is_blamed(sim_chain, tmp_path):
    dev_chain = sim_chain
    silent, staller, saboteur, mute, late, excused, absent, quitter = register_extra(
        dev_chain, "adv-silent", "adv-staller", "adv-saboteur", "adv-mute", "adv-late", "adv-excused", "adv-absent",
        "adv-quitter",
    )  # fmt: skip
    honest = list(dev_chain.subnet.miners)
    orchestrator, url, chain, env = small_swarm(
        dev_chain, tmp_path, "--min-world-size", "3", "--heartbeat-timeout", "30",
        "--checkin-timeout", str(CHECKIN_TIMEOUT),
        "--rejoin-cooldown", "600",  # an evicted hotkey stays out for the rest of the test
    )  # fmt: skip
    logs = [tmp_path / "orchestrator.log"]
    procs = [_spawn(orchestrator, logs[0], env)]
    api = {}
    hk = lambda w: w.hotkey.ss58_address

    start = meta_miner_starter(tmp_path, url, chain, env, TIMEOUT, procs, logs, api)

    def joined(w):
        s = _status(url)
        return hk(w) in {m["hotkey"] for m in s["members"] + s["waiting"]}

    def members():
        return {m["hotkey"] for m in _status(url)["members"]}

    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        # 1. The silent member joins first, so the first generation (3 members) holds it.
        start(silent, "silent_miner.py")
        _wait("the silent member to join", lambda: joined(silent), 60, logs)
        for w in honest:
            start(w)
        first = _wait(
            "a generation with the silent member", lambda: hk(silent) in members() and _status(url), 120, logs
        )
        formed = time.monotonic()
        ready = {}  # when enough members had checked in for the late to be named (the k-th check-in)

        def seen_ready(s):
            if s["generation"] == first["generation"] and "at" not in ready:
                ago = sorted((m["checked_in_s"] for m in s["members"] if m["checked_in_s"] is not None), reverse=True)
                k = (len(s["members"]) - 1) // 2 + 1
                if len(ago) >= k:
                    ready["at"] = time.monotonic() - ago[k - 1]
            return s

        honest_only = lambda s: (
            s["generation"] != first["generation"] and {m["hotkey"] for m in s["members"]} == {hk(w) for w in honest}
        )
        _wait("a generation of the honest members alone", lambda: honest_only(seen_ready(_status(url))), 120, logs)
        # Counted from when the honest members were there to be held up: their own start-up (torch's import,
        # the model's build) on a loaded host is not the silent member's doing.
        assert "at" in ready, "the first generation was never seen with a majority checked in"
        since = max(formed, ready["at"])
        removed_s = time.monotonic() - since
        after = _wait(
            "a round agreed by the honest members in a generation without the silent one",
            lambda: honest_only(s := _status(url)) and s["round"] > first["round"] and s,
            120,
            logs,
        )
        recovered_s = time.monotonic() - since
        # Removed within its check-in deadline (plus a tick and the new generation's forming); training again
        # within the same bound as the phases below (the round's own time is the host's load, not the attack).
        assert removed_s <= CHECKIN_TIMEOUT + TIMEOUT, (removed_s, ready["at"] - formed)
        assert recovered_s <= 2 * TIMEOUT + 20, (recovered_s, ready["at"] - formed)
        assert after["evictions"] == {hk(silent): 1}, after["evictions"]

        # 2. The staller joins at a round boundary, trains a round, then stalls the exchange.
        start(staller, "stalling_miner.py")
        with_staller = _wait(
            "a generation with the staller", lambda: hk(staller) in members() and _status(url), 120, logs
        )
        _wait("a round agreed with the staller", lambda: _status(url)["round"] > with_staller["round"], 120, logs)
        stalled = time.monotonic()
        miner_logs = {w.name: tmp_path / w.name / "miner" / "miner.log" for w in honest}
        seen = {name: len(path.read_bytes()) for name, path in miner_logs.items()}
        final = _wait(
            "a round agreed without the staller",
            lambda: (
                (s := _status(url))["generation"] != with_staller["generation"]
                and hk(staller) not in {m["hotkey"] for m in s["members"]}
                and s["round"] > with_staller["round"] + 1
                and s
            ),
            180,
            logs,
        )
        stall_recovered_s = time.monotonic() - stalled
        assert {m["hotkey"] for m in final["members"]} == {hk(w) for w in honest}
        assert final["evictions"] == {hk(silent): 1, hk(staller): 1}, final["evictions"]
        # The stall cost one timeout and the new generation's first round, not the round timeout (900 s).
        assert stall_recovered_s <= 2 * TIMEOUT + 20, stall_recovered_s
        # The honest ranks' exchange broke in the round's outer phase, and the next generation starts that round
        # from the same state: each sends the inner phase it did instead of training the round again.
        for name, path in miner_logs.items():
            assert "inner steps carried over" in path.read_bytes()[seen[name] :].decode(errors="replace"), name

        # 3. The saboteur joins at a round boundary, checks in, reaches the store and posts its presence,
        #    but never posts its gloo address: every honest rank's rendezvous waits for that key alone
        #    (torch names it), each names its rank, and a majority removes it.
        start(saboteur, "rendezvous_saboteur.py")
        with_saboteur = _wait(
            "a generation with the saboteur", lambda: hk(saboteur) in members() and _status(url), 120, logs
        )
        sabotaged = time.monotonic()
        done = _wait(
            "a round agreed without the saboteur",
            lambda: (
                (s := _status(url))["generation"] != with_saboteur["generation"]
                and hk(saboteur) not in {m["hotkey"] for m in s["members"]}
                and s["round"] > with_saboteur["round"]
                and s
            ),
            180,
            logs,
        )
        sabotage_recovered_s = time.monotonic() - sabotaged
        assert done["evictions"] == {hk(silent): 1, hk(staller): 1, hk(saboteur): 1}, done["evictions"]
        assert sabotage_recovered_s <= 2 * TIMEOUT + 20, sabotage_recovered_s
        assert f"evicted {hk(saboteur)}: stalled round" in logs[0].read_text(errors="replace")

        # 4. A saboteur nobody can name joins at a round boundary: its gloo address accepts connections and never
        #    answers, so every honest rank's connect times out with nothing to blame. The generation re-forms
        #    without one member at a time, newest first: it first, and the round agreed without it makes it the
        #    suspect, which sits out (no eviction: the finding could be a colluder's framing).
        start(mute, "mute_saboteur.py")
        mute_meta = procs[-1]
        with_mute = _wait(
            "a generation with the mute saboteur", lambda: hk(mute) in members() and _status(url), 120, logs
        )
        muted = time.monotonic()
        tested = f"{hk(mute)} sits out the next one"

        def tested_or_evicted():
            s = _status(url)
            return (tested in logs[0].read_text(errors="replace") or s["evictions"].get(hk(mute))) and s

        _wait("the mute saboteur tested or named", tested_or_evicted, 330, logs)
        # It leaves now: found once, it would be back at the next round boundary and break one more rendezvous
        # (tried first then, it is found again and sits out: tests/unit/test_coordinator.py).
        mute_meta.terminate()
        mute_meta.wait(30)
        after_mute = _wait(
            "a round agreed without the mute saboteur",
            lambda: (
                (s := _status(url))["generation"] != with_mute["generation"]
                and hk(mute) not in {m["hotkey"] for m in s["members"]}
                and s["round"] > with_mute["round"]
                and s
            ),
            60,
            logs,
        )
        mute_recovered_s = time.monotonic() - muted
        assert {m["hotkey"] for m in after_mute["members"]} == {hk(w) for w in honest}
        # Whether the group forms depends on how its port sorts against the others' (gloo's rule): every connect
        # times out, or the catch-up's first collective does, with nobody to name either way; the test re-forms
        # without it and finds it (no eviction). Were it named by its peers instead, a majority would evict it.
        orch_log = logs[0].read_text(errors="replace")
        evicted = after_mute["evictions"].get(hk(mute)) == 1
        found = f"{hk(mute)} sat out and the rendezvous formed after 1 broke without it (found 1 time(s)" in orch_log
        assert evicted != found, (evicted, found)
        assert {k: v for k, v in after_mute["evictions"].items() if k != hk(mute)} == done["evictions"]
        mute_way = "evicted (named by its peers)" if evicted else "found by sitting members out"
        done = _wait(
            "a round agreed after it left", lambda: (s := _status(url))["round"] > after_mute["round"] and s, 120, logs
        )

        # 5. A member that trains honestly but, from its second round on, reports each round 40 s after the others
        #    (inside the 900 s round timeout): once a majority agreed the round, it is waited for the straggler
        #    grace (10 s here), then the round commits without it and it is evicted.
        start(late, "late_reporter.py")
        with_late = _wait(
            "a generation with the late reporter", lambda: hk(late) in members() and _status(url), 120, logs
        )
        _wait("a round agreed with the late reporter", lambda: _status(url)["round"] > with_late["round"], 120, logs)
        held = time.monotonic()
        after_late = _wait(
            "a round agreed without the late reporter",
            lambda: (
                (s := _status(url))["generation"] != with_late["generation"]
                and hk(late) not in {m["hotkey"] for m in s["members"]}
                and s["round"] > with_late["round"] + 2
                and s
            ),
            120,
            logs,
        )
        late_recovered_s = time.monotonic() - held
        assert {m["hotkey"] for m in after_late["members"]} == {hk(w) for w in honest}
        assert after_late["evictions"].get(hk(late)) == 1, after_late["evictions"]
        assert f"evicted {hk(late)}: no state report for round" in logs[0].read_text(errors="replace")
        assert late_recovered_s < 40, late_recovered_s  # it never held a round its whole 40 s

        # 6. The same, but it first files an empty stall report for each round (a failure it names nobody for),
        #    which once excused it from the grace: every round would have waited its 40 s. It excuses nobody now;
        #    the member is removed after the grace, as a departure (a failure is never held against its reporter).
        start(excused, "excused_late_reporter.py")
        excused_meta = procs[-1]
        with_excused = _wait(
            "a generation with the excused late reporter", lambda: hk(excused) in members() and _status(url), 120, logs
        )
        _wait("a round agreed with it", lambda: _status(url)["round"] > with_excused["round"], 120, logs)
        held = time.monotonic()
        removed = re.compile(rf"removed {hk(excused)}: no state report for round \d+ ([\d.]+)s after a majority's")
        _wait("its removal", lambda: removed.search(logs[0].read_text(errors="replace")), 120, logs)
        # It leaves now: a first departure costs no cool-down, so it would be back at once for another try (and
        # its miner's new process, slower to start than the others' 10 s, would break one rendezvous too).
        excused_meta.terminate()
        excused_meta.wait(30)
        at = _status(url)
        done = _wait(
            "a round agreed without the excused late reporter",
            lambda: (
                (s := _status(url))["generation"] != with_excused["generation"]
                and hk(excused) not in {m["hotkey"] for m in s["members"]}
                and s["round"] > at["round"]
                and s
            ),
            120,
            logs,
        )
        excused_recovered_s = time.monotonic() - held
        assert {m["hotkey"] for m in done["members"]} == {hk(w) for w in honest}
        assert done["evictions"] == after_late["evictions"], done["evictions"]  # a departure, not an eviction
        held_s = removed.findall(logs[0].read_text(errors="replace"))
        # Removed once (it left at once after), after about the 10 s grace: it never held the round its whole 40 s.
        assert len(held_s) == 1 and 9.0 <= float(held_s[0]) < 20, held_s

        # 7. A member that passes the store tunnel and connects to the store but never posts its presence: the honest
        #    ranks wait for its key, and the orchestrator, which sees every presence pass its tunnel, evicts it on
        #    the check-in rules (not at the generation's presence deadline, three check-in timeouts away).
        start(absent, "absent_presence.py")
        with_absent = _wait(
            "a generation with the absent member", lambda: hk(absent) in members() and _status(url), 120, logs
        )
        absent_at = time.monotonic()
        after_absent = _wait(
            "a round agreed without the absent member",
            lambda: (
                (s := _status(url))["generation"] != with_absent["generation"]
                and hk(absent) not in {m["hotkey"] for m in s["members"]}
                and s["round"] > with_absent["round"]
                and s
            ),
            120,
            logs,
        )
        absent_recovered_s = time.monotonic() - absent_at
        assert {m["hotkey"] for m in after_absent["members"]} == {hk(w) for w in honest}
        assert after_absent["evictions"] == {**done["evictions"], hk(absent): 1}, after_absent["evictions"]
        assert f"evicted {hk(absent)}: never posted its presence within" in logs[0].read_text(errors="replace")
        assert absent_recovered_s <= CHECKIN_TIMEOUT + 2 * TIMEOUT + 20, absent_recovered_s

        # 8. A member that posts its presence, never joins gloo, and says at once that its group broke while forming
        #    (as an honest miner whose store link broke would), before any honest rank's wait for its address runs
        #    out and names it. It is not evicted (the orchestrator cannot tell it from that honest miner) but takes
        #    each broken generation's dispute alone: after the second it sits out, and its accusers keep their seats.
        start(quitter, "quitting_saboteur.py")
        with_quitter = _wait(
            "a generation with the quitting saboteur", lambda: hk(quitter) in members() and _status(url), 120, logs
        )
        quit_at = time.monotonic()
        benched = _wait(
            "a round agreed while the quitting saboteur sits out",
            lambda: (
                hk(quitter) in (s := _status(url))["sitting_out"]
                and hk(quitter) not in {m["hotkey"] for m in s["members"]}
                and s["round"] > with_quitter["round"]
                and s
            ),
            240,
            logs,
        )
        quit_recovered_s = time.monotonic() - quit_at
        assert {m["hotkey"] for m in benched["members"]} == {hk(w) for w in honest}
        assert benched["sitting_out"] == [hk(quitter)], benched["sitting_out"]  # no honest accuser sits out
        assert benched["evictions"] == after_absent["evictions"], benched["evictions"]
        excused_twice = f"{hk(quitter)}, named by a majority, came late to the rendezvous or said first that it broke"
        assert " ".join(logs[0].read_text(errors="replace").split()).count(excused_twice) == 2  # (the log wraps)
        # Two broken rendezvous (each: gloo's connect wait, the stall grace, a re-form) and a round.
        assert quit_recovered_s <= 2 * (connect_timeout_s(TIMEOUT) + STALL_GRACE_S + TIMEOUT) + 20, quit_recovered_s
        done = benched

        # No honest meta-miner counted a crash (a broken group is not one) or was reported.
        for w in honest:
            status = httpx.get(f"http://127.0.0.2:{api[w.name]}/v1/status", timeout=5).json()
            assert status["restarts"] == 0, (w.name, status)
        assert all(m["reports"] == 0 for m in done["members"]), done["members"]
        orch_log = logs[0].read_text(errors="replace")
        assert f"evicted {hk(staller)}: stalled round" in orch_log
        assert f"evicted {hk(silent)}: never checked in" in orch_log
        # The honest ranks named the staller, and only it.
        stalls = [
            line
            for w in honest
            for line in (tmp_path / w.name / "miner" / "stdout.log").read_text(errors="replace").splitlines()
            if "no block from rank" in line
        ]
        assert stalls, "no honest rank saw the stall"
    finally:
        stop_all(procs)
    print(
        f"silent member: training again {recovered_s:.1f} s after the honest members checked in (removed after {removed_s:.1f} s); staller: "
        f"{stall_recovered_s:.1f} s; rendezvous saboteur: {sabotage_recovered_s:.1f} s; "
        f"mute saboteur: {mute_recovered_s:.1f} s ({mute_way}); late reporter: {late_recovered_s:.1f} s; "
        f"excused late reporter: {excused_recovered_s:.1f} s; absent presence: {absent_recovered_s:.1f} s; "
        f"quitting saboteur: {quit_recovered_s:.1f} s (sits out after its second broken generation)"
    )
