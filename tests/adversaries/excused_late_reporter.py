"""A late reporter that tries to excuse itself, for tests only: runs the production neurons/miner.py and
trains honestly, but from its second round on it first files an empty stall report for the round (a group
failure it cannot name anyone for) and then holds its state report back (``late_reporter.LATE_S``). An empty
report once excused its reporter from the straggler grace, so every round waited for it up to the round
timeout; now it excuses nobody, and the member is removed after the grace like any late reporter (as a
departure: a failure is never held against the one who reports it).

    python tests/adversaries/excused_late_reporter.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[2]))

from tests.adversaries.late_reporter import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], excuse=True))
