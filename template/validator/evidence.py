"""Evidence from the miners' meta-miners for one round: each sampled miner's signed receipt and
contribution, and other members' receipts as attesters (:class:`template.net.miner_client.MinerClient`).
Whatever a meta-miner does — unreachable, slow, oversized, a body of the wrong shape — it costs at most
the client's limits and counts as "nothing served" for that miner alone."""

from __future__ import annotations

import logging
from typing import Optional

from template import wire as p
from template.net.miner_client import MinerClient, MinerError
from template.validator.audit import Evidence

log = logging.getLogger(__name__)

# Read up to this much past an honest contribution's exact size, so a slightly oversized one still reaches
# the audit (and fails there with its reason) while a huge one is cut off at the transport.
CONTRIBUTION_SLACK_BYTES = 64 << 10


def fetch_evidence(
    wallet, hotkey: str, rank: int, axon: Optional[str], round_: int, timeout: float = 10.0, *, max_bytes: int
) -> Evidence:
    """The miner's signed receipt and contribution (at most ``max_bytes``) for a round, from its
    meta-miner (signed request bound to the miner's hotkey). A missing piece is None; an unreachable
    meta-miner or one that answers what its API never does serves nothing (both None)."""
    if not axon:
        return Evidence(hotkey, rank, None, None)
    try:
        with MinerClient(f"http://{axon}", wallet, hotkey, timeout=timeout) as miner:
            receipt = miner.receipt(round_)
            contribution = miner.contribution(round_, max_bytes)
        return Evidence(hotkey, rank, receipt, contribution)
    except MinerError as error:
        log.info("no evidence from %s at %s: %s", hotkey[:10], axon, error)
        return Evidence(hotkey, rank, None, None)


def fetch_receipt(
    wallet, hotkey: str, axon: Optional[str], round_: int, timeout: float = 5.0
) -> Optional[p.SignedReceipt]:
    """Only the miner's signed receipt for a round (what its peers attest), or None."""
    if not axon:
        return None
    try:
        with MinerClient(f"http://{axon}", wallet, hotkey, timeout=timeout) as miner:
            return miner.receipt(round_)
    except MinerError as error:
        log.info("no receipt from %s at %s: %s", hotkey[:10], axon, error)
        return None
