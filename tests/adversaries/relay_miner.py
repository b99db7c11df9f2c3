"""A Byzantine ring relay, for tests only: runs the production neurons/miner.py, but every block it
forwards for another rank in the contribution ring exchange
(:meth:`template.engine.exchange.RingExchange.relay`) has one payload byte flipped, so the ranks after it
on each sender's path receive a block whose signature no longer verifies. Its own contribution, its
reports and everything else stay honest.

    python tests/adversaries/relay_miner.py <miner.py flags>

(the meta-miner starts it with the miner's flags: ``neurons/meta_miner.py --miner-script
tests/adversaries/relay_miner.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))


def main() -> int:
    from template.engine.exchange import RingExchange
    from tests.adversaries.relays import CorruptingRing

    def corrupt(self, sender, block):
        return CorruptingRing.relay(self, sender, block)

    RingExchange.senders = frozenset(range(4096))  # every sender it relays for
    RingExchange.relay = corrupt
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
