"""A run trained from a tokenized dataset of more than 200 MB on disk (real processes on the embedded chain):
``python -m template.data.tokenize`` turns stdlib sources into BPE shards (llm.c layout), copied until the
directory passes 200 MB; the orchestrator cuts it into its shards and serves them without holding the
corpus (its peak resident memory stays under 300 MB); three meta-miners train a model whose embedding is
the tokenizer's vocabulary, and rounds are agreed with a falling loss."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from template.data.corpus import default_corpus
from template.net.http import free_port
from tests.integration.test_swarm_e2e import _spawn, _status, _wait, stop_all

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(600)]
DATASET_BYTES = 200 * 2**20
RSS_LIMIT_KB = 300 * 1024


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the process's peak resident set, ingestion included
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def _token_dir(tmp_path: Path) -> tuple[Path, int]:
    text = tmp_path / "text"
    text.mkdir()
    _, corpus = default_corpus(max_bytes=2 * 2**20)
    (text / "stdlib.py").write_bytes(corpus)
    tokens = tmp_path / "tokens"
    done = subprocess.run(
        [sys.executable, "-m", "template.data.tokenize", "--input", str(text), "--out", str(tokens)]
        + ["--vocab-size", "1024"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (original,) = tokens.glob("tokens_*.bin")
    size, copies = original.stat().st_size, 0
    while (copies + 1) * size < DATASET_BYTES:  # the same text again, as further llm.c files
        copies += 1
        shutil.copyfile(original, tokens / f"tokens_{copies:06d}.bin")
    total = sum(p.stat().st_size for p in tokens.glob("*.bin"))
    assert total >= DATASET_BYTES - size
    from tokenizers import Tokenizer

    return tokens, Tokenizer.from_file(str(tokens / "tokenizer.json")).get_vocab_size()


def test_a_run_trains_from_200_mb_of_token_shards_in_little_memory(sim_chain, tmp_path):
    dev_chain = sim_chain
    tokens, vocab = _token_dir(tmp_path)
    assert sum(p.stat().st_size for p in tokens.glob("*.bin")) >= DATASET_BYTES - 4 * 2**20
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json"), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    chain = ["--subtensor.chain_endpoint", dev_chain.endpoint, "--netuid", str(dev_chain.subnet.netuid)]
    chain += ["--wallet.path", str(dev_chain.wallets_dir)]
    logs = [tmp_path / "orchestrator.log"]
    orchestrator = ["-m", "orchestrator", *chain, "--wallet.name", "owner", "--state-dir", str(tmp_path / "orch")]
    orchestrator += ["--port", str(port), "--tcp-store-port", "0", "--dataset", str(tokens)]
    orchestrator += ["--inner-steps", "6", "--batch-size", "8", "--seq-len", "32", "--min-world-size", "3"]
    procs = [_spawn(orchestrator, logs[0], env)]
    try:
        _wait("orchestrator", lambda: _status(url), 180, logs)
        status = _status(url)
        assert status["training"]["vocab_size"] == vocab, status["training"]
        for w in dev_chain.subnet.miners:
            logs.append(tmp_path / f"{w.name}.log")
            miner = ["neurons/meta_miner.py", *chain, "--wallet.name", w.name, "--orchestrator-url", url]
            miner += ["--work-dir", str(tmp_path / w.name), "--axon.ip", "127.0.0.2"]
            miner += ["--axon.port", str(free_port("127.0.0.2")), "--heartbeat-interval", "0.5"]
            procs.append(_spawn(miner, logs[-1], env))
        status = _wait("6 agreed rounds", lambda: (s := _status(url))["round"] >= 6 and s, 240, logs)
        losses = [loss for _, loss in status["loss_history"]]
        assert losses[0] < 7.0 and losses[-1] < losses[0] * 0.9, losses  # ln(1024) ≈ 6.93 at the start
        history = httpx.get(url + "/v1/history").json()["points"]
        assert all(pt["members"] == 3 and pt["tokens"] == 3 * 6 * 8 * 32 for pt in history[:6])
        peak = _peak_rss_kb(procs[0].pid)
        print(f"orchestrator peak RSS {peak} kB")
        assert peak < RSS_LIMIT_KB, f"orchestrator peak RSS {peak} kB"
        # The miners fetched only the shards they sampled, not the corpus.
        cached = sum(
            f.stat().st_size for w in ("miner-0", "miner-1", "miner-2") for f in (tmp_path / w).rglob("cache/*")
        )
        assert cached < DATASET_BYTES / 2, cached
    finally:
        stop_all(procs)
