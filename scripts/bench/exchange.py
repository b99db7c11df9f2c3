#!/usr/bin/env python
"""The miners' direct exchange against gloo's all-gather, on 4 local ranks.

    python scripts/bench/exchange.py [--ranks 4] [--repeats 20] [--sizes tiny,small]

:class:`template.engine.exchange.DirectExchange` (production on gloo: every rank sends its block straight
to every other, all links at once, so no rank relays another's bytes) and
:class:`template.engine.exchange.AllGatherExchange` (an all-gather of the lengths, then an all-gather of
the padded slots, inside gloo's C++ ring, where every rank relays its neighbours' blocks) move the same
bytes per rank: n − 1 blocks out, n − 1 in. Each rank exchanges a random payload of one honest int8 contribution of the named preset (its exact size:
``template.engine.compression.payload_bytes``) with a 64-byte signature, ``--repeats`` times per
exchange, interleaved (direct, all-gather, direct, …) so both see the same machine load; a barrier
precedes every timed exchange. Both exchanges must return the same entries on every rank.

stdout carries one figure per line, ``name value unit`` (the median over repeats of rank 0's wall
time per exchange, and the ratio direct / all-gather); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[2]))


def _rank(rank: int, n: int, port: int, sizes: dict, repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    from template.engine.exchange import AllGatherExchange, DirectExchange

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=n, timeout=timedelta(seconds=60))
    results = {}
    for name, cap in sizes.items():
        payload, signature = os.urandom(cap), os.urandom(64)
        exchanges = {
            "direct": DirectExchange(n, cap, torch.device("cpu")),
            "allgather": AllGatherExchange(n, cap, torch.device("cpu")),
        }
        times = {k: [] for k in exchanges}
        for i in range(repeats + 1):  # the first of each is a warm-up
            got = {}
            for kind, ex in exchanges.items():
                dist.barrier()
                start = time.perf_counter()
                got[kind], _ = ex.all_gather(payload, signature)
                if i:
                    times[kind].append(time.perf_counter() - start)
            if got["direct"] != got["allgather"]:
                raise RuntimeError(
                    f"rank {rank}: the direct exchange and gloo's all-gather delivered different entries"
                )
        results[name] = {k: statistics.median(v) for k, v in times.items()}
    if rank == 0:
        out.put(results)
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sizes", default="tiny,small", help="presets whose int8 contribution size to exchange")
    args = parser.parse_args()

    import torch.distributed as dist

    from template.config.run import TrainingConfig
    from template.engine.compression import payload_bytes
    from template.engine.state import StateFormat

    sizes = {}
    for preset in args.sizes.split(","):
        fmt = StateFormat(TrainingConfig(preset=preset))
        sizes[preset] = payload_bytes(fmt.spec, "int8")
        print(f"{preset}: payload {sizes[preset]} bytes", file=sys.stderr)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_rank, args=(r, args.ranks, store.port, sizes, args.repeats, out)) for r in range(args.ranks)
    ]
    for p in procs:
        p.start()
    try:
        results = out.get(timeout=600)
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    for name, t in results.items():
        print(f"direct_exchange_{name}_s {t['direct']:.6f} s")
        print(f"allgather_exchange_{name}_s {t['allgather']:.6f} s")
        print(f"direct_over_allgather_{name} {t['direct'] / t['allgather']:.3f} ratio")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
