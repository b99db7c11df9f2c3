"""template.miner.group.catch_up over a real 3-rank gloo group: a lying holder is skipped."""

from __future__ import annotations

import datetime
import hashlib
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from template import wire as p

STATE = b"the agreed global state " * 100
SHA = hashlib.sha256(STATE).hexdigest()


class FakeOrchestrator:
    """Outside boundary for this test: an orchestrator that lost the checkpoint."""

    def checkpoint(self, sha):
        return None

    def checkpoint_info(self, sha):
        return None

    def upload_checkpoint(self, sha, data):
        self.uploaded = sha


def _rank(rank: int, port: int, root: str, out) -> None:
    from template.miner.group import catch_up

    store = dist.TCPStore("127.0.0.1", port, 3, rank == 0, timeout=datetime.timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=3, timeout=datetime.timedelta(seconds=30))
    a = p.Assignment(
        generation=1,
        rank=rank,
        world_size=3,
        members=[p.Member(rank=i, hotkey=f"hk{i}") for i in range(3)],
        store_host="127.0.0.1",
        store_port=port,
        store_prefix="x",
        round=5,
        checkpoint=SHA,
        run_id="run",
    )
    states = Path(root) / f"rank{rank}"
    states.mkdir(parents=True, exist_ok=True)
    try:
        if rank == 0:  # the adversary: claims to hold the state, broadcasts junk, then plays along
            flags = [torch.zeros(1, dtype=torch.int64) for _ in range(3)]
            dist.all_gather(flags, torch.tensor([1]))
            junk = b"junk" * 50
            dist.broadcast(torch.tensor([len(junk)]), 0)
            dist.broadcast(torch.frombuffer(bytearray(junk), dtype=torch.uint8), 0)
            size = torch.zeros(1, dtype=torch.int64)
            dist.broadcast(size, 1)
            dist.broadcast(torch.empty(int(size.item()), dtype=torch.uint8), 1)
            out.put((rank, "adversary"))
            return
        if rank == 1:
            (states / SHA).write_bytes(STATE)  # an honest holder
        data = catch_up(a, FakeOrchestrator(), states, "cpu", max_bytes=len(STATE) + 1024)
        out.put((rank, hashlib.sha256(data).hexdigest() == SHA and (states / SHA).exists()))
    except Exception as error:  # reported to the parent
        out.put((rank, repr(error)))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(90)
def test_catch_up_skips_a_holder_that_sends_the_wrong_bytes(tmp_path):
    from template.net.http import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, str(tmp_path), out)) for r in range(3)]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=80) for _ in procs)
    for proc in procs:
        proc.join(30)
    assert results[0] == "adversary"
    assert results[1] is True and results[2] is True, results
