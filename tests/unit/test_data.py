"""template.data: corpus, shards and manifest, the shard store and cache, and batch assignment."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pydantic
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from template.data.corpus import build_dataset, default_corpus, load_corpus
from template.data.sampling import DeterministicRNG, batch_offsets, heldout_offsets, windows_to_tensor
from template.data.store import ShardCache, ShardStore, shard_reader
from template.wire.dataset import DatasetError, DatasetManifest, MissingShardError, ShardInfo, is_sha256


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corpus_of(n: int) -> bytes:
    # Varied bytes (not all equal) so every shard has its own hash.
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def fake_manifest(sizes: list[int], shard_size: int, heldout_start: int) -> DatasetManifest:
    return DatasetManifest(
        name="fake",
        total_bytes=sum(sizes),
        shard_size=shard_size,
        shards=[ShardInfo(index=i, sha256=f"{i:064x}", size=s) for i, s in enumerate(sizes)],
        heldout_start=heldout_start,
    )


# --------------------------------------------------------------------------- corpus


def test_default_corpus_deterministic_bounded_with_headers():
    name, a = default_corpus(max_bytes=2**20)
    name2, b = default_corpus(max_bytes=2**20)
    assert (name, a) == (name2, b)
    assert name.startswith("python-stdlib-3.")
    assert 0 < len(a) <= 2**20
    first_line = a.split(b"\n", 1)[0]
    assert first_line.startswith(b"# file: ") and first_line.endswith(b".py")
    a.decode("utf-8")  # text, and a whole-file cut keeps it valid
    assert b"site-packages/" not in b"".join(line for line in a.split(b"\n") if line.startswith(b"# file: "))


def test_default_corpus_is_a_prefix_cut_at_file_boundaries():
    _, small = default_corpus(max_bytes=200_000)
    _, big = default_corpus(max_bytes=400_000)
    assert big.startswith(small)
    # The small one ends exactly where the next file's header starts in the big one.
    assert big[len(small) :].startswith(b"# file: ")
    _, tiny = default_corpus(max_bytes=10)  # smaller than any file: the first one is cut
    assert tiny == small[:10]


def test_load_corpus_directory_sorted_with_headers(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("bee\n")
    (root / "a.txt").write_text("ay\n")
    (root / "sub" / "c.txt").write_text("sea ☃\n")
    (root / ".hidden").write_bytes(b"\0\1binary")  # hidden files are skipped, not refused
    name, corpus = load_corpus(root)
    assert name == "data"
    assert corpus == (b"# file: a.txt\nay\n# file: b.txt\nbee\n" + "# file: sub/c.txt\nsea ☃\n".encode())
    # Truncation stops at a file boundary.
    assert load_corpus(root, max_bytes=40)[1] == b"# file: a.txt\nay\n# file: b.txt\nbee\n"


def test_load_corpus_single_file_as_is(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("hello world\n")
    assert load_corpus(f) == ("book.txt", b"hello world\n")
    assert load_corpus(f, max_bytes=5) == ("book.txt", b"hello")


@pytest.mark.parametrize("content", [b"abc\0def", b"caf\xe9\n"], ids=["binary", "latin-1"])
def test_load_corpus_refuses_non_text_naming_path(tmp_path, content):
    (tmp_path / "good.txt").write_text("fine\n")
    bad = tmp_path / "zz" / "bad.bin"
    bad.parent.mkdir()
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match=str(bad)):
        load_corpus(tmp_path)
    with pytest.raises(DatasetError, match=str(bad)):
        load_corpus(bad)


def test_load_corpus_refuses_missing_and_empty(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=str(missing)):
        load_corpus(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_corpus(empty)
    (tmp_path / "blank.txt").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        load_corpus(tmp_path / "blank.txt")


# --------------------------------------------------------------------------- dataset


def test_build_dataset_shards_and_split():
    corpus = corpus_of(10 * 100 + 37)
    manifest, shards = build_dataset("t", corpus, shard_size=100, heldout_fraction=0.2)
    assert len(manifest.shards) == 11 and manifest.total_bytes == len(corpus)
    assert [s.size for s in manifest.shards] == [100] * 10 + [37]
    assert b"".join(shards[s.sha256] for s in manifest.shards) == corpus
    for s in manifest.shards:
        assert s.sha256 == sha(shards[s.sha256]) and len(shards[s.sha256]) == s.size
    # round(11 * 0.2) = 2, plus one because the last shard is a short tail (37 < 100 / 2).
    assert manifest.heldout_start == 11 - 3
    assert [s.index for s in manifest.heldout_shards] == [8, 9, 10]
    assert [s.index for s in manifest.train_shards] == list(range(8))
    full, _ = build_dataset("t", corpus_of(10 * 100 + 60), shard_size=100, heldout_fraction=0.2)
    assert [s.index for s in full.heldout_shards] == [9, 10]  # a tail of at least half a shard counts


@pytest.mark.parametrize(
    "n, fraction, heldout",
    [(2, 0.05, 1), (20, 0.05, 1), (40, 0.05, 2), (3, 0.99, 2), (10, 0.5, 5)],
)
def test_heldout_count(n, fraction, heldout):
    manifest, _ = build_dataset("t", corpus_of(n * 10), shard_size=10, heldout_fraction=fraction)
    assert len(manifest.heldout_shards) == heldout
    assert len(manifest.train_shards) == n - heldout >= 1


def test_build_dataset_refuses_too_small():
    with pytest.raises(DatasetError, match="--shard-size.*bigger dataset"):
        build_dataset("t", b"x" * 100, shard_size=100)
    with pytest.raises(DatasetError, match="bigger dataset"):
        build_dataset("t", b"", shard_size=100)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DatasetError, match="heldout_fraction"):
            build_dataset("t", b"x" * 100, shard_size=10, heldout_fraction=bad)


def test_manifest_id_stable_and_sensitive():
    corpus = corpus_of(1000)
    base, _ = build_dataset("t", corpus, shard_size=100)
    again, _ = build_dataset("t", corpus, shard_size=100)
    assert base.manifest_id() == again.manifest_id() and is_sha256(base.manifest_id())
    # canonical JSON: sorted keys, no whitespace
    raw = base.canonical_json()
    assert b" " not in raw and raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    changed = corpus[:500] + bytes([corpus[500] ^ 1]) + corpus[501:]
    variants = [
        build_dataset("u", corpus, shard_size=100)[0],
        build_dataset("t", changed, shard_size=100)[0],
        build_dataset("t", corpus, shard_size=99)[0],
        build_dataset("t", corpus, shard_size=100, heldout_fraction=0.3)[0],
        build_dataset("t", corpus + b"!", shard_size=100)[0],
    ]
    ids = {base.manifest_id()} | {v.manifest_id() for v in variants}
    assert len(ids) == 1 + len(variants)


def test_manifest_validation():
    good = fake_manifest([10, 10, 4], 10, 2).model_dump()
    DatasetManifest.model_validate(good)
    for change in (
        {"heldout_start": 0},
        {"heldout_start": 3},
        {"total_bytes": 25},
        {"shard_size": 9},
        {"extra": 1},
        {"shards": good["shards"][:1]},
        {"shards": [good["shards"][1], good["shards"][0], good["shards"][2]]},
    ):
        with pytest.raises(ValueError):
            DatasetManifest.model_validate({**good, **change})
    with pytest.raises(ValueError):
        ShardInfo(index=0, sha256="A" * 64, size=1)
    m = DatasetManifest.model_validate(good)
    with pytest.raises(pydantic.ValidationError):
        m.name = "other"  # frozen


# --------------------------------------------------------------------------- store


def test_store_round_trip_and_manifest(tmp_path):
    store = ShardStore(tmp_path / "store")
    manifest, shards = build_dataset("t", corpus_of(300), shard_size=100)
    mid = store.save_dataset(manifest, shards)
    assert mid == manifest.manifest_id()
    for info in manifest.shards:
        assert store.has(info.sha256)
        assert store.get(info.sha256) == shards[info.sha256]
        assert store.path(info.sha256).parent == store.shards_dir
    assert store.load_manifest(mid) == manifest
    assert store.put(b"hello") == sha(b"hello") and store.get(sha(b"hello")) == b"hello"
    missing = sha(b"never stored")
    assert not store.has(missing)
    with pytest.raises(MissingShardError):
        store.get(missing)
    with pytest.raises(MissingShardError):
        store.load_manifest(missing)
    # No temp files left behind.
    assert not [p for p in store.shards_dir.iterdir() if p.name.startswith(".")]


def test_store_refuses_corrupt_files_naming_path(tmp_path):
    store = ShardStore(tmp_path)
    digest = store.put(b"some shard content")
    path = store.path(digest)
    path.write_bytes(b"some shard")  # truncated
    with pytest.raises(DatasetError, match=str(path)):
        store.get(digest)
    path.write_bytes(b"some shard contenT")  # same size, flipped
    with pytest.raises(DatasetError, match="corrupt"):
        store.get(digest)
    store.put(b"some shard content")  # a put repairs it
    assert store.get(digest) == b"some shard content"

    manifest, _ = build_dataset("t", corpus_of(300), shard_size=100)
    mid = store.save_manifest(manifest)
    other, _ = build_dataset("other", corpus_of(300), shard_size=100)
    mpath = store.manifests_dir / f"{mid}.json"
    mpath.write_bytes(other.canonical_json())
    with pytest.raises(DatasetError, match=str(mpath)):
        store.load_manifest(mid)
    mpath.write_bytes(b"{not json")
    with pytest.raises(DatasetError, match=str(mpath)):
        store.load_manifest(mid)


@pytest.mark.parametrize(
    "bad",
    ["../x", "../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "", "g" * 64, "a" * 63 + "/", "a" * 64 + "\n", None, 5],
)
def test_store_refuses_malformed_hashes(tmp_path, bad):
    store = ShardStore(tmp_path)
    for call in (store.get, store.has, store.path, store.load_manifest):
        with pytest.raises(DatasetError, match="malformed"):
            call(bad)


# --------------------------------------------------------------------------- cache


def test_cache_fetches_once_then_serves_from_disk(tmp_path):
    data = b"shard bytes" * 100
    digest = sha(data)
    calls = []

    def fetch(s):
        calls.append(s)
        return data

    cache = ShardCache(tmp_path / "cache", fetch)
    assert cache.get(digest) == data
    assert cache.get(digest) == data
    assert calls == [digest]
    # A fresh cache on the same directory (a restarted miner) does not fetch either.
    assert ShardCache(tmp_path / "cache", fetch).get(digest) == data
    assert calls == [digest]
    # A corrupt copy on disk is dropped and fetched again.
    cache.path(digest).write_bytes(b"garbage")
    assert cache.get(digest) == data
    assert calls == [digest, digest]


def test_cache_rejects_wrong_bytes_and_caches_nothing(tmp_path):
    digest = sha(b"the real shard")
    cache = ShardCache(tmp_path, lambda s: b"something else")
    with pytest.raises(DatasetError, match=f"shard {digest} from the orchestrator does not match its hash"):
        cache.get(digest)
    assert not cache.has(digest)
    assert list(cache.store.shards_dir.iterdir()) == []
    with pytest.raises(DatasetError, match="malformed"):
        cache.get("../../etc/passwd")


def test_cache_aget_with_async_and_sync_fetch(tmp_path):
    data = b"async shard"
    digest = sha(data)
    calls = []

    async def afetch(s):
        calls.append(s)
        await asyncio.sleep(0)
        return data

    async def main():
        cache = ShardCache(tmp_path / "a", afetch)
        assert await cache.aget(digest) == data
        assert await cache.aget(digest) == data
        with pytest.raises(TypeError, match="aget"):
            ShardCache(tmp_path / "b", afetch).get(digest)
        assert await ShardCache(tmp_path / "c", lambda s: data).aget(digest) == data
        with pytest.raises(DatasetError, match="does not match its hash"):
            await ShardCache(tmp_path / "d", lambda s: b"bad").aget(digest)

    asyncio.run(main())
    assert calls == [digest]


# --------------------------------------------------------------------------- sampling


def test_rng_is_pinned():
    # The stream is part of the protocol: if this changes, miners and validators disagree.
    rng = DeterministicRNG("d", 1, "x")
    key = hashlib.sha256(b'["d",1,"x"]').digest()
    block = hashlib.sha256(key + (0).to_bytes(8, "big")).digest()
    assert [rng.uint64() for _ in range(4)] == [int.from_bytes(block[i : i + 8], "big") for i in (0, 8, 16, 24)]
    assert all(0 <= DeterministicRNG("d", i).below(7) < 7 for i in range(50))


def test_batch_offsets_deterministic_and_keyed():
    manifest, _ = build_dataset("t", corpus_of(20_000), shard_size=1000, heldout_fraction=0.1)
    kw = dict(seed=7, round=3, hotkey="5Ghotkey", step=2, batch_size=16, seq_len=64)
    base = batch_offsets(manifest, **kw)
    assert base == batch_offsets(manifest, **kw) and len(base) == 16
    for change in ({"seed": 8}, {"round": 4}, {"hotkey": "5Gother"}, {"step": 3}):
        assert batch_offsets(manifest, **{**kw, **change}) != base
    # A bigger batch extends a smaller one.
    assert batch_offsets(manifest, **{**kw, "batch_size": 32})[:16] == base
    with pytest.raises(DatasetError, match="seq_len"):
        batch_offsets(manifest, **{**kw, "seq_len": 1000})


@st.composite
def manifests(draw):
    n = draw(st.integers(2, 8))
    shard_size = draw(st.integers(1, 64))
    last = draw(st.integers(1, shard_size))
    heldout_start = draw(st.integers(1, n - 1))
    return fake_manifest([shard_size] * (n - 1) + [last], shard_size, heldout_start)


@settings(max_examples=200, deadline=None)
@given(
    manifest=manifests(),
    seq_len=st.integers(1, 80),
    batch_size=st.integers(1, 16),
    seed=st.integers(-(2**70), 2**70),
    round=st.integers(0, 10**6),
    hotkey=st.text(min_size=1, max_size=20),
    step=st.integers(0, 1000),
)
def test_batch_offsets_only_train_and_in_bounds(manifest, seq_len, batch_size, seed, round, hotkey, step):
    fits = [s for s in manifest.train_shards if s.size >= seq_len + 1]
    kw = dict(seed=seed, round=round, hotkey=hotkey, step=step, batch_size=batch_size, seq_len=seq_len)
    if not fits:
        with pytest.raises(DatasetError):
            batch_offsets(manifest, **kw)
        return
    offsets = batch_offsets(manifest, **kw)
    assert len(offsets) == batch_size
    for index, offset in offsets:
        assert index < manifest.heldout_start
        assert offset >= 0 and offset + seq_len + 1 <= manifest.shards[index].size


@settings(max_examples=100, deadline=None)
@given(manifest=manifests(), seq_len=st.integers(1, 80), count=st.integers(1, 16), seed=st.integers(0, 2**64))
def test_heldout_offsets_only_heldout(manifest, seq_len, count, seed):
    fits = [s for s in manifest.heldout_shards if s.size >= seq_len + 1]
    if not fits:
        with pytest.raises(DatasetError):
            heldout_offsets(manifest, seed=seed, round=1, count=count, seq_len=seq_len)
        return
    offsets = heldout_offsets(manifest, seed=seed, round=1, count=count, seq_len=seq_len)
    assert offsets == heldout_offsets(manifest, seed=seed, round=1, count=count, seq_len=seq_len)
    for index, offset in offsets:
        assert index >= manifest.heldout_start
        assert offset >= 0 and offset + seq_len + 1 <= manifest.shards[index].size


def test_offsets_cover_the_range():
    # Uniform over windows: with many draws every training shard and many offsets show up.
    manifest = fake_manifest([50] * 5 + [20], 50, 4)
    offsets = batch_offsets(manifest, seed=1, round=0, hotkey="h", step=0, batch_size=2000, seq_len=9)
    assert {i for i, _ in offsets} == {0, 1, 2, 3}
    assert {o for _, o in offsets} == set(range(41))


def test_windows_to_tensor_matches_bytes(tmp_path):
    manifest, shards = build_dataset("t", corpus_of(5000), shard_size=500)
    seq_len = 31
    offsets = batch_offsets(manifest, seed=0, round=0, hotkey="h", step=0, batch_size=8, seq_len=seq_len)
    by_index = {s.index: shards[s.sha256] for s in manifest.shards}
    x = windows_to_tensor(by_index.__getitem__, offsets, seq_len)
    assert x.shape == (8, seq_len + 1) and x.dtype == torch.long
    for row, (index, offset) in zip(x.tolist(), offsets):
        assert bytes(row) == by_index[index][offset : offset + seq_len + 1]
    inputs, targets = x[:, :-1], x[:, 1:]
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    # Same result through a cache reader; each shard fetched once.
    store = ShardStore(tmp_path / "origin")
    store.save_dataset(manifest, shards)
    fetched = []
    cache = ShardCache(tmp_path / "cache", lambda s: fetched.append(s) or store.get(s))
    assert torch.equal(windows_to_tensor(cache.reader(manifest), offsets, seq_len), x)
    assert len(fetched) == len(set(fetched)) == len({i for i, _ in offsets})
    assert torch.equal(windows_to_tensor(shard_reader(manifest, store.get), offsets, seq_len), x)
    with pytest.raises(DatasetError, match="does not fit"):
        windows_to_tensor(by_index.__getitem__, [(0, 490)], seq_len)
    assert windows_to_tensor(by_index.__getitem__, [], seq_len).shape == (0, seq_len + 1)
