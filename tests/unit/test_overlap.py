"""Overlapped diloco rounds (TrainingConfig.overlap).

delayed: round r+1's inner steps start from θ_r while round r's exchange and outer step run, and the agreed
states stay a pure function of agreed data — θ_{r+1} is ``next_state(θ_r, round r's contributions)`` exactly
as without overlap, so validators recompute it.

speculative: round r+1 starts from the θ_{r+1} a rank computed from what it received, while the agreement
runs; the agreed states are those of a run without overlap, also when the agreement overrules what a rank
received (it recomputes θ and trains the next round again)."""

from __future__ import annotations

import threading

import pytest
import torch

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.exchange import InMemoryExchange
from template.engine.outer_round import next_state
from template.engine.trainer import Trainer

CFG = TrainingConfig(preset="tiny", inner_steps=2, batch_size=2, seq_len=16, overlap="delayed")
WORLD = 3


def _batch(rank: int, round: int):
    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 * rank + 10 * round + step)
        return torch.randint(0, 256, (CFG.batch_size, CFG.seq_len + 1), generator=g)

    return batch


def _swarm(cfg: TrainingConfig, agreement=None) -> list[Trainer]:
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
            agreement=agreement,
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
        TrainingConfig(strategy="ddp", overlap="speculative")


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
    plain = _swarm(CFG.model_copy(update={"overlap": "none"}))
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


class LeavesOut:
    """The decision every rank follows: include each sender's majority hash, except ``excluded`` (sender
    rank) in ``round`` — as the orchestrator does for a sender most members did not receive."""

    def __init__(self, round: int, excluded: int):
        self.round, self.excluded = round, excluded

    def decide(self, round, received):
        from template.engine.agreement import AgreedSet

        n = len(received)
        included = [
            None if (round == self.round and r == self.excluded) or e is None else e[0] for r, e in enumerate(received)
        ]
        reasons = ["left out" if sha is None else None for sha in included]
        return AgreedSet(included, [[] for _ in range(n)], reasons)


@pytest.mark.parametrize("agreement", [None, LeavesOut(round=1, excluded=2)], ids=["stands", "overruled"])
def test_speculative_rounds_have_the_bits_of_rounds_without_overlap(agreement):
    """run_round (both phases in turn) and the miner's pipeline (round r's agreement in a thread while
    round r+1 trains from the speculative θ; a round trained from an overruled θ is trained again)."""
    plain = _swarm(CFG.model_copy(update={"overlap": "none"}), agreement)
    want = [_each(plain, lambda i, t, r=r: t.run_round(r, _batch(i, r))) for r in range(3)]
    spec = _swarm(CFG.model_copy(update={"overlap": "speculative"}), agreement)
    got = [_each(spec, lambda i, t, r=r: t.run_round(r, _batch(i, r))) for r in range(3)]
    assert [[x.state_hash for x in rs] for rs in got] == [[x.state_hash for x in rs] for rs in want]
    assert [x.overruled for x in got[1]] == [agreement is not None] * WORLD
    assert all(x.start_round == r for r, rs in enumerate(got) for x in rs)

    def pipelined(i: int, t: Trainer) -> tuple[list[str], int]:
        hashes, pending, retrained, box = [], None, 0, []
        for r in range(3):
            while True:
                trained = t.train_round(r, _batch(i, r))
                if pending is None:
                    break
                pending.join()
                result = box.pop()
                hashes.append(result.state_hash)
                pending = None
                if not result.overruled:
                    break
                t.restart()  # θ was recomputed: train this round again from it
                t.retrain(r)
                retrained += 1
            speculation = t.speculate_round(trained)
            t.restart()
            box = []
            pending = threading.Thread(target=lambda s=speculation, b=box: b.append(t.confirm_round(s)))
            pending.start()
        pending.join()
        return [*hashes, box.pop().state_hash], retrained

    out = _each(_swarm(CFG.model_copy(update={"overlap": "speculative"}), agreement), pipelined)
    assert [n for _, n in out] == [1 if agreement is not None else 0] * WORLD
    assert len({tuple(h) for h, _ in out}) == 1  # every rank computed the same states
    hashes = out[0][0]
    if agreement is None:
        assert hashes == [rs[0].state_hash for rs in want]
    else:
        # Up to the overruled round the same bits; the retrained round then starts from the right θ, but its
        # rank-local inner AdamW moments and error-feedback residual carry the discarded attempt.
        assert hashes[:2] == [rs[0].state_hash for rs in want[:2]]
