"""template.engine.outer: the Nesterov outer step by hand, agreement with torch's SGD, state round trip."""

from __future__ import annotations

import pytest
import torch

from template.config.presets import get
from template.engine import checkpoint
from template.engine.model import init_model
from template.engine.outer import OuterOptimizer


def test_nesterov_step_matches_hand_computation():
    # lr = 0.5, μ = 0.9, values exact in binary so the arithmetic below is exact too.
    theta = {"w": torch.tensor([1.0, -2.0, 0.5])}
    opt = OuterOptimizer(lr=0.5, momentum=0.9)
    d1 = {"w": torch.tensor([0.5, 1.0, -0.25])}
    opt.step(theta, d1)
    # m1 = Δ1; θ1 = θ0 − lr·(Δ1 + μ·m1) = θ0 − 0.5·1.9·Δ1
    m1 = [0.5, 1.0, -0.25]
    t1 = [1.0 - 0.5 * 1.9 * 0.5, -2.0 - 0.5 * 1.9 * 1.0, 0.5 + 0.5 * 1.9 * 0.25]
    assert opt.buffers["w"].tolist() == pytest.approx(m1, abs=0)
    assert theta["w"].tolist() == pytest.approx(t1, rel=1e-7)
    d2 = {"w": torch.tensor([-1.0, 0.25, 0.0])}
    opt.step(theta, d2)
    # m2 = μ·m1 + Δ2; θ2 = θ1 − lr·(Δ2 + μ·m2)
    m2 = [0.9 * a + b for a, b in zip(m1, [-1.0, 0.25, 0.0])]
    t2 = [t - 0.5 * (d + 0.9 * m) for t, d, m in zip(t1, [-1.0, 0.25, 0.0], m2)]
    assert opt.buffers["w"].tolist() == pytest.approx(m2, rel=1e-7)
    assert theta["w"].tolist() == pytest.approx(t2, rel=1e-6)
    assert opt.step_count == 2


def test_plain_momentum():
    theta = {"w": torch.tensor([1.0])}
    opt = OuterOptimizer(lr=0.5, momentum=0.5, nesterov=False)
    opt.step(theta, {"w": torch.tensor([1.0])})  # m = 1, θ = 1 − 0.5
    opt.step(theta, {"w": torch.tensor([1.0])})  # m = 1.5, θ = 0.5 − 0.75
    assert theta["w"].item() == -0.25


def test_agrees_with_torch_sgd_nesterov():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(50, generator=g)
    deltas = [torch.randn(50, generator=g) for _ in range(5)]
    ours = {"w": p0.clone()}
    opt = OuterOptimizer(lr=0.7, momentum=0.9)
    ref = torch.nn.Parameter(p0.clone())
    sgd = torch.optim.SGD([ref], lr=0.7, momentum=0.9, nesterov=True)
    for d in deltas:
        opt.step(ours, {"w": d})
        ref.grad = d.clone()
        sgd.step()
    assert torch.allclose(ours["w"], ref.detach(), rtol=1e-6, atol=1e-6)


def test_updates_model_parameters_in_place():
    model = init_model(get("tiny"), seed=0)
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    delta = {k: torch.full_like(v, 0.01) for k, v in params.items()}
    OuterOptimizer(lr=1.0, momentum=0.0).step(params, delta)
    for k, p in model.named_parameters():
        assert torch.allclose(p.detach(), before[k] - 0.01)


def test_state_round_trip_continues_identically():
    """A joiner restoring (θ, momentum) from the checkpointed global state takes the same next step."""
    g = torch.Generator().manual_seed(1)
    theta = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    opt = OuterOptimizer(lr=0.7, momentum=0.9)
    for _ in range(3):
        opt.step(theta, {k: torch.randn(v.shape, generator=g) for k, v in theta.items()})
    state = opt.state_dict()
    # Through the canonical checkpoint bytes, as the global state travels.
    flat = {**{f"param/{k}": v for k, v in theta.items()}, **{f"outer/{k}": v for k, v in state["buffers"].items()}}
    meta = {k: state[k] for k in ("lr", "momentum", "nesterov", "step")}
    loaded, meta2 = checkpoint.loads(checkpoint.dumps(flat, meta))
    joiner = OuterOptimizer()
    joiner.load_state_dict({**meta2, "buffers": {k[6:]: v for k, v in loaded.items() if k.startswith("outer/")}})
    theta2 = {k[6:]: v.clone() for k, v in loaded.items() if k.startswith("param/")}
    assert joiner.state_dict()["step"] == 3 and joiner.lr == 0.7
    d = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    opt.step(theta, d)
    joiner.step(theta2, d)
    assert all(torch.equal(theta[k], theta2[k]) for k in theta)
    assert all(torch.equal(opt.buffers[k], joiner.buffers[k]) for k in theta)


def test_refusals():
    with pytest.raises(ValueError):
        OuterOptimizer(lr=0)
    with pytest.raises(ValueError):
        OuterOptimizer(momentum=1.0)
    opt = OuterOptimizer()
    with pytest.raises(ValueError, match="names"):
        opt.step({"a": torch.zeros(2)}, {"b": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"a": torch.zeros(2)}, {"a": torch.zeros(3)})
    with pytest.raises(ValueError):
        opt.load_state_dict({"lr": 0.7})
