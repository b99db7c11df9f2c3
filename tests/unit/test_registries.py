"""The engine's registries agree with the names the run config accepts: every strategy, compression scheme
and aggregator a ``TrainingConfig`` can name has an implementation, and every implementation offered to
runs can be named. Each entry is also exercised once (a strategy's state format, an aggregator's
parameters from the config)."""

from __future__ import annotations

import inspect
from typing import get_args

import pytest
import torch

from template.config import run
from template.config.run import TrainingConfig
from template.engine.aggregation import AGGREGATOR_PARAMS, AGGREGATORS, aggregate, run_params
from template.engine.compression import SCHEME_PARTS, SCHEMES, CompressedTensor, compress
from template.engine.state import StateFormat
from template.engine.strategies import STRATEGIES, Strategy


def test_strategies_match_the_config():
    assert set(STRATEGIES) == set(get_args(run.Strategy))
    assert all(issubclass(cls, Strategy) for cls in STRATEGIES.values())


def test_compression_schemes_match_the_config():
    assert set(SCHEMES) == set(SCHEME_PARTS) == set(get_args(run.Compression))
    fields = {f for f in CompressedTensor.__dataclass_fields__ if f != "shape"}
    assert all(parts and set(parts) <= fields for parts in SCHEME_PARTS.values())


def test_aggregators_match_the_config():
    assert set(AGGREGATOR_PARAMS) == set(get_args(run.Aggregator))
    assert set(AGGREGATOR_PARAMS) <= set(AGGREGATORS)


@pytest.mark.parametrize("name", get_args(run.Aggregator))
def test_each_aggregator_takes_its_parameters_from_the_config(name):
    cfg = TrainingConfig(aggregator=name, trim_fraction=0.25, clip_tau=2.5, byzantine_fraction=0.2)
    params = run_params(cfg)
    assert params == AGGREGATOR_PARAMS[name](cfg)
    # Every aggregator also gets the run's Byzantine fraction (the trim and the norm clip follow it).
    assert set(params) <= {"trim_fraction", "tau", "byzantine_fraction"} and params["byzantine_fraction"] == 0.2
    assert all(v in (0.25, 2.5, 0.2) for v in params.values())
    contribs = [{"w": torch.full((3,), float(i))} for i in range(5)]
    inspect.signature(AGGREGATORS[name]).bind(contribs, **params)  # the keywords are the function's
    out = aggregate(name, contribs, **params)
    assert out["w"].shape == (3,) and bool(torch.isfinite(out["w"]).all())


@pytest.mark.parametrize("name", get_args(run.Strategy))
def test_each_strategy_defines_a_state_format(name):
    cfg = TrainingConfig(strategy=name)
    fmt = StateFormat(cfg)
    state = fmt.parse(fmt.initial())
    extra = state.extra()
    assert extra and set(extra) == set(STRATEGIES[name].zero_state(fmt.spec))
    assert all(float(t.abs().sum()) == 0.0 for t in extra.values())
    cap = STRATEGIES[name].contribution_bytes(cfg, fmt.spec)
    zeros = {n: torch.zeros(s) for n, s in fmt.spec.items()}
    # Only a strategy that exchanges contributions has a cap, and it is an honest contribution's size.
    assert cap in (0, len(compress(zeros, cfg.compression, fraction=cfg.topk_fraction).to_bytes()))
    assert (cap > 0) == (name == "diloco")
