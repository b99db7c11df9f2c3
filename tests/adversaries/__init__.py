"""Simulated dishonest miners for tests: never part of the production miner."""

from __future__ import annotations


def run_miner_with_init(init_process_group, argv: list[str]) -> int:
    """The production neurons/miner.py with ``torch.distributed.init_process_group`` replaced (a
    rendezvous saboteur's way in)."""
    import torch.distributed as dist

    dist.init_process_group = init_process_group
    from neurons import miner

    return miner.main(argv)
