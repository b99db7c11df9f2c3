"""The nccl / CUDA paths of template.engine (the Trainer and its strategies, `--device cuda`): skipped
without a GPU. On a GPU machine: `python -m pytest tests/integration/test_training_gpu.py -s`
(one GPU: world size 1 over nccl — the all-gather exchange, aggregation and FSDP2 code
paths all run on device tensors)."""

from __future__ import annotations

import datetime
import math
import time

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def nccl_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group(
        "nccl",
        store=store,
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=60),
        device_id=torch.device("cuda:0"),
    )
    yield
    dist.destroy_process_group()


def _batches(seq_len: int, batch_size: int):
    text = ("the swarm trains one model across many machines; " * 400).encode()
    data = torch.tensor(list(text), dtype=torch.long)

    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        return torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).cuda()

    return batch


def _trainer(strategy: str, preset: str, **over):
    from template.config.run import TrainingConfig
    from template.engine.trainer import Trainer

    cfg = TrainingConfig(
        preset=preset,
        strategy=strategy,
        inner_steps=over.pop("inner_steps", 10),
        batch_size=over.pop("batch_size", 8),
        seq_len=over.pop("seq_len", 64),
        **over,
    )
    return cfg, Trainer(
        cfg,
        rank=0,
        world_size=1,
        device="cuda",
        peers=["gpu-rank-0"],
        sign=lambda message: bytes(64),
        context="gpu-check",
        verify=lambda ss58, message, signature: True,
    )


@pytest.mark.parametrize("strategy", ["diloco", "ddp", "fsdp"])
def test_strategy_trains_on_cuda_and_is_deterministic(nccl_group, strategy):
    hashes = []
    for _ in range(2):
        cfg, trainer = _trainer(strategy, "tiny", compression="int8")
        trainer.load(None)
        batch = _batches(cfg.seq_len, cfg.batch_size)
        means = []
        for r in range(4):
            result = trainer.run_round(r, batch)
            assert all(math.isfinite(x) for x in result.losses)
            means.append(sum(result.losses) / len(result.losses))
            if strategy == "diloco":
                assert result.dropped == {} and result.contribution_sha256 is not None
        assert means[-1] < means[0] * 0.8, means
        hashes.append(result.state_hash)
        assert trainer.state_bytes() and next(trainer.model.parameters()).is_cuda
    assert hashes[0] == hashes[1], "same seed and data gave different states on the GPU"


@pytest.mark.parametrize("preset", ["small", "medium"])
def test_throughput_on_cuda(nccl_group, preset):
    """Prints tokens/s per preset (a figure for min_compute.yml, not a threshold)."""
    cfg, trainer = _trainer("diloco", preset, inner_steps=20, batch_size=16, seq_len=256)
    trainer.load(None)
    batch = _batches(cfg.seq_len, cfg.batch_size)
    trainer.run_round(0, batch)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = trainer.run_round(1, batch)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens = cfg.inner_steps * cfg.batch_size * cfg.seq_len
    print(
        f"\n{preset}_diloco_round_s {elapsed:.3f} s\n{preset}_tokens_per_s {tokens / elapsed:.0f} tokens/s"
        f"\n{preset}_peak_gpu_mem_gib {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        f"\n{preset}_contribution_bytes {len(result.contribution or b'')} bytes"
    )
    assert all(math.isfinite(x) for x in result.losses)
