"""Evidence from the miners' meta-miners for one round: each sampled miner's signed receipt and
contribution, and other members' receipts as attesters (:class:`template.net.miner_client.MinerClient`).
Whatever a meta-miner does — unreachable, slow, dripping, oversized, a body of the wrong shape — it costs
at most the client's limits and counts as "nothing served" for that miner alone.

:func:`fetch_round` gathers a whole round at once: every fetch runs in parallel (at most
:data:`MAX_PARALLEL_FETCHES` at a time) under one deadline for the round, so a few slow miners cost the
round one deadline, not one each, and every other miner is still audited.

Deadlines, sized so an honest meta-miner on a slow link gets through: a receipt (a few KiB) within
:data:`RECEIPT_DEADLINE_S`; a contribution within :func:`contribution_deadline_s` — a latency allowance
plus its cap read at :data:`MIN_RATE_BYTES_PER_S` (4 Mbit/s, a slow home uplink): 2.4 s for the tiny
preset's 125 KiB int8 top-10 % payload, 11.5 s for the small preset's 4.7 MiB. A round's deadline
(:func:`round_deadline_s`) is the two in a row, what one sampled miner's evidence takes: 5.4 s on tiny,
14.5 s on small. Audits skip the rounds that pass meanwhile (:meth:`template.validator.loop.Validator.step`
audits the newest), so a round's audit costs the validator at most that much waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Optional, TypeVar

from template import wire as p
from template.net.miner_client import MinerClient, MinerError
from template.validator.audit import Evidence

__all__ = [
    "CONTRIBUTION_SLACK_BYTES",
    "MAX_PARALLEL_FETCHES",
    "MIN_RATE_BYTES_PER_S",
    "RECEIPT_DEADLINE_S",
    "contribution_deadline_s",
    "fetch_evidence",
    "fetch_receipt",
    "fetch_round",
    "round_deadline_s",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Read up to this much past an honest contribution's exact size, so a slightly oversized one still reaches
# the audit (and fails there with its reason) while a huge one is cut off at the transport.
CONTRIBUTION_SLACK_BYTES = 64 << 10
# The slowest link an honest meta-miner is expected to serve over: 512 KiB/s ≈ 4 Mbit/s.
MIN_RATE_BYTES_PER_S = 512 << 10
# Connect, sign, a request and the first bytes back, across a continent and a loaded meta-miner.
LATENCY_ALLOWANCE_S = 2.0
# A receipt is ~3 KiB (template.net.miner_client.RECEIPTS_MAX_BYTES bounds a listing, not one receipt).
RECEIPT_DEADLINE_S = 3.0
# Fetches in flight at once: the default sample (4) plus attesters (8) all start together.
MAX_PARALLEL_FETCHES = 16


def contribution_deadline_s(max_bytes: int) -> float:
    """The most one contribution of at most ``max_bytes`` may take to arrive, connect to last byte."""
    return LATENCY_ALLOWANCE_S + max_bytes / MIN_RATE_BYTES_PER_S


def round_deadline_s(max_bytes: int) -> float:
    """The default for :func:`fetch_round`: one miner's receipt then its contribution, in a row."""
    return RECEIPT_DEADLINE_S + contribution_deadline_s(max_bytes)


def fetch_evidence(
    wallet,
    hotkey: str,
    rank: int,
    axon: Optional[str],
    round_: int,
    timeout: float = 10.0,
    *,
    max_bytes: int,
    until: Optional[float] = None,
) -> Evidence:
    """The miner's signed receipt and contribution (at most ``max_bytes``) for a round, from its
    meta-miner (signed request bound to the miner's hotkey). A missing piece is None; an unreachable
    meta-miner or one that answers what its API never does, or too slowly, serves nothing (both None).
    ``until``: a ``time.monotonic()`` instant by which the whole fetch is given up."""
    if not axon:
        return Evidence(hotkey, rank, None, None)
    try:
        with MinerClient(
            f"http://{axon}", wallet, hotkey, timeout=timeout, deadline=RECEIPT_DEADLINE_S, until=until
        ) as miner:
            receipt = miner.receipt(round_)
            contribution = miner.contribution(round_, max_bytes, deadline=contribution_deadline_s(max_bytes))
        return Evidence(hotkey, rank, receipt, contribution)
    except MinerError as error:
        log.info("no evidence from %s at %s: %s", hotkey[:10], axon, error)
        return Evidence(hotkey, rank, None, None)


