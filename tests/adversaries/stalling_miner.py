"""A member that stalls the exchange, for tests only: runs the production neurons/miner.py, checks in,
joins the group and trains round by round, but from its second exchange on it never sends or receives
(:meth:`template.engine.exchange.DirectExchange.all_gather` waits forever), so the others' exchanges
wait for it until their timeout.

    python tests/adversaries/stalling_miner.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))


def main() -> int:
    from template.engine.exchange import DirectExchange

    honest = DirectExchange.all_gather
    calls = []

    def all_gather(self, payload, signature):
        calls.append(1)
        if len(calls) == 1:
            return honest(self, payload, signature)
        while True:  # stalled: alive, heartbeating through its meta-miner, never exchanging
            time.sleep(3600)

    DirectExchange.all_gather = all_gather
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
