"""The warm spare's warm-up (``template.engine.trainer.warm_up``): after it, a miner's first generation
loads no more of torch. Each case runs in a fresh interpreter, since this one has loaded everything."""

from __future__ import annotations

import json
import subprocess
import sys

from template.config.run import TrainingConfig

# A fresh interpreter builds the run's trainer on two in-memory ranks and trains and finishes one round, as a
# miner's first generation does; it prints the torch modules that loaded while it did.
_FIRST_ROUND = """
import json, sys, threading
import torch
from template.config.run import TrainingConfig
from template.engine.trainer import InMemoryExchange, Trainer, warm_up
if sys.argv[1] == "warm":
    warm_up()
before = set(sys.modules)
cfg = TrainingConfig.model_validate_json(sys.argv[2])
hub = InMemoryExchange(2)
def rank(r):
    t = Trainer(cfg, rank=r, world_size=2, peers=["a", "b"], sign=lambda m: bytes(64), context="c",
                verify=lambda *a: True, exchange=hub.bind(r))
    t.load(None)
    batch = torch.zeros(cfg.batch_size, cfg.seq_len + 1, dtype=torch.long)
    t.finish_round(t.train_round(0, lambda step: batch))
    t.state_bytes()
threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith("torch"))))
"""


def _loaded_during_first_round(mode: str, cfg: TrainingConfig) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_ROUND, mode, cfg.model_dump_json()], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_after_the_warm_up_a_first_round_loads_nothing_more_of_torch():
    cfg = TrainingConfig(inner_steps=2, batch_size=2, seq_len=16)  # the default run's strategy and compression
    cold = _loaded_during_first_round("cold", cfg)
    assert len(cold) > 20, cold  # the control: what a spare used to load with the group waiting on it
    assert _loaded_during_first_round("warm", cfg) == []
