"""template.engine.trainer: a round whose new global state is not finite (parameters or the strategy's
optimizer state) raises NonFiniteState instead of returning a hash, so the miner never reports it."""

from __future__ import annotations

import pytest
import torch

from template.config.run import TrainingConfig
from template.engine.exchange import InMemoryExchange
from template.engine.strategies.diloco import DiLoCo
from template.engine.trainer import NonFiniteState, Trainer

CFG = TrainingConfig(preset="tiny", inner_steps=2, batch_size=2, seq_len=16)


def _batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, 256, (CFG.batch_size, CFG.seq_len + 1), generator=g)


class Poisons(DiLoCo):
    """After an honest round, one value of the new state turns non-finite (as an overflow would)."""

    where = "param"

    def finish(self, trained):
        result = super().finish(trained)
        with torch.no_grad():
            if self.where == "param":
                next(iter(self.theta.values())).view(-1)[0] = float("inf")
            else:
                next(iter(self.outer.buffers.values())).view(-1)[-1] = float("nan")
        return result


def _trainer(strategy=None) -> Trainer:
    from bittensor.sp_core import Keypair

    key = Keypair.create_from_uri("//tensorswarm-finite")
    t = Trainer(
        CFG,
        rank=0,
        world_size=1,
        peers=[key.ss58_address],
        sign=key.sign,
        context="run/0",
        exchange=InMemoryExchange(1).bind(0),
    )
    if strategy is not None:
        t.strategy = strategy(t)
    t.load(None)
    return t


def test_an_honest_round_returns_its_hash():
    t = _trainer()
    assert len(t.run_round(0, _batch).state_hash) == 64


@pytest.mark.parametrize("where", ["param", "outer"])
def test_a_non_finite_state_is_never_hashed(where):
    Poisons.where = where
    t = _trainer(Poisons)
    with pytest.raises(NonFiniteState, match="not finite") as exc:
        t.run_round(0, _batch)
    assert ("param/" if where == "param" else "outer/") in str(exc.value)
    with pytest.raises(NonFiniteState):  # nor served later as this rank's state
        t.state_bytes()
    # The round manager's error path treats it as a crash, not a broken group: no "timed out"/"connection".
    assert isinstance(exc.value, RuntimeError)
    assert "timed out" not in str(exc.value).lower() and "connection" not in str(exc.value).lower()
