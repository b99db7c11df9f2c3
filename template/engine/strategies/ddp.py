"""``ddp`` (trusted swarms): H AdamW steps on gradients averaged across ranks every step (one flat
all-reduce per step). The global optimizer state is the AdamW moments, identical on every rank."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from template.engine.exchange import collective
from template.engine.strategies.base import RoundResult, Strategy

__all__ = ["DDP"]


class DDP(Strategy):
    def run_round(self, round: int, batch: Callable[[int], torch.Tensor]) -> RoundResult:
        t = self.trainer
        params = list(t.model.parameters())
        sent = 0

        def all_reduce_grads() -> None:
            # One flat buffer, one all-reduce per step. Every rank ends with the same bits (the
            # backend reduces each element once and distributes the result), so the identical
            # AdamW step keeps θ identical everywhere.
            nonlocal sent
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            with collective("gradient all-reduce"):
                dist.all_reduce(flat)
            flat /= t.world_size
            sent += flat.numel() * flat.element_size()
            offset = 0
            for p, g in zip(params, grads):
                p.grad = flat[offset : offset + g.numel()].view_as(g)
                offset += g.numel()

        losses = t.inner_steps(batch, all_reduce_grads)
        t.inner_step += self.cfg.inner_steps
        return RoundResult(round, losses, "", bytes_sent=sent)
