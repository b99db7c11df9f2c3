"""A sender that splits its peers' views, for tests only: runs the production neurons/miner.py, but the
block it sends in the contribution exchange (:meth:`template.engine.exchange.DirectExchange.outgoing`)
reaches every peer but rank 0 with one payload byte flipped, so their signature check fails while rank 0
gets the real block. With four ranks and this miner last (rank 3), 2 of 4 members hold its contribution
(rank 0 and itself): not a majority, so the agreement leaves it out for everyone. Its reports and everything
else stay honest.

    python tests/adversaries/split_miner.py <miner.py flags>

(the meta-miner starts it with the miner's flags: ``neurons/meta_miner.py --miner-script
tests/adversaries/split_miner.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))


def main() -> int:
    from template.engine.exchange import DirectExchange
    from tests.adversaries.splits import SplittingSender

    def outgoing(self, peer, block):
        return SplittingSender.outgoing(self, peer, block)

    DirectExchange.victims = frozenset(range(1, 4096))  # every peer but rank 0
    DirectExchange.outgoing = outgoing
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
