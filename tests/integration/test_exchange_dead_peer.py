"""A peer that dies is the only one its survivors name: a real 4-rank gloo group (processes on
127.0.0.1) where rank 0 exits right after the group formed, and ranks 1-3 then run the contribution
exchange (:class:`template.engine.exchange.DirectExchange`). Each survivor's link to rank 0 is already
closed when it issues its sends, so that link fails at once; its block must still reach the other
survivors, or they name it as missing too and a strict majority of them gets an honest member evicted
(found by ``scripts/bench/chaos.py``: a meta-miner's kill -9 got an honest survivor evicted with it)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from template.engine.exchange import DirectExchange, GroupFailure

pytestmark = pytest.mark.timeout(120)
N = 4
TIMEOUT_S = 20


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group(
        "gloo", store=dist.PrefixStore("g/", store), rank=rank, world_size=N, timeout=timedelta(seconds=TIMEOUT_S)
    )
    store.add("formed", 1)
    while store.add("formed", 0) < N:
        time.sleep(0.01)
    if rank == 0:
        os._exit(0)  # dies: its links close
    try:
        time.sleep(2)  # every survivor sees the closed link before it issues a send on it
        exchange = DirectExchange(N, 64, torch.device("cpu"))
        try:
            exchange.all_gather(bytes([rank]) * 8, b"")
            result = {"missing": None}
        except GroupFailure as failure:
            result = {"missing": list(failure.missing), "error": str(failure)}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    except BaseException:
        Path(out, f"rank{rank}.err").write_text(traceback.format_exc())
    store.add("done", 1)  # leave together: a survivor closing early would fail the others' links
    deadline = time.monotonic() + 60
    while store.add("done", 0) < N - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(0)


def test_survivors_of_a_dead_peer_name_only_the_dead_peer(tmp_path):
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, store.port, str(tmp_path))) for r in range(N)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = sorted(tmp_path.glob("*.err"))
    assert not errors, "\n".join(e.read_text() for e in errors)
    results = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(1, N)}
    assert all(x["missing"] == [0] for x in results.values()), results


def _late_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group(
        "gloo", store=dist.PrefixStore("late/", store), rank=rank, world_size=2, timeout=timedelta(seconds=LATE_S - 1)
    )
    results = []
    try:
        exchange = DirectExchange(2, 64, torch.device("cpu"))
        for allowance in (LATE_S, 0.0):  # the carried round's allowance, then none
            exchange.allowance_s = allowance if rank == 0 else 0.0
            if rank == 1:
                time.sleep(LATE_S)  # trains the round the other carried
            try:
                exchange.all_gather(bytes([rank]) * 8, b"")
                results.append(None)
            except GroupFailure as failure:
                results.append(list(failure.missing))
        Path(out, f"late{rank}.json").write_text(json.dumps(results))
    except BaseException:
        Path(out, f"late{rank}.err").write_text(traceback.format_exc())
    store.add("late-done", 1)
    deadline = time.monotonic() + 30
    while store.add("late-done", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(0)


LATE_S = 3


def test_a_rank_that_carried_its_round_waits_for_a_peer_training_it(tmp_path):
    """A rank that skipped the round's inner steps (carried across a re-form) enters the exchange that much
    earlier than a peer that trains them: its deadline is the group's timeout plus the time it skipped
    (``DirectExchange.allowance_s``, once). Without it, that honest peer is named as missing."""
    out = str(tmp_path)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_late_worker, args=(r, store.port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.kill()
    errors = sorted(Path(out).glob("*.err"))
    assert not errors, "\n".join(e.read_text() for e in errors)
    carried = json.loads(Path(out, "late0.json").read_text())
    assert carried == [None, [1]], carried  # waited for with the allowance; named without it
