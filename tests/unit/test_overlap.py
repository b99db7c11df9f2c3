"""Overlapped diloco rounds (TrainingConfig.overlap): round r+1's inner steps start from θ_r while round r's
exchange and outer step run, and the agreed states stay a pure function of agreed data — θ_{r+1} is
``next_state(θ_r, round r's contributions)`` exactly as without overlap, so validators recompute it."""

from __future__ import annotations

import threading

import pytest
import torch

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.exchange import InMemoryExchange
from template.engine.outer_round import next_state
from template.engine.trainer import Trainer

CFG = TrainingConfig(preset="tiny", inner_steps=2, batch_size=2, seq_len=16, overlap=True)
WORLD = 3


def _batch(rank: int, round: int):
    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 * rank + 10 * round + step)
        return torch.randint(0, 256, (CFG.batch_size, CFG.seq_len + 1), generator=g)

    return batch


def _swarm(cfg: TrainingConfig) -> list[Trainer]:
    from bittensor.sp_core import Keypair

    keys = [Keypair.create_from_uri(f"//tensorswarm-overlap-{i}") for i in range(WORLD)]
    hub = InMemoryExchange(WORLD, timeout_s=60)
    trainers = []
    for i, key in enumerate(keys):
        t = Trainer(
            cfg,
            rank=i,
            world_size=WORLD,
            peers=[k.ss58_address for k in keys],
            sign=key.sign,
            context="run/0",
            exchange=hub.bind(i),
        )
        t.load(None)
        trainers.append(t)
    return trainers


def _each(trainers, fn):
    """fn(rank, trainer) on every rank at once (they meet in the exchange); results by rank."""
    out, errors = [None] * len(trainers), []

    def run(i, t):
        try:
            out[i] = fn(i, t)
        except BaseException as error:  # surfaced below, with the rank
            errors.append((i, error))

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(trainers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0][1]
    return out


def test_overlap_needs_diloco():
    with pytest.raises(ValueError, match="overlap needs the diloco strategy"):
        TrainingConfig(strategy="ddp", overlap=True)


def test_an_overlapped_round_starts_one_state_back_and_every_state_is_the_agreed_function():
    trainers = _swarm(CFG)
    state = trainers[0].state_bytes()
    starts = []
    for r in range(4):
        results = _each(trainers, lambda i, t, r=r: t.run_round(r, _batch(i, r)))
        assert len({res.state_hash for res in results}) == 1  # every rank computed the same θ_{r+1}
        starts.append(results[0].start_round)
        contributions = {res_rank: res.contribution for res_rank, res in enumerate(results)}
        included = [checkpoint.state_hash(c) for c in contributions.values()]  # sha256 of each payload
        state = next_state(CFG, state, contributions, included)
        assert checkpoint.state_hash(state) == results[0].state_hash, r
    # The first round after load starts from its own state; then each from the one before.
    assert starts == [0, 0, 1, 2]


def test_overlap_changes_the_trajectory_but_not_the_transition_rule():
    plain = _swarm(CFG.model_copy(update={"overlap": False}))
    overlapped = _swarm(CFG)
    hashes = {}
    for name, trainers in (("plain", plain), ("overlap", overlapped)):
        for r in range(3):
            results = _each(trainers, lambda i, t, r=r: t.run_round(r, _batch(i, r)))
        hashes[name] = results[0].state_hash
        assert [res.start_round for res in results] == ([2] * WORLD if name == "plain" else [1] * WORLD)
    assert hashes["plain"] != hashes["overlap"]  # round 2 trained from θ_1 instead of θ_2


def test_the_pipelined_phases_give_the_bits_of_the_sequential_rounds():
    """The miner's schedule: round r+1's inner phase in the foreground while round r's outer phase runs in a
    thread. Same bits as run_round, which runs the phases in turn."""
    sequential = _swarm(CFG)
    want = [_each(sequential, lambda i, t, r=r: t.run_round(r, _batch(i, r)))[0].state_hash for r in range(4)]

    def pipelined(i: int, t: Trainer) -> list[str]:
        got, pending, box = [], None, []
        for r in range(4):
            trained = t.train_round(r, _batch(i, r))
            if pending is not None:
                pending.join()
                got.append(box.pop())
            t.restart()  # the next inner phase starts from θ_r, before round r's outer step moves it
            box = []
            pending = threading.Thread(target=lambda tr=trained, b=box: b.append(t.finish_round(tr).state_hash))
            pending.start()
        pending.join()
        return [*got, box.pop()]

    assert _each(_swarm(CFG), pipelined) == [want] * WORLD


def test_phases_refuse_the_wrong_round():
    t = _swarm(CFG.model_copy(update={"inner_steps": 1}))[0]
    with pytest.raises(ValueError, match="next round to train is 0"):
        t.train_round(1, _batch(0, 1))
