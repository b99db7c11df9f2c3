"""A member that withholds its block from one peer only (``tests/adversaries/withholding_miner.py``): a
real swarm on the embedded chain, three honest meta-miners and the withholder. Only rank 0's exchange
times out on it; the others received its block, so no majority names it, and the orchestrator cannot
tell a withholder from a lying accuser. It blames neither: each broken generation re-forms (nobody is
evicted or charged a cool-down), the accusation is recorded as a dispute, and once the same pair has
broken two generations both sit out (``membership.sitting_out``), so the two other honest members train
on instead of the run stalling for good.
"""

from __future__ import annotations

import pytest

from tests.integration.test_swarm_e2e import (
    _spawn,
    _status,
    _wait,
    meta_miner_starter,
    register_extra,
    small_swarm,
    stop_all,
)

pytestmark = [pytest.mark.timeout(420)]
TIMEOUT = 6  # the miners' collective timeout, seconds


def test_a_withholder_and_its_accuser_sit_out_and_the_others_train_on(sim_chain, tmp_path):
    dev_chain = sim_chain
    (withholder,) = register_extra(dev_chain, "adv-withholder")
    honest = list(dev_chain.subnet.miners)
    orchestrator, url, chain, env = small_swarm(
        dev_chain, tmp_path, "--min-world-size", "2", "--byzantine-fraction", "0", "--heartbeat-timeout", "30",
    )  # fmt: skip
    logs = [tmp_path / "orchestrator.log"]
    procs = [_spawn(orchestrator, logs[0], env)]
    hk = lambda w: w.hotkey.ss58_address

    start = meta_miner_starter(tmp_path, url, chain, env, TIMEOUT, procs, logs)

    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        for w in honest:
            start(w)
        _wait("a generation of the honest members", lambda: _status(url)["world_size"] == 3, 120, logs)
        start(withholder, "withholding_miner.py")

        def with_withholder():
            s = _status(url)
            return hk(withholder) in {m["hotkey"] for m in s["members"]} and s

        first = _wait("a generation with the withholder", with_withholder, 120, logs)
        victim = next(m["hotkey"] for m in first["members"] if m["rank"] == 0)

        def trained_on():
            s = _status(url)
            return (
                set(s["sitting_out"]) == {hk(withholder), victim}
                and {m["hotkey"] for m in s["members"]} == {hk(w) for w in honest} - {victim}
                and s["round"] > first["round"] + 1
                and s
            )

        final = _wait("the withholder and its accuser sitting out, the others training on", trained_on, 240, logs)
        assert final["evictions"] == {}, final["evictions"]  # nobody blamed
        orch_log = " ".join(logs[0].read_text(errors="replace").split())  # (rich wraps long lines)
        assert orch_log.count("no member was named by a majority, re-forming") >= 2
        assert f"{victim} waited for {hk(withholder)}" in orch_log
    finally:
        stop_all(procs)
