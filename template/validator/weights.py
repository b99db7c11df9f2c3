"""Setting the validator's weights on chain. :class:`WeightSetter` sets them every ``interval`` seconds
(the caller keeps that within the chain's rate limit) and never lets a chain error stop the validator:
a failed attempt — the chain refused, was unreachable, or no miner has a score yet — is retried after
2, 4, 8, … seconds, at most ``interval``. What was set, and at which block, is saved with the
validator's state (the status endpoint shows it)."""

from __future__ import annotations

import logging
import time

import bittensor as bt
from bittensor.result import ChainError

from template.validator.loop import Validator

__all__ = ["WeightSetter"]

log = logging.getLogger("tensorswarm.validator")


class WeightSetter:
    def __init__(self, chain, wallet, netuid: int, interval: float):
        self.chain, self.wallet, self.netuid, self.interval = chain, wallet, netuid, interval
        self.next_at = time.time() + interval  # the first set waits a full interval: scores need audits first
        self.failures = 0  # consecutive failed attempts: the backoff's exponent

    def due(self) -> bool:
        return time.time() >= self.next_at

    async def set(self, validator: Validator, uids: dict[str, int]) -> bool:
        """Set ``validator``'s current weights for the miners ``uids`` (hotkey → uid); schedule the next
        attempt. Returns whether the chain took them."""
        weights = validator.weights(uids)
        try:
            if not weights:
                raise ChainError("no miner has a positive score yet")
            result = await self.chain.execute(bt.SetWeights(self.netuid, weights=weights), self.wallet)
            if not result.success:
                raise ChainError(result.message)
            validator.state.last_weights = {str(k): v for k, v in weights.items()}
            validator.state.last_weights_block = await self.chain.block()
            validator.state.save(validator.state_path)
            log.info("set weights on %d uids: %s", len(weights), {k: round(v, 3) for k, v in weights.items()})
            self.next_at, self.failures = time.time() + self.interval, 0
            return True
        except ChainError as error:
            self.failures += 1
            delay = min(self.interval, 2.0**self.failures)
            log.warning("setting weights failed (%s); retrying in %.0fs", error, delay)
            self.next_at = time.time() + delay
            return False
