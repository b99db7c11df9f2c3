"""A member that comes to the store and never says it is there, for tests only: runs the production
neurons/miner.py, checks in, passes the orchestrator's store tunnel (a signed hello: it is a member) and
connects to the store, but never posts its signed presence key. Every honest rank waits for that key; only
the orchestrator, which watches presences pass its tunnel, can tell who never posted one.

    python tests/adversaries/absent_presence.py <miner.py flags>
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))


def main() -> int:
    import torch.distributed as dist

    from template.miner import group

    def rendezvous(a, backend, timeout_s, sign, host, port, presence_deadline):
        dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))
        while True:  # connected, heartbeating through its meta-miner, never announcing itself
            time.sleep(3600)

    group._rendezvous = rendezvous
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
