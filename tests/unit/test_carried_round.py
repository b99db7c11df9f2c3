"""A round carried across a re-form (``Trainer.adopt``; the miner's ``RoundManager.carried``): a generation that
breaks in a round's outer phase leaves each survivor's inner phase to the next generation, which starts the round
from the same agreed state. Adopted, the payload is signed again for the new generation's context and rank, and the
round ends where it would have ended had the first generation finished it."""

from __future__ import annotations

import pytest
import torch
from bittensor.sp_core import Keypair

from template.config.run import TrainingConfig
from template.engine.exchange import InMemoryExchange
from template.engine.trainer import Trainer
from tests.unit.test_overlap import _each  # every rank at once (they meet in the exchange)

CFG = TrainingConfig(preset="tiny", inner_steps=2, batch_size=2, seq_len=16)
KEYS = [Keypair.create_from_uri(f"//tensorswarm-carry-{i}") for i in range(3)]


def _batch(key: Keypair):
    def batch(step: int) -> torch.Tensor:  # the hotkey's samples, whatever its rank
        g = torch.Generator().manual_seed(int.from_bytes(key.public_key[:4], "little") + step)
        return torch.randint(0, 256, (CFG.batch_size, CFG.seq_len + 1), generator=g)

    return batch


def _generation(order: list[Keypair], context: str) -> list[Trainer]:
    hub = InMemoryExchange(len(order), timeout_s=60)
    trainers = []
    for rank, key in enumerate(order):
        t = Trainer(
            CFG,
            rank=rank,
            world_size=len(order),
            peers=[k.ss58_address for k in order],
            sign=key.sign,
            context=context,
            exchange=hub.bind(rank),
        )
        t.load(None)
        trainers.append(t)
    return trainers


def test_an_adopted_round_ends_where_the_broken_generation_would_have_ended():
    first = _generation(KEYS, "run/0")
    trained = _each(first, lambda i, t: t.train_round(0, _batch(KEYS[i])))
    finished = _each(first, lambda i, t: t.finish_round(trained[i]))  # what the first generation would have agreed
    # The next generation: same members and start state, another context.
    second = _generation(KEYS, "run/1")
    results = _each(second, lambda i, t: t.finish_round(t.adopt(trained[i])))
    assert all(r.dropped == {} for r in results), [r.dropped for r in results]
    assert {r.state_hash for r in results} == {finished[0].state_hash}
    assert [r.losses for r in results] == [r.losses for r in finished]
    # What compression held back of the carried Δ is sent later, as it would have been after training here.
    for t, mine in zip(second, trained):
        held = t.strategy.ef.residual
        assert held.keys() == mine.residual.keys() and held and any(bool(v.abs().sum()) for v in held.values())
        assert all(torch.equal(held[n], mine.residual[n]) for n in held)


def test_adopted_under_new_ranks_every_contribution_counts_and_unsigned_again_none_would():
    first = _generation(KEYS, "run/0")
    trained = dict(zip((k.ss58_address for k in KEYS), _each(first, lambda i, t: t.train_round(0, _batch(KEYS[i])))))
    order = [KEYS[2], KEYS[0], KEYS[1]]  # the re-formed generation ranks its members otherwise
    mine = lambda i: trained[order[i].ss58_address]
    results = _each(_generation(order, "run/1"), lambda i, t: t.finish_round(t.adopt(mine(i))))
    assert all(r.dropped == {} for r in results), [r.dropped for r in results]
    assert len({r.state_hash for r in results}) == 1
    # The control: the old signatures (context run/0, the old ranks) are refused by the new generation.
    stale = _each(_generation(order, "run/1"), lambda i, t: t.finish_round(mine(i)))
    assert all(len(r.dropped) == 3 for r in stale), [r.dropped for r in stale]


def test_a_round_of_another_start_state_or_number_is_not_adopted():
    (t0,) = _generation(KEYS[:1], "run/0")
    trained = t0.train_round(0, _batch(KEYS[0]))
    t0.finish_round(trained)
    t0.restart()
    later = t0.train_round(1, _batch(KEYS[0]))  # round 1, from round 1's state
    (fresh,) = _generation(KEYS[:1], "run/1")  # at round 0
    with pytest.raises(ValueError, match="not this trainer's next"):
        fresh.adopt(later)
    fresh.adopt(trained)
    with pytest.raises(ValueError, match="not this trainer's next"):
        fresh.adopt(trained)  # round 0 is already taken
