"""A run trained from a tokenized dataset of more than 200 MB on disk (real processes on the embedded chain):
``python -m template.data.tokenize`` turns stdlib sources into BPE shards (llm.c layout), copied until the
directory passes 200 MB; the orchestrator cuts it into its shards and serves them without holding the
corpus (its resident memory stays under 300 MB, and so does the most private memory it holds, sampled from
start to end); three meta-miners train a model whose embedding is
the tokenizer's vocabulary, and rounds are agreed with a falling loss."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from template.data.corpus import default_corpus
from template.net.http import free_port
from tests.integration.test_swarm_e2e import _spawn, _status, _wait, spawn_meta_miners, stop_all

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(600)]
DATASET_BYTES = 200 * 2**20
MEMORY_LIMIT_KB = 300 * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class PeakMemory(threading.Thread):
    """The most private memory (RssAnon: what the process allocated itself) a process held, sampled every
    50 ms. Its resident total (VmRSS) also counts the pages of shared libraries it maps — torch's alone are
    90 to 150 MB depending on what the page cache holds — which no code of ours decides."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, _status_kb(self.pid, "RssAnon"))
            except (OSError, AssertionError):
                return
            time.sleep(0.05)


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
    memory = PeakMemory(procs[0].pid)
    memory.start()
    try:
        _wait("orchestrator", lambda: _status(url), 180, logs)
        status = _status(url)
        assert status["training"]["vocab_size"] == vocab, status["training"]
        procs += spawn_meta_miners(dev_chain, chain, url, tmp_path, env, logs)
        status = _wait("12 agreed rounds", lambda: (s := _status(url))["round"] >= 12 and s, 240, logs)
        losses = [loss for _, loss in status["loss_history"]]
        late = sum(losses[-3:]) / 3
        assert losses[0] < 7.0 and late < losses[0] * 0.9, losses  # ln(1024) ≈ 6.93 at the start
        history = httpx.get(url + "/v1/history").json()["points"]
        assert all(pt["members"] == 3 and pt["tokens"] == 3 * 6 * 8 * 32 for pt in history[:6])
        memory.running = False
        memory.join()
        print(
            f"orchestrator peak private memory {memory.peak} kB, peak resident {_status_kb(procs[0].pid, 'VmHWM')} kB"
        )
        assert 0 < memory.peak < MEMORY_LIMIT_KB, f"orchestrator peak private memory {memory.peak} kB"
        # torch lives in the store's own process (orchestrator/store_process.py): the orchestrator's whole
        # resident set, shared library pages included, stays under the bound too.
        resident = _status_kb(procs[0].pid, "VmHWM")
        assert resident < MEMORY_LIMIT_KB, f"orchestrator peak resident memory {resident} kB"
        # The miners fetched only the shards they sampled, not the corpus.
        cached = sum(
            f.stat().st_size for w in ("miner-0", "miner-1", "miner-2") for f in (tmp_path / w).rglob("cache/*")
        )
        assert cached < DATASET_BYTES / 2, cached
    finally:
        stop_all(procs)
