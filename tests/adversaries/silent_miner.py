"""A member that never starts a rank, for tests only: its meta-miner joins, heartbeats and "runs" this
in place of neurons/miner.py, which never checks in and never joins the process group — it waits to be
stopped. Without check-ins the others would wait for it at every rendezvous.

    python tests/adversaries/silent_miner.py <miner.py flags>   (flags ignored)
"""

from __future__ import annotations

import time

if __name__ == "__main__":
    while True:
        time.sleep(3600)
