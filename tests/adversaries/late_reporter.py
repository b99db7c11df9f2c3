"""A member that reports every round in time but long after everyone else, for tests only: runs the production
neurons/miner.py and trains honestly, but from its second round on it holds its state report ``LATE_S`` back
(well inside the round timeout), so a swarm that waits for every member's report runs one round per ``LATE_S``.

    python tests/adversaries/late_reporter.py <miner.py flags>
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))
LATE_S = 40.0


def main(argv: list[str], excuse: bool = False) -> int:
    """``excuse``: file an empty stall report for each held round first (tests/adversaries/excused_late_reporter.py)."""
    from template import wire as p
    from template.net.orchestrator_client import OrchestratorClient

    honest = OrchestratorClient.report_round
    calls = []

    def report_round(self, report, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            if excuse:
                self.report_stall(p.StallReport(generation=report.generation, round=report.round, missing=[]))
            time.sleep(LATE_S)
        return honest(self, report, *args, **kwargs)

    OrchestratorClient.report_round = report_round
    from neurons import miner

    return miner.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
