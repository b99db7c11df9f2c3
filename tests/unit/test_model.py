"""template.engine.model: shapes, loss at init, deterministic init, it learns, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

from template.config.presets import PRESETS, Preset, get
from template.engine.checkpoint import hash_state
from template.engine.model import GPT, init_model, param_count

TINY = get("tiny")


def random_bytes(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=g)


def test_forward_shapes():
    model = init_model(TINY, seed=0)
    idx = random_bytes(3, TINY.seq_len, 1)
    logits, loss = model(idx)
    assert logits.shape == (3, TINY.seq_len, TINY.vocab_size)
    assert loss is None
    logits, loss = model(idx[:, :10], idx[:, 1:11])
    assert logits.shape == (3, 10, 256)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_sequence_longer_than_preset_is_refused():
    model = init_model(TINY, seed=0)
    with pytest.raises(ValueError, match="seq_len"):
        model(random_bytes(1, TINY.seq_len + 1, 0))


def test_causal():
    # Changing a later byte must not change earlier logits.
    model = init_model(TINY, seed=0).eval()
    a = random_bytes(1, 32, 2)
    b = a.clone()
    b[0, 20] = (b[0, 20] + 1) % 256
    la, _ = model(a)
    lb, _ = model(b)
    assert torch.equal(la[0, :20], lb[0, :20])
    assert not torch.equal(la[0, 20:], lb[0, 20:])


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_loss_at_init_is_uniform(name):
    # Small init (std 0.02) → near-zero logits → cross-entropy ≈ ln(256) ≈ 5.545 on random bytes.
    preset = get(name)
    model = init_model(preset, seed=0)
    x = random_bytes(4, preset.seq_len + 1, 3)
    with torch.no_grad():
        _, loss = model(x[:, :-1], x[:, 1:])
    assert abs(loss.item() - math.log(256)) < 0.15


def test_init_is_deterministic_and_leaves_global_rng_alone():
    rng = torch.get_rng_state()
    a = init_model(TINY, seed=7)
    b = init_model(TINY, seed=7)
    c = init_model(TINY, seed=8)
    assert torch.equal(rng, torch.get_rng_state())
    assert hash_state(a.state_dict()) == hash_state(b.state_dict())
    assert hash_state(a.state_dict()) != hash_state(c.state_dict())


def test_lm_head_is_tied_and_state_holds_each_weight_once():
    model = init_model(TINY, seed=0)
    names = list(model.state_dict())
    assert len(names) == len(set(names)) == len(list(model.named_parameters()))
    assert not any("lm_head" in n for n in names)
    model.zero_grad()
    _, loss = model(random_bytes(2, 16, 0), random_bytes(2, 16, 1))
    loss.backward()
    # The embedding gets gradient from both the input lookup and the output projection.
    assert model.transformer.wte.weight.grad.abs().sum() > 0


def test_a_few_adamw_steps_learn_a_repeated_pattern():
    torch.manual_seed(0)  # AdamW itself is deterministic; dropout is 0 in tiny
    model = init_model(TINY, seed=0)
    pattern = torch.tensor(list(b"tensorswarm! "), dtype=torch.long)
    row = pattern.repeat(TINY.seq_len // len(pattern) + 2)[: TINY.seq_len + 1]
    batch = torch.stack([row.roll(-s)[: TINY.seq_len + 1] for s in range(4)])
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    with torch.no_grad():
        _, first = model(x, y)
    for _ in range(40):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, last = model(x, y)
    assert last.item() < 0.5 * first.item()


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_built_param_count_matches_formula(name):
    preset = get(name)
    assert init_model(preset, seed=0).num_params() == param_count(preset)


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_counts_in_expected_ballpark(name):
    # Formula only (medium/large are too big to build in a unit test). approx_params ignores biases
    # and LayerNorms: the exact count is within 2% of it.
    preset = get(name)
    exact = param_count(preset)
    assert abs(exact - preset.approx_params) <= 0.02 * preset.approx_params
    expected_millions = {"tiny": (0.1, 0.2), "small": (4, 6), "medium": (80, 90), "large": (290, 320)}[name]
    lo, hi = expected_millions
    assert lo * 1e6 <= exact <= hi * 1e6


def test_bad_preset_refused():
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPT(Preset("odd", d_model=30, n_layer=1, n_head=4, seq_len=8))


def test_per_row_losses_average_to_the_mean_loss():
    """The audit's per-window held-out gains (row_losses) and its mean losses (mean_loss) measure the
    same cross-entropy: over rows of one length their mean is the batch mean, in any chunking."""
    from template.validator.checks.losses import mean_loss, row_losses

    model = GPT(Preset("rows", d_model=16, n_layer=1, n_head=2, seq_len=12), seed=1).eval()
    xy = torch.randint(0, 256, (7, 13), generator=torch.Generator().manual_seed(2))
    rows = row_losses(model, xy, 3, torch.device("cpu"))
    assert len(rows) == 7 and len(set(rows)) == 7
    assert sum(rows) / 7 == pytest.approx(mean_loss(model, xy, 3, torch.device("cpu")), rel=1e-5)
    with torch.no_grad():
        _, first = model(xy[:1, :-1], xy[:1, 1:])
    assert rows[0] == pytest.approx(float(first), rel=1e-5)
