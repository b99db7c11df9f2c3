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


def main() -> int:
    from template.net.orchestrator_client import OrchestratorClient

    honest = OrchestratorClient.report_round
    calls = []

    def report_round(self, report, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            time.sleep(LATE_S)
        return honest(self, report, *args, **kwargs)

    OrchestratorClient.report_round = report_round
    from neurons import miner

    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
