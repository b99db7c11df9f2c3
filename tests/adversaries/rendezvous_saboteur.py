"""A member that sabotages the rendezvous, for tests only: runs the production neurons/miner.py, checks
in, reaches the store through the tunnel and posts its signed presence, but never joins the gloo group
(``init_process_group`` never returns, so its address key is never posted): the others' rendezvous waits
for it until their timeout, and nothing the orchestrator sees itself (check-in, tunnel arrival) gives it
away.

    python tests/adversaries/rendezvous_saboteur.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))

from tests.adversaries import run_miner_with_init  # noqa: E402


def main() -> int:

    def init_process_group(*_args, **_kw):
        while True:  # alive, heartbeating through its meta-miner, never connecting
            time.sleep(3600)

    return run_miner_with_init(init_process_group, sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
