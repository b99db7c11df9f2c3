"""Copy detection: is a contribution someone else's work, or an old one replayed?

Told by provenance, not by similarity within a round:

- **identical bytes** (sha256) seen before — in an earlier round (any hotkey: a copy of older work, or a
  *stale* miner replaying its own) or in this round from another miner. Within a round the miner whose
  peers attest the bytes wins (:mod:`.attestation`), then the lower rank. A same-round copier is also
  caught by attestation itself: its peers received its own bytes, not the victim's.
- **a near-replay of an earlier round's update** (:func:`find_copies`): re-compressed, rescaled or with
  noise added, an old update keeps its direction. The validator keeps a compact :class:`Sketch` of every
  update it audited in the last :data:`HISTORY_ROUNDS` rounds (bounded, persisted in its state), and flags
  an update whose cosine with an earlier round's update — another hotkey's, or its own (a stale replay) —
  is ≥ :data:`REPLAY_COSINE` **and** exceeds the median of its cosines with this round's other audited
  updates by ≥ :data:`REPLAY_MARGIN`. The margin is what keeps honest miners safe when every honest
  update points the same way (a wrecked model: honest Δs of one round reached cosine 0.99994, which the
  old same-round cosine check flagged as copies): then the replay-like cosine is no higher than the
  cosine with this round's peers. With no other update audited this round there is no such reference and
  nothing is flagged by similarity (the replay still earns nothing: :mod:`.usefulness` pays only for gains
  specific to the miner's own batches of this round).

Measured on the tiny preset (tests/unit/test_audit.py, test_audit_scores.py; int8): honest updates of
one round have cosines 0.70–0.85 with each other; with the previous round's updates 0.29–0.58 (their own
included: the inner AdamW state and the error-feedback residual persist across rounds), 0.15–0.19 two
rounds back, < 0.05 three back. A replay with noise of 20 % of its norm, re-compressed, keeps cosine ≈ 0.98
with the original. The compact sketch estimates a cosine with a standard error of about 0.03–0.045
(:data:`HISTORY_DIM` dimensions; worst of 20 synthetic pairs off by 0.075), far inside both margins.
"""

from __future__ import annotations

import base64
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = [
    "SKETCH_COORDS",
    "HISTORY_DIM",
    "HISTORY_ROUNDS",
    "HISTORY_MAX",
    "REPLAY_COSINE",
    "REPLAY_MARGIN",
    "Candidate",
    "Copy",
    "Sketch",
    "Trace",
    "find_copies",
    "remember",
    "encode_traces",
    "decode_traces",
]

SKETCH_COORDS = 1 << 22  # a sketch reads at most this many coordinates of Δ (a fixed secret random subset)
HISTORY_DIM = 1024  # dimensions of a kept sketch: 2 KiB each (float16), cosine standard error ≈ 0.04
HISTORY_ROUNDS = 64  # rounds of audited updates kept for the replay check
HISTORY_MAX = 512  # and at most this many of them (the oldest go first)
REPLAY_COSINE = 0.9  # honest cross-round cosines measured ≤ 0.58; a replay with 20 % noise ≈ 0.98
REPLAY_MARGIN = 0.2  # above the median cosine with this round's peers (honest: cross-round < same-round)


