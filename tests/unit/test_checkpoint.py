"""template.engine.checkpoint: canonical bytes, hashes, and refusal of anything malformed."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from template.config.presets import get
from template.engine.checkpoint import DTYPES, CheckpointError, dumps, hash_state, load, loads, save, state_hash
from template.engine.model import init_model


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 5, generator=g)
    return {
        "w.float32": f,
        "w.bfloat16": f.to(torch.bfloat16),
        "w.float16": f.to(torch.float16),
        "w.float64": f.double(),
        "i.int64": torch.tensor([-(2**62), -1, 0, 1, 2**62]),
        "i.int32": torch.tensor([-(2**31), 7], dtype=torch.int32),
        "i.int16": torch.tensor([-300, 300], dtype=torch.int16),
        "i.int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u.uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "b.bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous input
    }


def test_every_dtype_round_trips():
    state = sample_state()
    data = dumps(state, {"round": 3, "note": "x"})
    back, meta = loads(data)
    assert meta == {"round": 3, "note": "x"}
    assert list(back) == sorted(state)
    for name, t in state.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t), name
    assert {t.dtype for t in state.values()} == set(DTYPES.values())


def test_bytes_are_canonical():
    state = sample_state()
    shuffled = dict(reversed(list(state.items())))
    cloned = {k: v.clone() for k, v in state.items()}
    a, b, c = dumps(state, {"b": 1, "a": 2}), dumps(shuffled, {"a": 2, "b": 1}), dumps(cloned, {"a": 2, "b": 1})
    assert a == b == c
    assert hash_state(state, {"a": 2, "b": 1}) == state_hash(a) == hashlib.sha256(a).hexdigest()
    back, meta = loads(a)
    assert dumps(back, meta) == a


def test_model_state_hash_is_reproducible():
    a = init_model(get("tiny"), seed=1).state_dict()
    b = init_model(get("tiny"), seed=1).state_dict()
    assert dumps(a) == dumps(b)


def test_one_bit_changes_the_hash():
    state = {"w": torch.zeros(16)}
    h = hash_state(state)
    flipped = torch.zeros(16)
    flipped.view(torch.int32)[5] = 1  # smallest subnormal: one bit
    assert hash_state({"w": flipped}) != h
    assert hash_state({"w": torch.zeros(16)}, {"round": 1}) != h
    assert hash_state({"v": torch.zeros(16)}) != h
    assert hash_state({"w": torch.zeros(4, 4)}) != h
    assert hash_state({"w": torch.zeros(16, dtype=torch.float64)}) != h


def test_signed_zero_is_a_different_state():
    # Bytes, not values, are hashed: -0.0 and 0.0 differ (ranks must agree on bits).
    assert hash_state({"w": torch.tensor([0.0])}) != hash_state({"w": torch.tensor([-0.0])})


def test_truncated_data_refused():
    data = dumps(sample_state())
    for cut in (0, 5, 16, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(CheckpointError):
            loads(data[:cut])


def test_every_single_bit_flip_refused():
    data = dumps({"w": torch.arange(4.0), "i": torch.tensor([1, 2])}, {"k": "v"})
    for pos in range(len(data)):
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x10
        with pytest.raises(CheckpointError):
            loads(bytes(corrupt))


def test_appended_bytes_refused():
    with pytest.raises(CheckpointError):
        loads(dumps(sample_state()) + b"\x00")


def test_expected_sha256():
    data = dumps(sample_state())
    loads(data, expected_sha256=state_hash(data))
    loads(data, expected_sha256=state_hash(data).upper())
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        loads(data, expected_sha256="0" * 64)


def _reseal(body: bytes) -> bytes:
    """Attach a valid checksum to a hand-made body: what a malicious peer can do."""
    return body + hashlib.sha256(body).digest()


def _forge(header: dict | bytes, payload: bytes = b"") -> bytes:
    hb = header if isinstance(header, bytes) else json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return _reseal(b"TSWSTATE" + len(hb).to_bytes(8, "little") + hb + payload)


def test_forged_but_checksummed_headers_refused():
    good = {
        "format": "tensorswarm.state",
        "version": 1,
        "meta": {},
        "tensors": [{"name": "a", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8}],
    }
    loads(_forge(good, b"\x00" * 8))  # the forger's baseline is valid

    def variant(**changes):
        h = json.loads(json.dumps(good))
        h["tensors"][0].update(changes)
        return h

    cases = {
        "wrong version": dict(good, version=2),
        "wrong format": dict(good, format="other"),
        "extra field": dict(good, extra=1),
        "bad dtype": variant(dtype="complex64"),
        "negative dim": variant(shape=[-2]),
        "float dim": variant(shape=[2.0]),
        "nbytes lie": variant(nbytes=4),
        "offset lie": variant(offset=4),
        "too big": variant(shape=[10**12], nbytes=4 * 10**12),
    }
    for why, header in cases.items():
        with pytest.raises(CheckpointError):
            loads(_forge(header, b"\x00" * 8))  # on failure, `why` names the case
    # Data shorter / longer than the tensors, non-canonical JSON, NaN constants, unsorted names.
    with pytest.raises(CheckpointError):
        loads(_forge(good, b"\x00" * 4))
    with pytest.raises(CheckpointError):
        loads(_forge(good, b"\x00" * 12))
    with pytest.raises(CheckpointError, match="canonical"):
        loads(_forge(json.dumps(good, indent=1).encode(), b"\x00" * 8))
    with pytest.raises(CheckpointError):
        loads(_forge(b'{"format":"tensorswarm.state","meta":{"x":NaN},"tensors":[],"version":1}'))
    with pytest.raises(CheckpointError):
        loads(_forge(b"[" * 100000 + b"]" * 100000))
    two = dict(good, tensors=[dict(good["tensors"][0], name="b"), dict(good["tensors"][0], name="a", offset=8)])
    with pytest.raises(CheckpointError, match="sorted"):
        loads(_forge(two, b"\x00" * 16))
    bad_bool = dict(good, tensors=[{"name": "a", "dtype": "bool", "shape": [1], "offset": 0, "nbytes": 1}])
    with pytest.raises(CheckpointError, match="bool"):
        loads(_forge(bad_bool, b"\x02"))


def test_require_finite():
    for bad in (float("nan"), float("inf"), float("-inf")):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            data = dumps({"w": torch.tensor([1.0, bad], dtype=dtype)})
            loads(data)  # stored faithfully by default
            with pytest.raises(CheckpointError, match="NaN or Inf"):
                loads(data, require_finite=True)


def test_dumps_refuses_bad_input():
    with pytest.raises(CheckpointError):
        dumps({"w": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(CheckpointError):
        dumps({"w": [1, 2]})
    with pytest.raises(CheckpointError):
        dumps({"": torch.zeros(1)})
    with pytest.raises(CheckpointError):
        dumps({"w": torch.zeros(1)}, {"x": float("nan")})
    with pytest.raises(CheckpointError):
        dumps({"w": torch.zeros(1)}, {"x": object()})


def test_save_and_load_file(tmp_path):
    state = sample_state()
    path = tmp_path / "state.bin"
    digest = save(path, state, {"round": 1})
    back, meta = load(path, expected_sha256=digest)
    assert meta == {"round": 1} and all(torch.equal(back[k], v) for k, v in state.items())
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # no temp file left behind


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_only_raises_checkpoint_error(blob):
    with pytest.raises(CheckpointError):
        loads(blob)
    with pytest.raises(CheckpointError):
        loads(b"TSWSTATE" + blob)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_resealed_garbage_headers_only_raise_checkpoint_error(blob):
    # A peer can always compute a valid checksum: the parser must still only raise CheckpointError.
    for body in (b"TSWSTATE" + len(blob).to_bytes(8, "little") + blob, b"TSWSTATE" + blob):
        try:
            loads(_reseal(body))
        except CheckpointError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["name", "dtype", "shape", "offset", "nbytes", None]),
    value=json_values,
    top=st.sampled_from(["format", "version", "meta", "tensors", None]),
    top_value=json_values,
    payload=st.binary(max_size=24),
)
def test_forged_json_headers_only_raise_checkpoint_error(field, value, top, top_value, payload):
    # Structured fuzz: a valid header with one entry field and/or one top-level field replaced by
    # arbitrary JSON, plus an arbitrary payload, all correctly checksummed.
    header = {
        "format": "tensorswarm.state",
        "version": 1,
        "meta": {},
        "tensors": [{"name": "a", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8}],
    }
    if field is not None:
        header["tensors"][0][field] = value
    if top is not None:
        header[top] = top_value
    try:
        state, meta = loads(_forge(header, payload))
    except CheckpointError:
        return
    # Whatever was accepted is canonical.
    assert dumps(state, meta) == _forge(header, payload)
