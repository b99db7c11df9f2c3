"""A member that breaks the rendezvous and says first that it broke for it too, for tests only: runs the
production neurons/miner.py, checks in, reaches the store and posts its signed presence, then never joins
the gloo group (its address key is never posted) and at once reports its group broken while forming, before
any honest rank's wait for its address runs out and names it. An honest miner whose store link broke says
the same, so the orchestrator does not evict it: it takes each broken generation's dispute alone, and sits out
after the second (its honest accusers keep their seats).

    python tests/adversaries/quitting_saboteur.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))

from tests.adversaries import run_miner_with_init  # noqa: E402


def main() -> int:

    def init_process_group(*_args, **_kw):
        raise RuntimeError("Connection closed by peer")  # what a broken store link says; names nobody

    return run_miner_with_init(init_process_group, sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
