"""A member that holds every re-form up, for tests only: runs the production neurons/miner.py and trains
honestly, but in every generation it keeps its presence back ``DAWDLE_S`` seconds: inside a cold start's
check-in timeout, so the check-in rules alone would let every honest rank wait for it at each re-form.

    python tests/adversaries/dawdler.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))
DAWDLE_S = 50.0


def main(argv: list[str]) -> int:
    from template.miner import group

    honest = group._rendezvous

    def rendezvous(*args, **kwargs):
        time.sleep(DAWDLE_S)
        return honest(*args, **kwargs)

    group._rendezvous = rendezvous
    from neurons import miner

    return miner.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
