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

    honest_batch = dist.batch_isend_irecv
    calls = []

    def withholding(ops):
        calls.append(1)
        if len(calls) > 1:  # the first exchange is honest, so the generation gets going
            ops = [op for op in ops if not (op.op is dist.isend and op.peer == 0)]
        return honest_batch(ops)  # (one work fewer than ops: the exchange then waits on all of them)

    dist.batch_isend_irecv = withholding
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