class Sketch:
    """A fixed random linear map of Δ to :data:`HISTORY_DIM` dimensions (a count sketch: each coordinate
    goes to one bucket with a random sign), normalized to unit length, so the cosine of two sketches
    estimates the cosine of the two Δs whatever their norms. Models larger than :data:`SKETCH_COORDS`
    parameters are first restricted to a fixed random subset of coordinates. Everything is drawn from
    ``seed`` — the validator's secret (:func:`template.validator.draw.sketch_seed`) — so a copier cannot
    hide its copy by perturbing only the coordinates that do not count."""

    def __init__(self, names: Sequence[str], spec: Mapping[str, tuple[int, ...]], seed: int):
        self.names = list(names)
        total = sum(math.prod(spec[n]) for n in self.names)
        g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        self.index = None
        if total > SKETCH_COORDS:
            # With replacement (no O(total) permutation); duplicates do not bias a cosine estimate.
            self.index = torch.randint(total, (SKETCH_COORDS,), generator=g).sort().values
        n = min(total, SKETCH_COORDS)
        self.bucket = torch.randint(HISTORY_DIM, (n,), generator=g)
        self.sign = torch.randint(2, (n,), generator=g, dtype=torch.float64).mul_(2).sub_(1)

    def __call__(self, delta: Mapping[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([delta[n].detach().reshape(-1).cpu() for n in self.names])
        if self.index is not None:
            flat = flat[self.index]
        out = torch.zeros(HISTORY_DIM, dtype=torch.float64).index_add_(0, self.bucket, flat.double() * self.sign)
        norm = float(out.norm())
        return (out / norm if norm > 0 else out).to(torch.float32)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two unit sketches (0 when either is the zero sketch of a zero Δ)."""
    return float(torch.dot(a.double(), b.double()))


@dataclass(frozen=True)
class Candidate:
    """An attributable contribution of the audited round (signed receipt, valid bytes)."""

    hotkey: str
    rank: int
    sha256: str
    sketch: torch.Tensor
    attested: Optional[bool]


@dataclass(frozen=True)
class Trace:
    """The sketch of an update audited in an earlier round (kept in the validator's state)."""

    round: int
    hotkey: str
    sketch: torch.Tensor


@dataclass(frozen=True)
class Copy:
    of: str  # the hotkey of the original
    round: int  # the original's round (< the audited round: a replay of evidence already seen)
    reason: str
    cosine: Optional[float] = None  # None: identical bytes (signed proof); else the near-replay's cosine


def _near_replay(c: Candidate, peers: Sequence[Candidate], history: Sequence[Trace], round: int) -> Optional[Copy]:
    earlier = [t for t in history if t.round < round]
    if not earlier or not peers:
        return None
    best, best_cos = None, -1.0
    for t in earlier:
        cos = _cos(c.sketch, t.sketch)
        if cos > best_cos:
            best, best_cos = t, cos
    if best_cos < REPLAY_COSINE:
        return None
    reference = statistics.median(_cos(c.sketch, p.sketch) for p in peers)
    if best_cos - reference < REPLAY_MARGIN:
        return None  # as close to this round's peers: every update points the same way, nothing to tell
    whose = "its own" if best.hotkey == c.hotkey else f"{best.hotkey}'s"
    reason = (
        f"contribution replays {whose} update of round {best.round} (cosine {best_cos:.3f}; "
        f"{reference:.3f} with this round's peers)"
    )
    return Copy(best.hotkey, best.round, reason, best_cos)


def find_copies(
    candidates: Sequence[Candidate],
    round: int,
    seen: dict[str, tuple[str, int]],
    history: Sequence[Trace] = (),
) -> dict[str, Copy]:
    """The copies among ``candidates`` (hotkey → :class:`Copy`). ``seen`` maps a sha256 to the
    (hotkey, round) that first served it; it is read, and **updated in place** with this round's
    candidates (see :func:`template.validator.audit.audit_round`). ``history``: sketches of updates
    audited in earlier rounds (read only; :func:`remember` adds this round's)."""
    ordered = sorted(candidates, key=lambda c: (c.attested is not True, c.rank))
    here = {c.hotkey for c in ordered}
    copies: dict[str, Copy] = {}
    before: list[Candidate] = []
    for c in ordered:
        found = None
        prior = seen.get(c.sha256)
        if prior is not None:
            p_hotkey, p_round = prior
            # Re-auditing a round must not flag a miner against itself or against a miner of this round.
            if p_round < round or (p_round == round and p_hotkey != c.hotkey and p_hotkey not in here):
                found = Copy(p_hotkey, p_round, f"contribution is identical to {p_hotkey}'s of round {p_round}")
        if found is None:
            for o in before:
                if o.sha256 == c.sha256:
                    found = Copy(o.hotkey, round, f"contribution is identical to {o.hotkey}'s of this round")
                    break
        if found is None:
            found = _near_replay(c, [p for p in ordered if p.hotkey != c.hotkey], history, round)
        if found is not None:
            copies[c.hotkey] = found
        before.append(c)
        if prior is None or prior[1] > round:
            seen[c.sha256] = (c.hotkey, round)
    return copies


def remember(history: list[Trace], candidates: Sequence[Candidate], round: int, copies: Mapping[str, Copy]) -> None:
    """Add this round's sketches to ``history`` **in place** (a copy of identical bytes adds nothing new)
    and drop what is older than :data:`HISTORY_ROUNDS` rounds or beyond :data:`HISTORY_MAX` entries.
    Re-auditing a round replaces its entries."""
    fresh = {c.hotkey: c for c in candidates if copies.get(c.hotkey) is None or copies[c.hotkey].cosine is not None}
    kept = [t for t in history if not (t.round == round and t.hotkey in fresh) and t.round > round - HISTORY_ROUNDS]
    kept += [Trace(round, c.hotkey, c.sketch) for c in fresh.values()]
    kept.sort(key=lambda t: t.round)
    history[:] = kept[-HISTORY_MAX:]


def encode_traces(history: Sequence[Trace]) -> list[list]:
    """JSON-able rows ``[round, hotkey, base64 of the float16 sketch]`` for the state file."""
    return [
        [t.round, t.hotkey, base64.b64encode(t.sketch.to(torch.float16).numpy().tobytes()).decode("ascii")]
        for t in history
    ]


def decode_traces(rows: Sequence) -> list[Trace]:
    """The inverse of :func:`encode_traces`; raises ``ValueError`` for a row of another shape."""
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], int) and isinstance(row[1], str)):
            raise ValueError(f"malformed sketch row {str(row)[:80]!r}")
        raw = base64.b64decode(row[2], validate=True) if isinstance(row[2], str) else b""
        if len(raw) != 2 * HISTORY_DIM:
            raise ValueError(f"sketch of {len(raw)} bytes, expected {2 * HISTORY_DIM}")
        sketch = torch.from_numpy(np.frombuffer(raw, dtype=np.float16).astype(np.float32))
        if not bool(torch.isfinite(sketch).all()):
            raise ValueError("sketch is not finite")
        out.append(Trace(row[0], row[1], sketch))
    return out
