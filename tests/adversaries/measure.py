"""What the Byzantine acceptance test and ``scripts/bench/byzantine.py`` measure, in one place: the held-out
loss of a global state, and a swarm's rounds replayed in this process.

:func:`heldout_loss` evaluates canonical state bytes (:func:`template.engine.state.load_model`) on held-out
windows drawn with a seed of the caller's (:func:`template.data.sampling.heldout_offsets`), so every run
of a comparison is scored on the same windows, which no miner trained on.

:func:`replay` trains ranks as threads of this process over the production :class:`Trainer`, with the
all-gather replaced by :class:`~template.engine.exchange.InMemoryExchange` (everything else — inner
steps, compression, screening, robust aggregation, the outer step — is production code). Batches are
the real miners' (a pure function of seed, round, hotkey, step), so replaying the honest hotkeys of a
swarm for R rounds computes what an honest-only swarm of them computes in R rounds without a membership
change; aggregation is permutation-invariant, so their rank order does not matter. On one machine, with
torch's default thread count (as the miners run; float results depend on it), it is the same state bit
for bit (``scripts/bench/byzantine.py`` checks it, ``baseline_replay_matches``). Signing keys are
throwaway ones: nothing in the state depends on them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.data.sampling import batch_offsets, heldout_offsets, windows_to_tensor
from template.engine.state import load_model
from template.wire.dataset import DatasetManifest

__all__ = ["heldout_loss", "replay"]

EVAL_SEED = 0x0B12  # held-out windows of the comparison (validators draw theirs from their own seeds)


@torch.no_grad()
def heldout_loss(
    cfg: TrainingConfig,
    state: Optional[bytes],
    manifest: DatasetManifest,
    read: Callable[[int], bytes],
    *,
    count: int = 256,
    seed: int = EVAL_SEED,
) -> float:
    """Mean next-byte cross-entropy (nats) of the global state ``state`` (None: the seed init) on
    ``count`` held-out windows of ``cfg.seq_len`` drawn with ``seed``."""
    model, _round, _hash = load_model(cfg, state)
    model.eval()
    windows = windows_to_tensor(
        read, heldout_offsets(manifest, seed=seed, round=0, count=count, seq_len=cfg.seq_len), cfg.seq_len
    )
    total = 0.0
    for chunk in windows.split(64):
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        total += float(loss) * chunk.shape[0]
    return total / windows.shape[0]


def replay(
    cfg: TrainingConfig,
    manifest: DatasetManifest,
    read: Callable[[int], bytes],
    hotkeys: Sequence[str],
    rounds: int,
    *,
    strategies: Optional[Sequence[Optional[type]]] = None,
    context: str = "replay/0",
) -> tuple[bytes, list[dict[int, str]]]:
    """Train ``hotkeys`` (one rank each, in this order) for ``rounds`` rounds from the seed state.
    ``strategies[i]``, if given and not None, is rank i's strategy class instead of the run's (e.g. a
    test adversary). Returns the final global state's bytes (every rank must agree on it) and, per
    round, rank 0's dropped contributions ``{rank: why}``."""
    from bittensor.sp_core import Keypair

    from template.engine.exchange import InMemoryExchange
    from template.engine.strategies import STRATEGIES
    from template.engine.trainer import Trainer

    n = len(hotkeys)
    keys = [Keypair.create_from_uri(f"//tensorswarm-replay-{i}") for i in range(n)]
    hub = InMemoryExchange(n, timeout_s=600)
    trainers = []
    honest = STRATEGIES[cfg.strategy]
    for i in range(n):
        cls = strategies[i] if strategies is not None and strategies[i] is not None else honest
        STRATEGIES[cfg.strategy] = cls  # only while this rank's Trainer picks its strategy
        try:
            trainers.append(
                Trainer(
                    cfg,
                    rank=i,
                    world_size=n,
                    peers=[k.ss58_address for k in keys],
                    sign=keys[i].sign,
                    context=context,
                    exchange=hub.bind(i),
                )
            )
        finally:
            STRATEGIES[cfg.strategy] = honest
    hashes: list[list[str]] = [[] for _ in range(n)]
    dropped: list[dict[int, str]] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            t = trainers[i]
            t.load(None)
            for r in range(rounds):

                def batch(step: int, r=r) -> torch.Tensor:
                    offsets = batch_offsets(
                        manifest,
                        seed=cfg.seed,
                        round=r,
                        hotkey=hotkeys[i],
                        step=step,
                        batch_size=cfg.batch_size,
                        seq_len=cfg.seq_len,
                    )
                    return windows_to_tensor(read, offsets, cfg.seq_len)

                result = t.run_round(r, batch)
                hashes[i].append(result.state_hash)
                if i == 0:
                    dropped.append(dict(result.dropped))
        except BaseException as error:  # surface it, and free the others from the barrier
            errors.append(error)
            hub.barrier.abort()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    if any(h != hashes[0] for h in hashes):
        raise RuntimeError("replayed ranks disagree on the global state")
    return trainers[0].state_bytes(), dropped
