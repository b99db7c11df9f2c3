"""Tokenized datasets (template.data.tokens, template.data.tokenize): llm.c *.bin and *.npy token files cut
into shards, every malformed file refused with its path named, windows decoded as tokens, byte datasets
unchanged; the BPE tokenize command, and a model exported with its tokenizer."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from template.config.run import TrainingConfig
from template.data.corpus import build_dataset
from template.data.sampling import batch_offsets, heldout_offsets, windows_to_tensor
from template.data.tokens import ingest_tokens, token_file
from template.engine.export import export_model, load_exported, load_tokenizer
from template.engine.state import StateFormat
from template.generate import generate
from template.wire.dataset import DatasetError

REPO = Path(__file__).resolve().parents[2]


def _llmc(path: Path, tokens: np.ndarray, magic: int = 20240520, version: int = 1, count: int | None = None) -> Path:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, version, tokens.size if count is None else count)
    path.write_bytes(header.tobytes() + tokens.tobytes())
    return path


def _store():
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        blobs[sha] = data
        return sha

    return blobs, put


def test_token_files_are_cut_into_shards_and_read_back_as_the_same_tokens(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    a = (np.arange(30_000) * 7 % 50_000).astype("<u2")
    b = (np.arange(20_000) * 3 % 50_000).astype("<u2")
    _llmc(d / "a.bin", a)
    np.save(d / "b.npy", b)
    (d / "notes.txt").write_text("ignored")
    blobs, put = _store()
    m = ingest_tokens(d, put, shard_size=10_001, heldout_fraction=0.1)  # rounded down to whole tokens
    assert (m.token_bytes, m.vocab_size, m.shard_size, m.total_bytes) == (2, 50257, 10_000, 100_000)
    whole = b"".join(blobs[s.sha256] for s in m.shards)
    assert whole == a.tobytes() + b.tobytes()
    offsets = batch_offsets(m, seed=1, round=2, hotkey="hk", step=0, batch_size=4, seq_len=32)
    assert all(off % 2 == 0 for _, off in offsets)
    x = windows_to_tensor(lambda i: blobs[m.shards[i].sha256], offsets, 32, m.token_bytes, m.vocab_size)
    tokens = np.frombuffer(whole, "<u2")
    for row, (index, off) in zip(x, offsets):
        start = (index * m.shard_size + off) // 2
        assert row.tolist() == tokens[start : start + 33].tolist()
    held = heldout_offsets(m, seed=1, round=2, count=3, seq_len=32)
    assert all(index >= m.heldout_start for index, _ in held)
    with pytest.raises(DatasetError, match="outside the vocabulary of 100"):
        windows_to_tensor(lambda i: blobs[m.shards[i].sha256], offsets, 32, 2, 100)


def test_byte_datasets_keep_their_manifest_and_their_draws():
    corpus = bytes(range(256)) * 64
    m, blobs = build_dataset("bytes", corpus, shard_size=4096)
    assert b"token_bytes" not in m.canonical_json() and b"vocab_size" not in m.canonical_json()
    offsets = batch_offsets(m, seed=3, round=1, hotkey="hk", step=2, batch_size=5, seq_len=16)
    x = windows_to_tensor(lambda i: blobs[m.shards[i].sha256], offsets, 16)
    for row, (index, off) in zip(x, offsets):
        assert bytes(row.tolist()) == corpus[index * 4096 + off :][:17]


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda d: _llmc(d / "x.bin", np.arange(100, dtype="<u2"), magic=1234), "bad magic 1234"),
        (lambda d: _llmc(d / "x.bin", np.arange(100, dtype="<u2"), version=3), "version 3, expected 1"),
        (lambda d: _llmc(d / "x.bin", np.arange(100, dtype="<u2"), count=101), "header says 101 tokens"),
        (lambda d: (d / "x.bin").write_bytes(b"\0" * 100), "shorter than the 1024-byte llm.c header"),
        (lambda d: np.save(d / "x.npy", np.arange(100, dtype=np.int64)), "dtype <i8"),
        (lambda d: np.save(d / "x.npy", np.zeros((10, 10), dtype="<u2")), "one-dimensional"),
        (lambda d: np.save(d / "x.npy", np.arange(100, dtype=">u2")), "dtype >u2"),
        (lambda d: (d / "x.npy").write_bytes(b"not numpy at all"), "not a .npy file"),
    ],
)
def test_malformed_token_files_are_refused_with_the_path_named(tmp_path, make, named):
    make(tmp_path)
    (path,) = list(tmp_path.iterdir())
    with pytest.raises(DatasetError, match=named) as refused:
        ingest_tokens(tmp_path, _store()[1], shard_size=64, heldout_fraction=0.1)
    assert str(path) in str(refused.value)


def test_a_token_outside_the_vocabulary_is_refused_where_it_is(tmp_path):
    tokens = np.arange(1000, dtype="<u2")
    tokens[777] = 60_000  # GPT-2's layout: a vocabulary of 50 257
    path = _llmc(tmp_path / "a.bin", tokens)
    with pytest.raises(DatasetError, match=r"a\.bin: token 60000 at position 777 is outside the vocabulary of 50257"):
        ingest_tokens(tmp_path, _store()[1], shard_size=256, heldout_fraction=0.1)
    assert token_file(path).count == 1000
    np.save(tmp_path / "b.npy", np.arange(10, dtype="<u4"))
    with pytest.raises(DatasetError, match="different widths"):
        ingest_tokens(tmp_path, _store()[1], shard_size=256, heldout_fraction=0.1)


def test_npy_without_a_tokenizer_takes_the_largest_token_and_a_given_vocab_must_hold_the_data(tmp_path):
    np.save(tmp_path / "a.npy", (np.arange(5000) % 700).astype("<u4"))
    m = ingest_tokens(tmp_path, _store()[1], shard_size=4096, heldout_fraction=0.2)
    assert (m.token_bytes, m.vocab_size) == (4, 700)
    assert (
        ingest_tokens(tmp_path, _store()[1], shard_size=4096, heldout_fraction=0.2, vocab_size=1024).vocab_size == 1024
    )
    with pytest.raises(DatasetError, match="outside the vocabulary of 500"):
        ingest_tokens(tmp_path, _store()[1], shard_size=4096, heldout_fraction=0.2, vocab_size=500)


def _tokenize(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "template.data.tokenize", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_tokenize_trains_bpe_offline_and_the_shards_decode_to_the_text(tmp_path):
    text = tmp_path / "corpus"
    text.mkdir()
    docs = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" * 40 for i in range(30)]
    for i, doc in enumerate(docs):
        (text / f"doc{i:02d}.py").write_text(doc)
    out = tmp_path / "tokens"
    done = _tokenize("--input", str(text), "--out", str(out), "--vocab-size", "400", "--shard-tokens", "3000")
    assert done.returncode == 0, done.stderr
    assert (out / "tokenizer.json").exists() and len(list(out.glob("tokens_*.bin"))) >= 2
    blobs, put = _store()
    m = ingest_tokens(out, put, shard_size=2048, heldout_fraction=0.1)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()  # at most 400: BPE stops when no pair is left to merge
    assert 256 < vocab <= 400 and m.vocab_size == vocab and m.token_bytes == 2
    assert f"vocabulary {vocab}" in done.stdout
    ids = np.frombuffer(b"".join(blobs[s.sha256] for s in m.shards), "<u2").tolist()
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert ids.count(eot) == len(docs)
    first = ids[: ids.index(eot)]
    assert tokenizer.decode(first) == docs[0]
    assert len(first) < len(docs[0]) / 2  # BPE merges: far fewer tokens than bytes

    # Refusals: one line, non-zero, nothing written.
    again = _tokenize("--input", str(text), "--out", str(out))
    assert again.returncode == 2 and "not an empty directory" in again.stderr
    tiny = _tokenize("--input", str(text), "--out", str(tmp_path / "x"), "--vocab-size", "100")
    assert tiny.returncode == 2 and "--vocab-size" in tiny.stderr and not (tmp_path / "x").exists()
    missing = _tokenize("--input", str(tmp_path / "nope"), "--out", str(tmp_path / "y"))
    assert missing.returncode == 1 and "nope" in missing.stderr

    # A model trained on it exports with its tokenizer and samples text.
    cfg = TrainingConfig(preset="tiny", seq_len=32, vocab_size=m.vocab_size)
    fmt = StateFormat(cfg)
    assert fmt.spec["transformer.wte.weight"] == (vocab, 64)
    exported = export_model(cfg, fmt.initial(), tmp_path / "model", tokenizer=out / "tokenizer.json")
    model, config = load_exported(exported)
    assert config["tokenizer"] == "tokenizer.json" and config["vocab_size"] == vocab
    loaded = load_tokenizer(exported, config)
    continuation = generate(model, loaded.encode("def ").ids, 10, 1.0, 0, seed=0)
    assert len(continuation) == 10 and all(0 <= t < vocab for t in continuation)
    with torch.no_grad():
        assert model(torch.tensor([ids[:32]]))[0].shape == (1, 32, vocab)
    bare = export_model(cfg, fmt.initial(), tmp_path / "bare")
    with pytest.raises(Exception, match="no tokenizer was exported"):
        load_tokenizer(bare, load_exported(bare)[1])
