"""A member that withholds its block from one peer, for tests only: runs the production
neurons/miner.py, but from its second exchange on it sends its block to every peer but rank 0 (and
takes everyone's), so only rank 0's exchange times out on it. Rank 0 names it; the others got its
block and name nobody: no majority. The orchestrator cannot tell this from rank 0 lying, so it blames
neither; the pair sits out once it has broken two generations.

    python tests/adversaries/withholding_miner.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))


def main() -> int:
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    from template.engine.exchange import DirectExchange

    honest_isend, honest_all_gather = c10d.isend, DirectExchange.all_gather
    exchanges = []

    class Sent:  # what a send that never happened reports
        def wait(self, *args, **kwargs) -> bool:
            return True

    def isend(tensor, dst=None, *args, **kwargs):
        if len(exchanges) > 1 and dst == 0:  # the first exchange is honest, so the generation gets going
            return Sent()
        return honest_isend(tensor, dst, *args, **kwargs)

    def all_gather(self, payload, signature):
        exchanges.append(1)
        return honest_all_gather(self, payload, signature)

    c10d.isend = dist.isend = isend  # (P2POp accepts only the module's own isend)
    DirectExchange.all_gather = all_gather
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
