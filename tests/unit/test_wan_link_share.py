"""scripts/bench/wan.py's link share: how fast a host's capped link carried what it sent, from samples of its
interface counter. Idle stretches and small protocol messages must not drag it down; a link that sends at
half its rate throughout must read 0.5."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "wan.py"


@pytest.fixture(scope="module")
def wan():
    sys.path.insert(0, str(SCRIPT.parent))  # wan.py imports its sibling _chain
    try:
        spec = importlib.util.spec_from_file_location("wan_bench", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def samples(rates_mbit: list[float], dt: float = 0.05) -> list[tuple[float, int]]:
    out, sent = [(0.0, 0)], 0
    for i, rate in enumerate(rates_mbit, 1):
        sent += int(rate * 1e6 / 8 * dt)
        out.append((i * dt, sent))
    return out


def test_a_full_link_reads_one_and_idle_time_does_not_count(wan):
    busy = [100.0] * 20
    assert wan.link_share(samples(busy), 100) == pytest.approx(1.0, rel=1e-3)
    # The same bursts with long idle gaps between them (inner steps): still the rate while sending.
    assert wan.link_share(samples(busy + [0.0] * 200 + busy), 100) == pytest.approx(1.0, rel=1e-3)


def test_a_slow_sender_and_small_messages(wan):
    assert wan.link_share(samples([50.0] * 40), 100) == pytest.approx(0.5, rel=1e-3)
    # Heartbeats (a few KB now and then) next to an exchange at 80 %: the exchange's bytes dominate.
    mixed = samples([80.0] * 20 + [0.0, 0.3, 0.0, 0.0, 0.3] * 20)
    assert 0.78 < wan.link_share(mixed, 100) < 0.8


def test_nothing_sent_is_no_figure(wan):
    assert wan.link_share(samples([0.0] * 10), 100) is None
    assert wan.link_share([(0.0, 5)], 100) is None
