"""``fsdp`` (trusted, memory-bound swarms): FSDP2 (``torch.distributed.fsdp.fully_shard``, which works on
CPU with gloo). Parameters and AdamW moments are sharded along dim 0 across ranks, each rank holding ~1/N
of both; the global state is their full tensors, gathered when it is serialized."""

from __future__ import annotations

from collections.abc import Callable

import torch

from template.engine.exchange import collective
from template.engine.strategies.base import RoundResult, Strategy

__all__ = ["FSDP"]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class FSDP(Strategy):
    def __init__(self, trainer):
        super().__init__(trainer)
        self._mesh = None  # built on the first load (it needs the process group), then reused

    def prepare(self, model: torch.nn.Module) -> None:
        self._shard(model)

    def _shard(self, model: torch.nn.Module) -> None:
        # FSDP2 shards each parameter along dim 0 by local chunking (no communication): every rank
        # holds the same full state here, so each keeps its own chunk. One unit per block plus the
        # root (embeddings, final LayerNorm), as in the FSDP2 examples.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self._mesh is None:
            self._mesh = init_device_mesh(self.trainer.device.type, (self.trainer.world_size,))
        for block in model.transformer.h:
            fully_shard(block, mesh=self._mesh)
        fully_shard(model, mesh=self._mesh)

    def like(self, param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """``full`` placed like ``param``: this rank's shard of it when ``param`` is sharded."""
        full = full.to(self.trainer.device, torch.float32)
        if hasattr(param, "placements"):
            from torch.distributed.tensor import distribute_tensor

            # src_data_rank=None: every rank already holds the full tensor, slice locally.
            return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        return full.clone()

    def full(self, t: torch.Tensor) -> torch.Tensor:
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().to("cpu")

    def local(self, t: torch.Tensor) -> torch.Tensor:
        return _local(t)

    def run_round(self, round: int, batch: Callable[[int], torch.Tensor]) -> RoundResult:
        t = self.trainer
        # Forward, backward and the grad-norm clip all communicate inside FSDP2.
        with collective("fsdp step"):
            losses = t.inner_steps(batch)
        t.inner_step += self.cfg.inner_steps
        return RoundResult(round, losses, "", bytes_sent=self.cfg.inner_steps * self.bytes_per_step())

    def bytes_per_step(self) -> int:
        """What one step feeds into FSDP2's collectives (it issues them internally, so this counts its
        schedule): the all-gather of this rank's shards in forward and again in backward for the blocks,
        whose parameters are freed after forward, and the reduce-scatter of the full gradients."""
        model, n = self.trainer.model, self.trainer.world_size
        shard = sum(_local(p).numel() * 4 for p in model.parameters())
        shard_blocks = sum(_local(p).numel() * 4 for p in model.transformer.h.parameters())
        # Reduce-scatter input: each full gradient, dim 0 padded to a multiple of the world size.
        full = sum(-(-p.shape[0] // n) * n * (p.numel() // p.shape[0]) * 4 for p in model.parameters())
        return shard + shard_blocks + full
