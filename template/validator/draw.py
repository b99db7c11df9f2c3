"""The random choices of a validator's audit, drawn from a secret only that validator knows.

Everything a miner could use to aim its work at what gets checked comes from here: which members are
audited and which peers attest them, the inner steps whose batches measure a miner's gain, the
reference windows its gain is compared with, the held-out windows of the harm gate, and the coordinates
of the copy sketches. Each choice is keyed by HMAC-SHA256(secret, [domain, purpose, round, …]) and
expanded with :class:`~template.data.sampling.DeterministicRNG`, so it is reproducible for the
validator (a restart re-draws the same choices) and unpredictable to anyone without the secret — unlike
the public hotkey the seed used to come from, or the fixed steps {0, H/2, H−1}. HMAC is a PRF: a
round's choices, once revealed, say nothing about another round's.

The secret itself (32 random bytes in the validator's state dir) is loaded by
:func:`template.validator.state.load_audit_secret`; it is never logged or served.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import TypeVar

from template.data.sampling import DeterministicRNG

__all__ = ["SECRET_BYTES", "GAIN_STEPS", "AuditDraw", "fingerprint", "sketch_seed"]

SECRET_BYTES = 32
# Inner steps per round whose batches measure a miner's specificity (each with one reference batch).
# Four, from measurements on the tiny preset (template.validator.scoring): with three, a copier's noise
# earned 6.5 % of an honest miner and a miner training on the old audit's three batches out-earned the
# weakest honest miner in some draws; five would cost a quarter more again.
GAIN_STEPS = 4
_DOMAIN = "tensorswarm/audit/v1"

T = TypeVar("T")


def _check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
        raise ValueError(f"the audit secret must be {SECRET_BYTES} bytes")
    return bytes(secret)


def _key(secret: bytes, *parts: int | str) -> str:
    message = json.dumps([_DOMAIN, *parts], separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def fingerprint(secret: bytes) -> str:
    """A public name for the secret (an HMAC of a constant: reveals nothing of it), kept in the state file
    next to what was drawn under it, so a replaced secret is noticed."""
    return _key(_check_secret(secret), "fingerprint")[:16]


def sketch_seed(secret: bytes) -> int:
    """The seed of the copy check's sketch coordinates: one per validator, not per round, so sketches
    of different rounds can be compared (:mod:`template.validator.checks.copies`)."""
    return int(_key(_check_secret(secret), "sketch")[:15], 16)


class AuditDraw:
    """The audit choices of one round, keyed by ``secret`` (32 bytes) and ``round``."""

    def __init__(self, secret: bytes, round: int):
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round must be a non-negative int, got {round!r}")
        self._secret = _check_secret(secret)
        self.round = round

    def _rng(self, purpose: str) -> DeterministicRNG:
        return DeterministicRNG(_DOMAIN, purpose, self.round, _key(self._secret, purpose, self.round))

    def _choose(self, purpose: str, items: Sequence[T], k: int) -> list[T]:
        # Partial Fisher–Yates over DeterministicRNG.below (exactly uniform): k distinct items.
        pool = list(items)
        rng = self._rng(purpose)
        k = max(0, min(k, len(pool)))
        for i in range(k):
            j = i + rng.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def sample(self, members: Sequence[T], k: int) -> list[T]:
        """``k`` distinct members to audit (all of them when there are fewer)."""
        return self._choose("sample", members, k)

    def attesters(self, others: Sequence[T], k: int) -> list[T]:
        """``k`` distinct members outside the sample whose receipts attest the audited miners."""
        return self._choose("attesters", others, k)

    def gain_steps(self, inner_steps: int, count: int = GAIN_STEPS) -> list[int]:
        """``count`` distinct inner steps, sorted, whose batches measure the gain. Drawn from 1..H−2:
        step 0 and step H−1 are evaluated in every audit anyway (the exact step-0 replay, the last-step
        bound), so a miner could train on those two batches alone if they counted. Runs with H < count + 2
        draw from every step."""
        if inner_steps < 1 or count < 1:
            raise ValueError(f"need inner_steps >= 1 and count >= 1, got {inner_steps}, {count}")
        candidates = range(1, inner_steps - 1) if inner_steps - 2 >= count else range(inner_steps)
        return sorted(self._choose("gain-steps", candidates, count))

    def reference_hotkey(self) -> str:
        """The name the reference batches are drawn under (``batch_offsets(hotkey=…)``): windows of the
        training range, from the same distribution as every member's batches, that no member was assigned
        and none can know."""
        return "audit-reference/" + _key(self._secret, "reference", self.round)[:32]

    def heldout_seed(self) -> int:
        """The seed of this round's held-out windows (:func:`template.data.sampling.heldout_offsets`)."""
        return int(_key(self._secret, "heldout", self.round)[:15], 16)
