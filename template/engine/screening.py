"""Which received contributions a diloco round aggregates: :func:`screen`, a pure function of the gathered
bytes, so every honest rank makes the same decisions and ends with the same θ.

Per rank, in rank order: the claimed length (non-negative, at most the cap), the sender's hotkey signature
over (context, round, rank, sha256 of the payload) — checked before anything is parsed —, a strict parse
against the parameter spec (:meth:`Compressed.from_bytes`), then over the survivors the norm check
(non-finite, or more than :data:`NORM_MAX_RATIO` × the median norm).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import torch

from template.engine.aggregation import norm_check
from template.engine.compression import DEFAULT_CHUNK_SIZE, Compressed, CompressionError
from template.engine.exchange import Entry
from template.wire.signing import SIGNATURE_BYTES, contribution_message

__all__ = ["NORM_MAX_RATIO", "screen"]

# Drop a Δ whose norm exceeds 10× the median norm: a cheap first line that names the gross outliers.
# What bounds an accepted Δ just under it is the aggregation (template.engine.aggregation: with the run's
# Byzantine fraction > 0 every Δ is clipped to the median norm), which, like this screen, needs an honest
# majority — hence generations of at least 3 ranks in such runs (orchestrator.membership).
NORM_MAX_RATIO = 10.0


def _verified(verify: Callable[[str, bytes, bytes], bool], ss58: str, message: bytes, signature: bytes) -> bool:
    try:
        return bool(verify(ss58, message, signature))
    except Exception:  # a verifier that chokes on garbage has said "no"
        return False


def screen(
    entries: Sequence[Entry],
    *,
    round: int,
    context: str,
    peers: Sequence[str],
    verify: Callable[[str, bytes, bytes], bool],
    spec: Mapping[str, tuple[int, ...]],
    scheme: str,
    fraction: float,
    max_bytes: int,
    decoded_by_sha: Optional[dict[str, dict[str, torch.Tensor]]] = None,
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, str], list[Optional[str]]]:
    """Decide, in rank order, which contributions to aggregate. Returns the accepted ones decompressed
    ``{rank: Δ}``, the refused ones ``{rank: why}`` (sorted by rank), and per rank the sha256 of the
    payload received from it if its signature verified (else None).

    ``decoded_by_sha`` (optional) caches the decompressed payloads by their sha256, for a second screening
    of the same round (the agreed set): parsing is a pure function of the bytes and the run's constants,
    which stay the same for the caller's cache. Its values must not be modified."""
    decoded: dict[int, dict[str, torch.Tensor]] = {}
    dropped: dict[int, str] = {}
    received: list[Optional[str]] = [None] * len(entries)
    for r, (length, sig_len, payload, sig) in enumerate(entries):
        if length < 0:
            dropped[r] = f"malformed: claimed length {length}"
            continue
        if length > max_bytes:
            dropped[r] = f"oversized: claimed {length} bytes, the cap is {max_bytes}"
            continue
        digest = hashlib.sha256(payload).hexdigest()
        message = contribution_message(context, round, r, digest)
        if sig_len != SIGNATURE_BYTES or not _verified(verify, peers[r], message, sig):
            dropped[r] = "bad signature"
            continue
        received[r] = digest
        if decoded_by_sha is not None and digest in decoded_by_sha:
            decoded[r] = decoded_by_sha[digest]
            continue
        try:
            c = Compressed.from_bytes(
                payload, spec, scheme=scheme, fraction=fraction, chunk_size=DEFAULT_CHUNK_SIZE, max_bytes=max_bytes
            )
        except CompressionError as e:
            dropped[r] = f"malformed: {e}"
            continue
        decoded[r] = c.decompress()
        if decoded_by_sha is not None:
            decoded_by_sha[digest] = decoded[r]

    ranks = sorted(decoded)
    for i in norm_check([decoded[r] for r in ranks], NORM_MAX_RATIO):
        r = ranks[i]
        finite = all(bool(torch.isfinite(t).all()) for t in decoded[r].values())
        dropped[r] = f"norm outlier (> {NORM_MAX_RATIO:g}x the median)" if finite else "non-finite"
        del decoded[r]
    return decoded, dict(sorted(dropped.items())), received