def fetch_receipt(
    wallet, hotkey: str, axon: Optional[str], round_: int, timeout: float = 5.0, *, until: Optional[float] = None
) -> Optional[p.SignedReceipt]:
    """Only the miner's signed receipt for a round (what its peers attest), or None."""
    if not axon:
        return None
    try:
        with MinerClient(
            f"http://{axon}", wallet, hotkey, timeout=timeout, deadline=RECEIPT_DEADLINE_S, until=until
        ) as miner:
            return miner.receipt(round_)
    except MinerError as error:
        log.info("no receipt from %s at %s: %s", hotkey[:10], axon, error)
        return None


def fetch_round(
    wallet,
    sample: Sequence[tuple[int, str]],
    attesters: Sequence[str],
    axons: Mapping[str, Optional[str]],
    round_: int,
    *,
    max_bytes: int,
    deadline_s: Optional[float] = None,
    max_parallel: int = MAX_PARALLEL_FETCHES,
) -> tuple[list[Evidence], list[p.SignedReceipt]]:
    """Every sampled ``(rank, hotkey)``'s evidence and every attester hotkey's receipt for ``round_``, all
    fetched in parallel; returns within ``deadline_s`` (default :func:`round_deadline_s` of
    ``max_bytes``) with what arrived by then: the evidence in sample order (nothing served: receipt and
    contribution None), and the attesters' receipts that were served, in attester order."""
    deadline_s = round_deadline_s(max_bytes) if deadline_s is None else deadline_s
    started = time.monotonic()
    until = started + deadline_s
    # Not a `with` block: its exit would wait for every thread. Each one ends by `until` anyway (its
    # sockets are bounded by it), so an overrunning fetch is left to finish on its own.
    pool = ThreadPoolExecutor(max_workers=max(1, max_parallel), thread_name_prefix=f"fetch-r{round_}")
    try:
        evidence = [
            pool.submit(fetch_evidence, wallet, hk, rank, axons.get(hk), round_, max_bytes=max_bytes, until=until)
            for rank, hk in sample
        ]
        receipts = [pool.submit(fetch_receipt, wallet, hk, axons.get(hk), round_, until=until) for hk in attesters]
        wait_for([*evidence, *receipts], timeout=max(0.0, until - time.monotonic()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # fetches not started by now get no time
    found = [_result(f, Evidence(hk, rank, None, None), hk) for f, (rank, hk) in zip(evidence, sample)]
    attested = [r for f, hk in zip(receipts, attesters) if (r := _result(f, None, hk)) is not None]
    log.info(
        "round %d: evidence from %d/%d miner(s), receipts from %d/%d attester(s) in %.2fs (deadline %.1fs)",
        round_,
        sum(e.receipt is not None or e.contribution is not None for e in found),
        len(sample),
        len(attested),
        len(attesters),
        time.monotonic() - started,
        deadline_s,
    )
    return found, attested


def _result(future: Future, nothing: T, hotkey: str) -> T:
    """The fetch's answer, or ``nothing`` when it was not over in time."""
    if not future.done() or future.cancelled():
        log.info("nothing from %s by the round's deadline", hotkey[:10])
        return nothing
    error = future.exception()
    if error is not None:  # never a peer's doing (those are MinerErrors, caught): ours, but one miner's only
        log.warning("fetching from %s failed: %r", hotkey[:10], error, exc_info=error)
        return nothing
    return future.result()
