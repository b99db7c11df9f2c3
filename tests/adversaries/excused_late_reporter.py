"""A late reporter that tries to excuse itself, for tests only: runs the production neurons/miner.py and
trains honestly, but from its second round on it first files an empty stall report for the round (a group
failure it cannot name anyone for) and then holds its state report ``LATE_S`` back. An empty report once
excused its reporter from the straggler grace, so every round waited for it up to the round timeout; now it
excuses nobody, and the member is removed after the grace like any late reporter (as a departure: a failure
is never held against the one who reports it).

    python tests/adversaries/excused_late_reporter.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))
LATE_S = 40.0


def main() -> int:
    from template import wire as p
    from template.net.orchestrator_client import OrchestratorClient

    honest = OrchestratorClient.report_round
    calls = []

    def report_round(self, report, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            self.report_stall(p.StallReport(generation=report.generation, round=report.round, missing=[]))
            time.sleep(LATE_S)
        return honest(self, report, *args, **kwargs)

    OrchestratorClient.report_round = report_round
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
