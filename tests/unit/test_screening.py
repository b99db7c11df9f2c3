"""template.engine.screening.screen's decode cache: a second screening of the same round (the agreed set)
reuses what the first decoded, keyed by the payload's sha256, and decides exactly as without it."""

from __future__ import annotations

import hashlib

import torch

from template.engine.compression import compress
from template.engine.exchange import Entry
from template.engine.screening import screen
from template.wire.signing import SIGNATURE_BYTES

SPEC = {"w": (64, 32), "b": (32,)}
CONTEXT = "run-screen/0"


def _screen(entries, cache=None):
    return screen(
        entries, round=3, context=CONTEXT, peers=["a", "b", "c", "d"], verify=lambda *_: True, spec=SPEC,
        scheme="sparseloco", fraction=0.05, max_bytes=1 << 20, decoded_by_sha=cache,
    )  # fmt: skip


def test_the_cache_serves_the_same_bytes_once_and_changes_no_decision():
    g = torch.Generator().manual_seed(5)
    payloads = [
        compress({k: torch.randn(s, generator=g) for k, s in SPEC.items()}, "sparseloco", fraction=0.05).to_bytes()
        for _ in range(3)
    ] + [b"not a payload"]
    entries = [Entry(len(p), SIGNATURE_BYTES, p, bytes(SIGNATURE_BYTES)) for p in payloads]
    plain = _screen(entries)
    cache: dict = {}
    first = _screen(entries, cache)
    assert set(cache) == {hashlib.sha256(p).hexdigest() for p in payloads[:3]}  # the malformed one is not kept
    second = _screen(entries, cache)
    for got in (first, second):
        assert sorted(got[0]) == sorted(plain[0]) == [0, 1, 2]
        assert got[1] == plain[1] and "malformed" in got[1][3]
        assert got[2] == plain[2]
        for r in got[0]:
            assert all(torch.equal(got[0][r][k], plain[0][r][k]) for k in SPEC)
    assert all(second[0][r] is first[0][r] for r in range(3))  # decoded once
    # Other bytes from the same sender are decoded afresh, never served from another payload's entry.
    other = compress({k: torch.ones(s) for k, s in SPEC.items()}, "sparseloco", fraction=0.05).to_bytes()
    swapped = [Entry(len(other), SIGNATURE_BYTES, other, bytes(SIGNATURE_BYTES)), *entries[1:]]
    third = _screen(swapped, cache)
    assert torch.equal(third[0][0]["b"], _screen(swapped)[0][0]["b"]) and third[0][0] is not first[0][0]
