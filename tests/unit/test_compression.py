"""template.engine.compression: error bounds, top-k selection, error feedback, the untrusted wire format."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from template.engine import checkpoint
from template.engine.compression import (
    MAX_SCALE,
    SCHEMES,
    Compressed,
    CompressedTensor,
    CompressionError,
    ErrorFeedback,
    compress,
    param_spec,
    topk_count,
)


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def delta(seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        "blocks.0.w": randn(64, 48, seed=seed),
        "blocks.0.b": randn(48, seed=seed + 1),
        "emb": randn(100, 8, seed=seed + 2),
    }


# --- int8 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_int8_error_is_at_most_half_a_step_per_chunk(chunk_size):
    """Bound: per chunk of ``chunk_size`` values with absmax A, step s = A/127 and
    |x − x̂| ≤ s/2 = A/254 (plus float32 rounding, allowed as a relative 1e-4) — so within A/127.

    Chunks get very different magnitudes to show the scale is per chunk, not per tensor."""
    x = randn(5000, seed=1) * torch.logspace(-6, 3, 5000)
    x[100:300] = 0.0  # all-zero chunks must come back exactly
    c = compress({"x": x}, "int8", chunk_size=chunk_size)
    xh = Compressed.from_bytes(c.to_bytes(), {"x": (5000,)}).decompress()["x"]
    n_chunks = math.ceil(5000 / chunk_size)
    pad = n_chunks * chunk_size - 5000
    absmax = torch.nn.functional.pad(x.abs(), (0, pad)).view(n_chunks, chunk_size).amax(dim=1)
    bound = (absmax / 254 * (1 + 1e-4)).repeat_interleave(chunk_size)[:5000]
    err = (x - xh).abs()
    assert bool((err <= bound).all()), float((err / bound.clamp_min(1e-30)).max())
    assert bool((err <= (absmax / 127).repeat_interleave(chunk_size)[:5000]).all())
    assert torch.equal(xh[x == 0], x[x == 0])


def test_int8_values_are_symmetric():
    c = compress({"x": torch.tensor([-3.0, 3.0, 1.0, -1.5])}, "int8")
    assert c.tensors["x"].values.tolist() == [-127, 127, 42, -64]  # round(127/3) = 42, round(-63.5) = -64 (half-even)


# --- top-k ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_topk_keeps_exactly_the_k_largest(fraction):
    x = randn(1000, seed=2)
    k = topk_count(1000, fraction)
    assert k == max(1, round(fraction * 1000))
    dense = compress({"x": x}, "topk", fraction=fraction).decompress()["x"]
    kept = torch.nonzero(dense).flatten()
    expected = torch.argsort(x.abs(), descending=True)[:k].sort().values  # magnitudes are distinct
    assert torch.equal(kept, expected)
    assert torch.equal(dense[kept], x[kept])  # float32 values are sent exactly
    smallest_kept = x.abs()[kept].min()
    dropped = torch.ones(1000, dtype=torch.bool)
    dropped[kept] = False
    assert bool((x.abs()[dropped] <= smallest_kept).all())


def test_topk_ties_go_to_lower_indices_and_shapes_survive():
    x = torch.ones(4, 5)
    x[3, 4] = -2.0
    dense = compress({"x": x}, "topk", fraction=0.2).decompress()["x"]  # k = 4
    assert dense.shape == (4, 5)
    assert torch.nonzero(dense.flatten()).flatten().tolist() == [0, 1, 2, 19]


def test_topk_count_rule():
    assert topk_count(0, 0.1) == 0
    assert topk_count(1, 0.01) == 1  # never drop a whole tensor
    assert topk_count(10, 0.25) == 2  # round half to even: 2.5 → 2
    assert topk_count(100, 0.1) == 10
    assert topk_count(7, 1.0) == 7


def test_topk_int8_keeps_the_same_positions_within_the_int8_bound():
    x = randn(3000, seed=3)
    a = compress({"x": x}, "topk", fraction=0.1).decompress()["x"]
    b = compress({"x": x}, "topk_int8", fraction=0.1, chunk_size=4096).decompress()["x"]
    assert torch.equal(a != 0, b != 0)
    assert float((a - b).abs().max()) <= float(a.abs().max()) / 254 * (1 + 1e-4)


# --- determinism and round trips --------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_and_determinism(scheme):
    d = delta()
    a, b = compress(d, scheme), compress({k: v.clone() for k, v in reversed(d.items())}, scheme)
    assert a.to_bytes() == b.to_bytes()
    back = Compressed.from_bytes(a.to_bytes(), param_spec(d), scheme=scheme, fraction=0.1, chunk_size=4096)
    assert back.to_bytes() == a.to_bytes()
    da, db = a.decompress(), back.decompress()
    assert list(da) == sorted(d)
    for name in d:
        assert da[name].dtype == torch.float32 and da[name].shape == d[name].shape
        assert torch.equal(da[name], db[name])
    if scheme == "none":
        assert all(torch.equal(da[n], d[n]) for n in d)


def test_compress_refuses_non_finite_and_bad_config():
    for bad in (float("nan"), float("inf")):
        x = randn(10)
        x[3] = bad
        with pytest.raises(CompressionError, match="NaN or Inf"):
            compress({"x": x}, "int8")
    with pytest.raises(CompressionError, match="unknown compression scheme"):
        compress(delta(), "zip")
    with pytest.raises(CompressionError, match="fraction"):
        compress(delta(), "topk", fraction=0.0)
    with pytest.raises(CompressionError, match="chunk_size"):
        compress(delta(), "int8", chunk_size=0)
    with pytest.raises(CompressionError, match="floating-point"):
        compress({"x": torch.arange(3)}, "int8")


# --- error feedback ---------------------------------------------------------------------------------


def test_error_feedback_tracks_the_sum_of_true_updates():
    """Σ_t sent_t = Σ_t Δ_t − e_T exactly (top-k sends kept values verbatim), and with keep ratio
    δ = k/n top-k is a contraction ‖x − C(x)‖ ≤ √(1−δ)‖x‖, so ‖e_t‖ ≤ √(1−δ)/(1−√(1−δ))·max‖Δ‖
    (≈ 18.5·max‖Δ‖ at δ = 0.1) for every t: the transmitted sum tracks the true sum with an error
    that does not grow. Without error feedback the small coordinates are never sent and the error
    grows linearly — the contrast shows the test can fail."""
    n, rounds, fraction = 400, 300, 0.1
    base = torch.full((n,), 0.3)
    base[: n // 10] = 1.0  # a consistent direction whose small coordinates top-k alone never sends
    ef = ErrorFeedback("topk", fraction=fraction)
    true_sum, sent_sum, plain_sum = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    delta_ratio = topk_count(n, fraction) / n
    c = math.sqrt(1 - delta_ratio)
    bound_factor = c / (1 - c)
    max_norm = 0.0
    for t in range(rounds):
        d = base + randn(n, seed=100 + t, scale=0.05)
        max_norm = max(max_norm, float(d.norm()))
        sent = ef.compress({"x": d}).decompress()["x"]
        true_sum += d
        sent_sum += sent
        plain_sum += compress({"x": d}, "topk", fraction=fraction).decompress()["x"]
        residual = ef.residual["x"]
        assert float(residual.norm()) <= bound_factor * max_norm
        assert torch.allclose(sent_sum + residual, true_sum, rtol=1e-5, atol=1e-3)
    ef_error = float((true_sum - sent_sum).norm() / true_sum.norm())
    plain_error = float((true_sum - plain_sum).norm() / true_sum.norm())
    assert ef_error <= bound_factor * max_norm / float(true_sum.norm()) + 1e-4
    assert ef_error < 0.1
    assert plain_error > 0.5


@pytest.mark.parametrize("scheme", ["int8", "topk_int8"])
def test_error_feedback_residual_stays_bounded_with_quantisation(scheme):
    ef = ErrorFeedback(scheme, fraction=0.25, chunk_size=64)
    true_sum = torch.zeros(256)
    sent_sum = torch.zeros(256)
    for t in range(100):
        d = randn(256, seed=t) + 0.5
        true_sum += d
        sent_sum += ef.compress({"x": d}).decompress()["x"]
        assert float(ef.residual["x"].norm()) < 40 * float(d.norm())
    assert torch.allclose(sent_sum + ef.residual["x"], true_sum, atol=1e-3)
    assert float((true_sum - sent_sum).norm() / true_sum.norm()) < 0.1


def test_decayed_error_feedback_carries_beta_times_what_stayed_behind():
    ef = ErrorFeedback("topk", fraction=0.1, decay=0.5)
    first = randn(100, seed=1)
    sent = ef.compress({"x": first}).decompress()["x"]
    held = first - sent
    assert torch.equal(ef.residual["x"], held)
    # No new update: the next contribution compresses half of what stayed behind.
    again = ef.compress({"x": torch.zeros(100)})
    assert torch.equal(again.decompress()["x"], compress({"x": 0.5 * held}, "topk", fraction=0.1).decompress()["x"])
    plain = ErrorFeedback("topk", fraction=0.1)
    plain.compress({"x": first})
    assert not torch.equal(plain.compress({"x": torch.zeros(100)}).decompress()["x"], again.decompress()["x"])
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(CompressionError, match="decay"):
            ErrorFeedback("topk", decay=bad)


def test_error_feedback_state_round_trip():
    ef = ErrorFeedback("topk", fraction=0.1)
    ef.compress(delta(0))
    other = ErrorFeedback("none")
    other.load_state_dict(ef.state_dict())
    assert other.compress(delta(1)).to_bytes() == ef.compress(delta(1)).to_bytes()
    with pytest.raises(CompressionError, match="residual"):
        ef.compress({"emb": randn(3)})


# --- the untrusted wire format ---------------------------------------------------------------------


SPEC = {"w": (8, 4), "b": (4,)}


def valid(scheme: str = "topk_int8", chunk_size: int = 8) -> Compressed:
    return compress({"w": randn(8, 4, seed=5), "b": randn(4, seed=6)}, scheme, fraction=0.25, chunk_size=chunk_size)


def forge(c: Compressed, name: str, **fields) -> bytes:
    """Bytes of ``c`` with some fields of one tensor replaced (to_bytes does not validate)."""
    ct = c.tensors[name]
    c.tensors[name] = CompressedTensor(
        fields.pop("shape", ct.shape), **{"values": ct.values, "indices": ct.indices, "scales": ct.scales, **fields}
    )
    return c.to_bytes()


def forge_meta(c: Compressed, **meta_changes) -> bytes:
    flat, meta = checkpoint.loads(c.to_bytes())
    meta.update(meta_changes)
    return checkpoint.dumps(flat, meta)


def test_valid_contribution_parses():
    for scheme in SCHEMES:
        c = valid(scheme)
        assert (
            Compressed.from_bytes(c.to_bytes(), SPEC, scheme=scheme, fraction=0.25, chunk_size=8).to_bytes()
            == c.to_bytes()
        )


@pytest.mark.parametrize(
    "why, make, match",
    [
        ("wrong shape", lambda: forge(valid(), "w", shape=(4, 8)), "shape"),
        ("NaN value", lambda: forge(valid("topk"), "w", values=torch.tensor([float("nan")] * 8)), "NaN"),
        (
            "Inf value",
            lambda: forge(valid("none"), "b", values=torch.tensor([1.0, float("inf"), 0.0, 0.0])),
            "NaN or Inf",
        ),
        ("Inf scale", lambda: forge(valid(), "w", scales=torch.tensor([float("inf")])), "NaN or Inf"),
        ("huge scale", lambda: forge(valid(), "w", scales=torch.tensor([MAX_SCALE * 2])), "scales"),
        # float32(MAX_SCALE) rounds up past MAX_SCALE: 127 × it overflows to Inf when decompressed.
        (
            "scale at float32's rounding of the cap",
            lambda: forge(valid(), "w", scales=torch.tensor([MAX_SCALE])),
            "scales",
        ),
        ("negative scale", lambda: forge(valid(), "w", scales=torch.tensor([-1.0])), "scales"),
        ("too many scales", lambda: forge(valid(), "w", scales=torch.ones(2)), "scales"),
        (
            "index out of range",
            lambda: forge(valid(), "w", indices=torch.tensor([0, 1, 2, 3, 4, 5, 6, 32], dtype=torch.int32)),
            "out of range",
        ),
        (
            "negative index",
            lambda: forge(valid(), "w", indices=torch.tensor([-1, 1, 2, 3, 4, 5, 6, 7], dtype=torch.int32)),
            "out of range",
        ),
        (
            "duplicate index",
            lambda: forge(valid(), "w", indices=torch.tensor([0, 1, 1, 3, 4, 5, 6, 7], dtype=torch.int32)),
            "increasing",
        ),
        ("int64 indices", lambda: forge(valid(), "w", indices=torch.arange(8)), "indices are"),
        ("2-D indices", lambda: forge(valid(), "w", indices=torch.arange(8, dtype=torch.int32).view(2, 4)), "1-D"),
        ("-128", lambda: forge(valid(), "w", values=torch.full((8,), -128, dtype=torch.int8)), "-128"),
        ("float values for int8", lambda: forge(valid(), "w", values=torch.zeros(8)), "values are"),
        ("too few values", lambda: forge(valid(), "w", values=torch.zeros(7, dtype=torch.int8)), "values"),
        ("dense length", lambda: forge(valid("int8"), "b", values=torch.zeros(5, dtype=torch.int8)), "values"),
        (
            "wrong k",
            lambda: forge(
                valid(), "w", indices=torch.arange(4, dtype=torch.int32), values=torch.zeros(4, dtype=torch.int8)
            ),
            "kept",
        ),
        ("wrong version", lambda: forge_meta(valid(), version=2), "version"),
        ("float version", lambda: forge_meta(valid(), version=1.0), "version"),
        ("unknown scheme", lambda: forge_meta(valid(), scheme="zip"), "scheme"),
        ("other scheme", lambda: forge_meta(valid(), scheme="topk"), "scheme"),
        ("chunk size", lambda: forge_meta(valid(), chunk_size=0), "chunk_size"),
        ("meta shape lie", lambda: forge_meta(valid(), shapes={"w": [32], "b": [4]}), "shape"),
        ("extra param", lambda: forge_meta(valid(), shapes={"w": [8, 4], "b": [4], "x": [1]}), "names"),
        ("other format", lambda: forge_meta(valid(), format="x"), "format"),
        ("extra meta", lambda: forge_meta(valid(), extra=1), "meta"),
        ("not even a state", lambda: b"hello", "malformed"),
    ],
)
def test_from_bytes_rejects(why, make, match):
    with pytest.raises(CompressionError, match=match):
        Compressed.from_bytes(make(), SPEC, fraction=0.25, chunk_size=8)


def test_from_bytes_rejects_spec_mismatch_truncation_and_size():
    data = valid().to_bytes()
    with pytest.raises(CompressionError, match="shape"):
        Compressed.from_bytes(data, {"w": (4, 8), "b": (4,)})
    with pytest.raises(CompressionError, match="names"):
        Compressed.from_bytes(data, {"w": (8, 4)})
    with pytest.raises(CompressionError, match="names"):
        Compressed.from_bytes(data, {**SPEC, "c": (1,)})
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(CompressionError, match="malformed"):
            Compressed.from_bytes(data[:cut], SPEC)
    with pytest.raises(CompressionError, match="expected 'topk'"):
        Compressed.from_bytes(data, SPEC, scheme="topk")
    with pytest.raises(CompressionError, match="expected 16"):
        Compressed.from_bytes(data, SPEC, chunk_size=16)
    with pytest.raises(CompressionError, match="limit"):
        Compressed.from_bytes(data, SPEC, max_bytes=len(data) - 1)
    with pytest.raises(CompressionError, match="expected bytes"):
        Compressed.from_bytes("text", SPEC)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_only_raise_compression_error(blob):
    with pytest.raises(CompressionError):
        Compressed.from_bytes(blob, SPEC)


VALID_BODIES = {s: valid(s).to_bytes()[:-32] for s in SCHEMES}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(SCHEMES),
    edits=st.lists(st.tuples(st.booleans(), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzz_resealed_mutations_only_raise_compression_error(scheme, edits):
    """Byte edits in a valid contribution (anywhere, or in the tensor data at the end), checksum
    recomputed (a peer can always do that): either a CompressionError, or a contribution that
    decompresses to finite tensors of the spec."""
    body = bytearray(VALID_BODIES[scheme])
    for in_data, pos, value in edits:
        body[len(body) - 1 - pos % 64 if in_data else pos % len(body)] = value
    data = bytes(body) + hashlib.sha256(bytes(body)).digest()
    try:
        c = Compressed.from_bytes(data, SPEC)
    except CompressionError:
        return
    out = c.decompress()
    assert {k: tuple(v.shape) for k, v in out.items()} == SPEC
    assert all(bool(torch.isfinite(v).all()) for v in out.values())


tensor_dtypes = st.sampled_from(list(checkpoint.DTYPES.values()))


@st.composite
def random_tensor(draw) -> torch.Tensor:
    dtype = draw(tensor_dtypes)
    shape = draw(st.lists(st.integers(0, 9), max_size=2))
    size = torch.empty((), dtype=dtype).element_size() * math.prod(shape)
    raw = draw(st.binary(min_size=size, max_size=size))
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    t = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()).view(dtype).reshape(shape)
    return t.to(torch.uint8).to(torch.bool) if dtype == torch.bool else t


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheme=st.sampled_from(SCHEMES), chunk=st.integers(1, 9), parts=st.data())
def test_fuzz_structured_payloads_only_raise_compression_error(scheme, chunk, parts):
    """Well-formed containers with the right keys but arbitrary dtypes, shapes and contents."""
    names = {
        "none": ("values",),
        "int8": ("scales", "values"),
        "topk": ("indices", "values"),
        "topk_int8": ("indices", "scales", "values"),
        "sparseloco": ("indices", "scales", "values"),
    }[scheme]
    flat = {f"{p}|{part}": parts.draw(random_tensor()) for p in SPEC for part in names}
    meta = {
        "format": "tensorswarm.compressed",
        "version": 1,
        "scheme": scheme,
        "chunk_size": chunk,
        "shapes": {k: list(v) for k, v in SPEC.items()},
    }
    if scheme == "sparseloco":
        meta["fraction"] = parts.draw(st.sampled_from([0.25, 0.5, 1.0]))
    try:
        c = Compressed.from_bytes(checkpoint.dumps(flat, meta), SPEC)
    except CompressionError:
        return
    out = c.decompress()
    assert {k: tuple(v.shape) for k, v in out.items()} == SPEC
    assert all(bool(torch.isfinite(v).all()) for v in out.values())


# --- sizes ----------------------------------------------------------------------------------------


def test_compression_ratios():
    """Bytes on the wire vs float32: int8 ≈ 4× (1 byte + a 4-byte scale per 4096 values); top-k at
    10% ≈ 5× (int32 index + float32 value per kept value); top-k + int8 ≈ 8× (index + 1 byte).
    Asserted loosely: the JSON header adds ~100 bytes per tensor."""
    d = {"a": randn(512, 512, seed=1), "b": randn(1024, 256, seed=2), "c": randn(256, seed=3)}
    dense = sum(v.numel() * 4 for v in d.values())
    ratio = {s: dense / compress(d, s, fraction=0.1).nbytes for s in SCHEMES}
    assert 0.95 < ratio["none"] <= 1.0
    assert 3.8 < ratio["int8"] <= 4.0
    assert 4.5 < ratio["topk"] <= 10
    assert 7.0 < ratio["topk_int8"] <= 10


# --- sparseloco -----------------------------------------------------------------------------------


def test_sparseloco_keeps_k_per_chunk_as_plus_minus_lo_or_hi():
    """Every chunk keeps exactly k = round(fraction·L) of its largest |x| (the last, shorter chunk its
    own k), each sent back as ±lo or ±hi of its chunk with the right sign; lo ≤ hi."""
    x = randn(10_000, seed=11) * torch.linspace(0.1, 10, 10_000)
    c = compress({"x": x}, "sparseloco", fraction=0.015, chunk_size=4096)
    xh = Compressed.from_bytes(c.to_bytes(), {"x": (10_000,)}, fraction=0.015, chunk_size=4096).decompress()["x"]
    for start, length in ((0, 4096), (4096, 4096), (8192, 1808)):
        k = topk_count(length, 0.015)
        chunk, sent = x[start : start + length], xh[start : start + length]
        kept = torch.nonzero(sent).flatten()
        assert kept.numel() == k
        assert set(kept.tolist()) == set(torch.topk(chunk.abs(), k).indices.tolist())
        assert bool((torch.sign(sent[kept]) == torch.sign(chunk[kept])).all())
        levels = sorted(set(sent[kept].abs().tolist()))
        assert 1 <= len(levels) <= 2
        mags = chunk[kept].abs().sort().values
        assert math.isclose(levels[0], float(mags[: k // 2].mean()), rel_tol=1e-5)
        assert math.isclose(levels[-1], float(mags[k // 2 :].mean()), rel_tol=1e-5)


def test_sparseloco_bits_per_kept_value_and_ratio():
    """Offsets in 12 bits (4096-value chunks) + a 2-bit code + two float32 magnitudes per chunk of 61
    kept values: ≈ 15.05 bits per kept value, about 140× fewer bytes than float32 at 1.5 %."""
    d = {"a": randn(2048, 2048, seed=1)}
    c = compress(d, "sparseloco", fraction=0.015, chunk_size=4096)
    kept = int((c.decompress()["a"] != 0).sum())
    assert kept == 1024 * topk_count(4096, 0.015)
    bits = c.nbytes * 8 / kept
    assert 15.0 <= bits <= 15.2, bits
    assert 135 <= 2048 * 2048 * 4 / c.nbytes <= 145
    assert c.nbytes < compress(d, "topk_int8", fraction=0.015).nbytes / 2.5


def test_sparseloco_error_feedback_sends_everything_eventually():
    """With error feedback the sent updates sum to the true ones minus one bounded residual: on a
    constant Δ the residual stops growing once every coordinate has had its turn."""
    ef = ErrorFeedback("sparseloco", fraction=0.1, chunk_size=64)
    g = randn(64, 64, seed=4)
    sent = torch.zeros(64, 64)
    for rounds in range(1, 61):
        sent += ef.compress({"g": g}).decompress()["g"]
    residual = rounds * g - sent
    assert torch.allclose(residual, ef.residual["g"], atol=1e-3)
    assert float(residual.norm()) < 0.1 * float((rounds * g).norm())


def _sl(**fields) -> bytes:
    return forge(valid("sparseloco"), "w", **fields)


@pytest.mark.parametrize(
    "why, make, match",
    [
        (
            "offsets out of order",
            lambda: _sl(indices=torch.tensor([0b11_000_001, 0, 0], dtype=torch.uint8)),
            "increasing",
        ),
        ("lo above hi", lambda: _sl(scales=torch.tensor([2.0, 1.0] * 4)), "lo <= hi"),
        ("negative magnitude", lambda: _sl(scales=torch.tensor([-1.0, 1.0] * 4)), "lo <= hi"),
        ("too many offsets", lambda: _sl(indices=torch.zeros(4, dtype=torch.uint8)), "indices"),
        ("int8 codes", lambda: _sl(values=torch.zeros(2, dtype=torch.int8)), "values are"),
        ("other fraction", lambda: forge_meta(valid("sparseloco"), fraction=0.5), "fraction"),
        ("fraction out of range", lambda: forge_meta(valid("sparseloco"), fraction=1.5), "fraction"),
        ("no fraction", lambda: _without_fraction(), "meta"),
    ],
)
def test_sparseloco_from_bytes_rejects(why, make, match):
    with pytest.raises(CompressionError, match=match):
        Compressed.from_bytes(make(), SPEC, fraction=0.25, chunk_size=8)


def _without_fraction() -> bytes:
    flat, meta = checkpoint.loads(valid("sparseloco").to_bytes())
    del meta["fraction"]
    return checkpoint.dumps(flat, meta)


def test_sparseloco_refuses_padding_bits_an_offset_past_a_short_chunk_and_equal_offsets():
    c = valid("sparseloco")
    ct = c.tensors["b"]  # 4 values: one chunk of 4, k = 1, 2-bit offsets in one byte
    padded = ct.indices.clone()
    padded[0] |= 0b1000_0000
    with pytest.raises(CompressionError, match="padding"):
        Compressed.from_bytes(forge(valid("sparseloco"), "b", indices=padded), SPEC, fraction=0.25, chunk_size=8)
    c = compress({"w": randn(8, 4, seed=5), "b": randn(3, seed=6)}, "sparseloco", fraction=0.25, chunk_size=8)
    spec = {"w": (8, 4), "b": (3,)}  # a 3-value chunk: 2-bit offsets can say 3, one past its end
    past = forge(c, "b", indices=torch.tensor([3], dtype=torch.uint8))
    with pytest.raises(CompressionError, match="beyond"):
        Compressed.from_bytes(past, spec, fraction=0.25, chunk_size=8)
    # chunk 0 of w keeps 2 offsets (3 bits each): 5 then 5
    same = forge(valid("sparseloco"), "w", indices=torch.tensor([0b00_101_101, 0, 0], dtype=torch.uint8))
    with pytest.raises(CompressionError, match="increasing"):
        Compressed.from_bytes(same, SPEC, fraction=0.25, chunk_size=8)
