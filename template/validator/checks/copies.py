"""Copy detection: is a contribution someone else's work, or an old one replayed?

A contribution is a copy when its bytes (sha256) were seen before, in an earlier round (any hotkey —
this is also how a *stale* miner replaying an old round's contribution is caught, its own included) or
in this round from a lower rank; or when its decompressed Δ has cosine ≥ :data:`COPY_COSINE` with a
lower-ranked miner's Δ of this round (catches a copy with a little noise added, re-compressed). Earlier
round wins; within a round the miner whose peers attest the bytes wins (:mod:`.attestation`), then the
lower rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["COPY_COSINE", "SKETCH_COORDS", "Candidate", "Copy", "Sketch", "find_copies"]

COPY_COSINE = 0.999  # honest miners' Δs from one θ_r on different batches stay well below (measured ≤ 0.85)
SKETCH_COORDS = 1 << 22  # cosines are computed on at most this many coordinates (a fixed random subset)


class Sketch:
    """The coordinates of Δ used for cosines: all of them for models up to SKETCH_COORDS parameters,
    else a fixed random subset drawn from the validator's audit seed (unknown to miners, so a copier
    cannot hide its copy by perturbing only unsampled coordinates)."""

    def __init__(self, names: Sequence[str], spec: Mapping[str, tuple[int, ...]], seed: int):
        self.names = list(names)
        total = sum(math.prod(spec[n]) for n in self.names)
        self.index = None
        if total > SKETCH_COORDS:
            g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
            # With replacement (no O(total) permutation); duplicates do not bias a cosine estimate.
            self.index = torch.randint(total, (SKETCH_COORDS,), generator=g).sort().values

    def __call__(self, delta: Mapping[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([delta[n].reshape(-1) for n in self.names])
        if self.index is not None:
            flat = flat[self.index]
        return flat.to(torch.float64)


@dataclass(frozen=True)
class Candidate:
    """An attributable contribution of the audited round (signed receipt, valid bytes)."""

    hotkey: str
    rank: int
    sha256: str
    sketch: torch.Tensor
    attested: Optional[bool]


@dataclass(frozen=True)
class Copy:
    of: str  # the hotkey of the original
    round: int  # the original's round (< the audited round: a replay of evidence already seen)
    reason: str


def find_copies(candidates: Sequence[Candidate], round: int, seen: dict[str, tuple[str, int]]) -> dict[str, Copy]:
    """The copies among ``candidates`` (hotkey → :class:`Copy`). ``seen`` maps a sha256 to the
    (hotkey, round) that first served it; it is read, and **updated in place** with this round's
    candidates (see :func:`template.validator.audit.audit_round`)."""
    ordered = sorted(candidates, key=lambda c: (c.attested is not True, c.rank))
    here = {c.hotkey for c in ordered}
    copies: dict[str, Copy] = {}
    originals: list[tuple[Candidate, float]] = []  # every candidate before this one, with its sketch norm
    for c in ordered:
        norm = float(c.sketch.norm())
        found = None
        prior = seen.get(c.sha256)
        if prior is not None:
            p_hotkey, p_round = prior
            # Re-auditing a round must not flag a miner against itself or against a miner of this round.
            if p_round < round or (p_round == round and p_hotkey != c.hotkey and p_hotkey not in here):
                found = Copy(p_hotkey, p_round, f"contribution is identical to {p_hotkey}'s of round {p_round}")
        if found is None:
            for o, o_norm in originals:
                if o.sha256 == c.sha256:
                    found = Copy(o.hotkey, round, f"contribution is identical to {o.hotkey}'s of this round")
                    break
                if norm > 0 and o_norm > 0:
                    cos = float(torch.dot(c.sketch, o.sketch)) / (norm * o_norm)
                    if cos >= COPY_COSINE:
                        reason = f"contribution is a near-copy (cosine {cos:.5f}) of {o.hotkey}'s of this round"
                        found = Copy(o.hotkey, round, reason)
                        break
        if found is not None:
            copies[c.hotkey] = found
        originals.append((c, norm))
        if prior is None or prior[1] > round:
            seen[c.sha256] = (c.hotkey, round)
    return copies
