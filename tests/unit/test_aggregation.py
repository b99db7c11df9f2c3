"""template.engine.aggregation: robustness bounds against one bad contribution, the Byzantine guarantee
(trim ≥ ⌊f·n⌋, clip to the median norm) against 2 colluders of 6, determinism, norm_check."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from template.config.run import TrainingConfig, tolerated_byzantine
from template.engine import checkpoint
from template.engine.aggregation import (
    AggregationError,
    aggregate,
    centered_clip,
    mean,
    median,
    median_norm,
    norm_check,
    run_params,
    trim_count,
    trimmed_mean,
    vector_norm,
)
from template.engine.screening import NORM_MAX_RATIO

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {"w": (20, 10), "b": (10,)}


def vec(c) -> torch.Tensor:
    """A contribution as one float64 vector (sorted names), for checking bounds."""
    return torch.cat([c[n].double().reshape(-1) for n in sorted(c)])


def honest_set(n: int = 5, seed: int = 0, spread: float = 0.1):
    """n contributions near a common direction g (coordinates ~N(0, 2²), ‖g‖ ≈ 29): g + spread·noise."""
    g = torch.Generator().manual_seed(seed)
    common = {k: torch.randn(*s, generator=g) * 2 for k, s in SHAPES.items()}
    return [{k: common[k] + spread * torch.randn(*s, generator=g) for k, s in SHAPES.items()} for _ in range(n)]


ATTACKS = {
    "scaled x1000": lambda h: {k: v * 1000 for k, v in h[0].items()},
    "sign flipped": lambda h: {k: -v for k, v in h[0].items()},
    "sign flipped x10": lambda h: {k: -10 * v for k, v in h[0].items()},
}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("position", [0, 3, 5])
def test_trimmed_mean_is_bounded_by_the_honest_range(attack, position):
    """Bound: with n = 6 contributions (5 honest, 1 arbitrary) and trim_fraction = 0.2, k = 1 value
    is dropped at each end of every coordinate. With at most k bad values, each kept value lies
    between the smallest and the largest honest value at that coordinate, hence so does their mean;
    the honest mean does too. So per coordinate j:
        |TM_j − mean_honest_j| ≤ max_honest_j − min_honest_j
    (and in L2, ‖TM − mean_honest‖ ≤ ‖range_honest‖), whatever the bad contribution is.
    The plain mean violates the same bound by far, which shows the check can fail."""
    honest = honest_set()
    contribs = list(honest)
    contribs.insert(position, ATTACKS[attack](honest))
    H = torch.stack([vec(h) for h in honest])
    mean_h, spread = H.mean(0), H.max(0).values - H.min(0).values
    tm = vec(trimmed_mean(contribs, trim_fraction=0.2))
    slack = 1e-5 * (1 + H.abs().max())  # float32 output rounding
    assert bool(((tm - mean_h).abs() <= spread + slack).all())
    assert float((tm - mean_h).norm()) <= float(spread.norm()) + 1e-4
    m = vec(mean(contribs))
    assert float((m - mean_h).norm()) > 2 * float(spread.norm())


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("position", [0, 5])
def test_centered_clip_is_bounded_by_tau_over_n(attack, position):
    """Bound (n = 6: 5 honest + 1 arbitrary b; h̄ = honest mean; S = max_h ‖x_h − h̄‖;
    R = ‖per-coordinate honest range‖; e_t = ‖v_t − h̄‖).

    Start: v₀ = coordinate-wise median lies in the honest range at every coordinate, so e₀ ≤ R.
    Step: if every honest ‖x_h − v_t‖ ≤ τ, honest terms are not clipped and
        v_{t+1} − h̄ = (v_t − h̄)/n + clip_τ(b − v_t)/n   ⇒   e_{t+1} ≤ (e_t + τ)/n,
    so e_t ≤ e₀/nᵗ + τ/(n−1) ≤ R + τ/(n−1), and ‖x_h − v_t‖ ≤ S + e_t ≤ τ holds at every step
    when τ ≥ (S + R)·(n−1)/(n−2) (= 1.25·(S + R) here; we use τ = 2·(S + R)). Hence after T = 3
    iterations, whatever b is:
        ‖CC − h̄‖ ≤ R/n³ + τ/(n−1).
    The plain mean moves far beyond it."""
    honest = honest_set()
    contribs = list(honest)
    contribs.insert(position, ATTACKS[attack](honest))
    n = len(contribs)
    H = torch.stack([vec(h) for h in honest])
    mean_h = H.mean(0)
    S = float((H - mean_h).norm(dim=1).max())
    R = float((H.max(0).values - H.min(0).values).norm())
    tau = 2 * (S + R)
    bound = R / n**3 + tau / (n - 1)
    cc = vec(centered_clip(contribs, tau=tau, iters=3))
    assert float((cc - mean_h).norm()) <= bound + 1e-4
    assert float((vec(mean(contribs)) - mean_h).norm()) > 2 * bound


def test_without_an_attacker_robust_aggregators_stay_close_to_the_mean():
    honest = honest_set(n=7, seed=1)
    m = vec(mean(honest))
    spread = float(torch.stack([vec(h) for h in honest]).std(0).norm())
    for agg in (trimmed_mean(honest, 0.2), centered_clip(honest, tau=100.0), median(honest)):
        assert float((vec(agg) - m).norm()) < spread
    # τ above every distance: nothing is clipped, so centered clipping converges to the mean.
    assert torch.allclose(vec(centered_clip(honest, tau=1e6, iters=20)), m, atol=1e-5)


def test_mean_and_median_values():
    cs = [
        {"x": torch.tensor([1.0, 10.0])},
        {"x": torch.tensor([2.0, -5.0])},
        {"x": torch.tensor([4.0, 0.0])},
        {"x": torch.tensor([100.0, 1.0])},
    ]
    assert mean(cs)["x"].tolist() == [26.75, 1.5]
    assert median(cs)["x"].tolist() == [3.0, 0.5]
    assert trimmed_mean(cs, 0.25)["x"].tolist() == [3.0, 0.5]  # k = 1 of 4: middle two
    assert trimmed_mean(cs, 0.0)["x"].tolist() == [26.75, 1.5]


def test_trim_count_rule():
    assert trim_count(3, 0.1) == 1  # raised to 1: at n ≥ 3 one outlier is always dropped
    assert trim_count(5, 0.2) == 1
    assert trim_count(10, 0.2) == 2
    assert trim_count(10, 0.0) == 0
    assert trim_count(2, 0.4) == 0  # nothing can be trimmed from 2
    assert trim_count(4, 0.49) == 1  # capped at (n − 1) // 2: one value is always kept
    with pytest.raises(AggregationError):
        trim_count(5, 0.5)


def test_tolerated_byzantine_count():
    third = 1 / 3
    assert [tolerated_byzantine(n, third) for n in range(1, 10)] == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert tolerated_byzantine(6, third) == 2  # 6 · (1/3), not 1.999…
    assert tolerated_byzantine(100, 0.29) == 29  # 0.29 · 100 is 28.999999999999996 in floating point
    assert tolerated_byzantine(2, 0.49) == 0 and tolerated_byzantine(4, 0.49) == 1  # n ≥ 2b + 1 always
    assert tolerated_byzantine(0, third) == 0 and tolerated_byzantine(10, 0.0) == 0
    for bad in (0.5, -0.1, float("nan")):
        with pytest.raises(ValueError):
            tolerated_byzantine(6, bad)
    assert TrainingConfig().byzantine_fraction == third
    with pytest.raises(ValueError):
        TrainingConfig(byzantine_fraction=0.5)


def test_trim_count_removes_at_least_the_tolerated_byzantine_count():
    third = 1 / 3
    # Before: one value per end for 3 ≤ n ≤ 9, so 2 colluders of 6 kept a value in every coordinate.
    assert trim_count(6, 0.2) == 1
    assert trim_count(6, 0.2, third) == 2
    assert [trim_count(n, 0.2, third) for n in range(1, 11)] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert trim_count(10, 0.4, third) == 4  # the larger of the two fractions
    assert trim_count(2, 0.2, third) == 0  # nothing can be trimmed from 2 (generations need 3 ranks)
    for n in range(1, 40):
        k = trim_count(n, 0.0, third)
        assert k >= tolerated_byzantine(n, third) and n - 2 * k >= 1
    with pytest.raises(AggregationError, match="byzantine_fraction"):
        trim_count(6, 0.2, 0.5)
    # The run config hands the aggregator its fraction.
    assert run_params(TrainingConfig())["byzantine_fraction"] == third


def test_clip_scales_each_contribution_to_the_median_norm():
    d = torch.tensor([0.6, 0.8])  # unit vector
    cs = [{"x": d * 1.0}, {"x": d * 2.0}, {"x": d * 100.0}]
    assert median_norm(cs) == pytest.approx(2.0)
    # Trusted run: the plain mean; tolerant run: 100·d enters as 2·d, so the mean is (1 + 2 + 2)/3 · d.
    assert torch.allclose(mean(cs)["x"], d * 103 / 3)
    assert torch.allclose(mean(cs, byzantine_fraction=0.2)["x"], d * 5 / 3)
    # Below the median nothing changes, bit for bit.
    small = [{"x": d * 1.0}, {"x": d * 1.0}, {"x": d * 1.0}]
    assert torch.equal(mean(small, byzantine_fraction=0.2)["x"], mean(small)["x"])
    # The aggregate itself is clipped: a coordinate-wise median of vectors of norm √2 has norm √3.
    e = [
        {"x": torch.tensor([1.0, 1.0, 0.0])},
        {"x": torch.tensor([1.0, 0.0, 1.0])},
        {"x": torch.tensor([0.0, 1.0, 1.0])},
    ]
    assert median(e)["x"].tolist() == [1.0, 1.0, 1.0]
    assert vector_norm(median(e, byzantine_fraction=0.2)) == pytest.approx(math.sqrt(2), rel=1e-6)
    with pytest.raises(AggregationError, match="byzantine_fraction"):
        mean(cs, byzantine_fraction=0.5)


# 2 colluders of 6 (4 honest), each attack crafted from the honest contributions it knows.
def _honest_mean(h):
    return {k: torch.stack([c[k] for c in h]).mean(0) for k in SHAPES}


def _scaled_flip(h, bad: int):
    """−mean, scaled so its norm is just under the screen: 0.99 × 10 × the median norm."""
    m = _honest_mean(h)
    target = 0.99 * NORM_MAX_RATIO * sorted(vector_norm(c) for c in h)[len(h) // 2]
    return {k: -v * (target / vector_norm(m)) for k, v in m.items()}


def _alie(h, bad: int, z: float = 1.0):
    """A little is enough (Baruch et al., 2019): mean − z·σ per coordinate."""
    return {k: torch.stack([c[k] for c in h]).mean(0) - z * torch.stack([c[k] for c in h]).std(0) for k in SHAPES}


def _ipm(h, bad: int, eps: float = 0.5):
    """Inner-product manipulation (Xie et al., 2020): −ε·mean."""
    return {k: -eps * v for k, v in _honest_mean(h).items()}


def _noise(h, bad: int):
    g = torch.Generator().manual_seed(100 + bad)
    x = {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}
    target = sum(vector_norm(c) for c in h) / len(h)
    return {k: v * (target / vector_norm(x)) for k, v in x.items()}


def _f32_max(h, bad: int):
    return {k: -torch.sign(v) * torch.finfo(torch.float32).max for k, v in _honest_mean(h).items()}


BYZANTINE = {"scaled sign flip": _scaled_flip, "alie": _alie, "ipm": _ipm, "noise": _noise, "float32 max": _f32_max}
GUARANTEED = {
    "trimmed_mean": {"trim_fraction": 0.2},
    "mean": {},
    "median": {},
    "centered_clip": {"tau": 1.0},
}


def _two_of_six(attack: str, positions=(1, 4)):
    honest = honest_set(n=4, seed=3, spread=0.5)
    contribs = list(honest)
    for i, pos in enumerate(positions):
        contribs.insert(pos, BYZANTINE[attack](honest, i))
    return honest, contribs


@pytest.mark.parametrize("attack", list(BYZANTINE))
@pytest.mark.parametrize("name", list(GUARANTEED))
def test_guarantee_against_two_colluders_of_six(attack, name):
    """The module's guarantee with f = 1/3, n = 6, b(6) = 2 Byzantine: the aggregate's norm is at most
    the median norm M (which lies within the honest norms), and with the trimmed mean every coordinate
    lies within the honest values' range, stretched to include 0 (the clip scales towards 0)."""
    honest, contribs = _two_of_six(attack)
    out = aggregate(name, contribs, **GUARANTEED[name], byzantine_fraction=1 / 3)
    assert all(bool(torch.isfinite(t).all()) for t in out.values())
    m, honest_norms = median_norm(contribs), [vector_norm(h) for h in honest]
    assert min(honest_norms) <= m <= max(honest_norms)
    assert vector_norm(out) <= m * (1 + 1e-6)
    if name == "trimmed_mean":
        H = torch.stack([vec(h) for h in honest])
        lo, hi = H.min(0).values.clamp(max=0), H.max(0).values.clamp(min=0)
        slack = 1e-6 * (1 + H.abs().max())
        agg = vec(out)
        assert bool(((agg >= lo - slack) & (agg <= hi + slack)).all()), attack


@pytest.mark.parametrize("attack", ["scaled sign flip", "float32 max"])
def test_without_the_guarantee_the_same_attacks_win(attack):
    """What the test above would catch: today's trim (one value per end at n = 6) and no clip let two
    colluders pull coordinates outside the honest range and blow up the norm."""
    honest, contribs = _two_of_six(attack)
    H = torch.stack([vec(h) for h in honest])
    old = vec(trimmed_mean(contribs, trim_fraction=0.2))
    outside = (old < H.min(0).values.clamp(max=0) - 1e-3) | (old > H.max(0).values.clamp(min=0) + 1e-3)
    assert bool(outside.any())
    assert float(old.norm()) > 1.5 * median_norm(contribs) or not bool(torch.isfinite(old).all())


def test_centered_clip_start_and_center():
    cs = honest_set(n=5, seed=2)
    assert torch.equal(vec(centered_clip(cs, tau=1.0, iters=0)), vec(median(cs)))
    zero = {k: torch.zeros(s) for k, s in SHAPES.items()}
    assert torch.equal(vec(centered_clip(cs, tau=1.0, iters=0, center=zero)), vec(zero))
    # One iteration from 0 with a tiny τ: every term clipped to norm τ, so ‖v₁‖ ≤ τ.
    assert float(vec(centered_clip(cs, tau=1e-3, iters=1, center=zero)).norm()) <= 1e-3 * (1 + 1e-6)


def test_output_dtype_and_shapes_follow_the_inputs():
    cs = [{k: v.to(torch.bfloat16) for k, v in c.items()} for c in honest_set()]
    for name in ("mean", "median", "trimmed_mean", "centered_clip"):
        params = {"tau": 1.0} if name == "centered_clip" else {}
        out = aggregate(name, cs, **params)
        assert list(out) == ["b", "w"]
        assert all(out[k].dtype == torch.bfloat16 and out[k].shape == SHAPES[k] for k in SHAPES)


def test_refusals():
    cs = honest_set()
    with pytest.raises(AggregationError, match="no contributions"):
        mean([])
    with pytest.raises(AggregationError, match="shape"):
        mean([cs[0], {"w": torch.zeros(10, 20), "b": torch.zeros(10)}])
    with pytest.raises(AggregationError, match="names"):
        mean([cs[0], {"w": torch.zeros(20, 10)}])
    bad = {k: v.clone() for k, v in cs[0].items()}
    bad["w"][0, 0] = float("nan")
    for name, params in (("mean", {}), ("trimmed_mean", {}), ("centered_clip", {"tau": 1.0})):
        with pytest.raises(AggregationError, match="non-finite"):
            aggregate(name, cs + [bad], **params)
    with pytest.raises(AggregationError, match="unknown aggregator"):
        aggregate("krum", cs)
    with pytest.raises(AggregationError, match="centered_clip"):
        aggregate("centered_clip", cs)  # tau is required
    with pytest.raises(AggregationError, match="tau"):
        centered_clip(cs, tau=float("inf"))


def test_norm_check_flags_scaled_and_non_finite():
    honest = honest_set(n=6)
    big = {k: v * 1000 for k, v in honest[1].items()}
    nan = {k: v.clone() for k, v in honest[2].items()}
    nan["b"][3] = float("nan")
    inf = {k: v.clone() for k, v in honest[3].items()}
    inf["w"][1, 1] = float("inf")
    contribs = [honest[0], big, honest[4], nan, honest[5], inf]
    assert norm_check(contribs, max_ratio=10) == [1, 3, 5]
    assert norm_check(honest, max_ratio=10) == []
    assert norm_check([nan], max_ratio=10) == [0]
    with pytest.raises(AggregationError):
        norm_check(honest, max_ratio=0.5)
    assert math.isclose(vector_norm(honest[0]), float(vec(honest[0]).norm()), rel_tol=1e-12)


# --- determinism ---------------------------------------------------------------------------------

CASES = {
    "mean": {},
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.2},
    "centered_clip": {"tau": 5.0, "iters": 3},
}


def big_contributions(n: int = 7):
    # Large enough (120k + 400 values) that torch would split its own reductions across threads.
    g = torch.Generator().manual_seed(42)
    return [{"w": torch.randn(300, 400, generator=g), "b": torch.randn(400, generator=g) * (i + 1)} for i in range(n)]


def digests(contribs) -> dict[str, str]:
    return {name: checkpoint.hash_state(aggregate(name, contribs, **p)) for name, p in CASES.items()}


def test_bit_identical_across_calls_and_orders():
    cs = big_contributions()
    first = digests(cs)
    assert digests(cs) == first
    # Sorted per-coordinate sums make every aggregator exactly permutation-invariant.
    assert digests(list(reversed(cs))) == first
    assert digests(cs[3:] + cs[:3]) == first
    assert len(set(first.values())) == len(first)


def test_bit_identical_in_another_process(tmp_path):
    """Another rank: a fresh interpreter with a different thread count, same input bytes."""
    cs = big_contributions()
    path = tmp_path / "inputs.bin"
    checkpoint.save(path, {f"{i}/{k}": v for i, c in enumerate(cs) for k, v in c.items()})
    code = f"""
import json, torch
torch.set_num_threads(1 if torch.get_num_threads() > 1 else 4)
from template.engine import checkpoint
from tests.unit.test_aggregation import digests
flat, _ = checkpoint.load({str(path)!r})
cs = [{{k: flat[f"{{i}}/{{k}}"] for k in ("w", "b")}} for i in range({len(cs)})]
print(json.dumps(digests(cs)))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == digests(cs)


def test_sparse_contributions_a_coordinate_is_its_senders_proposal_and_zero_elsewhere():
    """Sparse contributions (sparseloco) aggregate as the zero-filled vectors their senders decode
    to: where no honest rank sent a coordinate, colluders cannot move it; where honest ranks sent it,
    the result stays within their values and 0; where most ranks sent it, their signal survives."""
    from template.engine.compression import compress

    n, b = 6, 2
    g = torch.Generator().manual_seed(7)
    shared = torch.randn(4096, generator=g)  # the common direction every honest rank sees
    honest = []
    for r in range(n - b):
        local = shared + 0.3 * torch.randn(4096, generator=g)
        honest.append(compress({"x": local}, "sparseloco", fraction=0.05, chunk_size=4096).decompress())
    supports = [h["x"] != 0 for h in honest]
    nobody = ~torch.stack(supports).any(dim=0)
    everyone = torch.stack(supports).all(dim=0)
    attack = torch.zeros(4096)
    attack[nobody] = 50.0  # colluders push exactly where no honest rank sent anything
    attack[everyone] = -50.0  # and against the coordinates everyone agrees on
    contribs = honest + [{"x": attack.clone()} for _ in range(b)]
    out = trimmed_mean(contribs, trim_fraction=0.2, byzantine_fraction=1 / 3)["x"]
    assert bool((out[nobody] == 0).all())
    hs = torch.stack([h["x"] for h in honest])
    lo, hi = hs.min(dim=0).values.clamp(max=0), hs.max(dim=0).values.clamp(min=0)
    assert bool(((out >= lo - 1e-6) & (out <= hi + 1e-6)).all())
    assert int(everyone.sum()) > 50
    assert bool((torch.sign(out[everyone]) == torch.sign(shared[everyone])).all())


def test_sparse_columns_are_aggregated_bit_identically_to_every_column(monkeypatch):
    """The coordinate-wise aggregators run only on the columns some contribution holds non-zero: the bits
    are those of the statistic over every column (the reference below), across slabs, for supports that
    differ per sender, negative zeros, and a tensor whose support is dense."""
    from template.engine import aggregation

    g = torch.Generator().manual_seed(11)
    n, numel = 5, aggregation.CHUNK + 4099  # two slabs
    contribs = []
    for i in range(n):
        values = torch.randn(numel, generator=g) * (1 + i)
        sparse = values * (torch.rand(numel, generator=g) < 0.02)
        sparse[torch.rand(numel, generator=g) < 0.01] = -0.0
        contribs.append({"s": sparse, "d": torch.randn(300, generator=g)})
    calls = [
        lambda cs: mean(cs),
        lambda cs: median(cs, byzantine_fraction=0.2),
        lambda cs: trimmed_mean(cs, 0.2),
        lambda cs: trimmed_mean(cs, 0.2, byzantine_fraction=0.4),
    ]
    fast = [{k: checkpoint.state_hash(checkpoint.dumps({k: v})) for k, v in f(contribs).items()} for f in calls]

    def every_column(cs, names, scales, fn):
        return {name: torch.cat([fn(x) for _, _, x in aggregation._slabs(cs, name, scales)]) for name in names}

    monkeypatch.setattr(aggregation, "_columnwise", every_column)
    reference = [{k: checkpoint.state_hash(checkpoint.dumps({k: v})) for k, v in f(contribs).items()} for f in calls]
    assert fast == reference
    assert int((mean(contribs)["s"] != 0).sum()) < numel // 5  # the support really is sparse


def test_centered_clip_of_sparse_contributions_runs_on_their_support(monkeypatch):
    """From the median, centered clipping keeps a column every contribution holds at 0 at 0, so it runs on
    the held columns only: the same result as on every column (to rounding: its norms add the same squares
    in another order), zero off the support, and the same bits in any order of the contributions."""
    from template.engine import aggregation

    g = torch.Generator().manual_seed(13)
    numel = aggregation.CHUNK + 777
    contribs = [
        {"s": torch.randn(numel, generator=g) * (torch.rand(numel, generator=g) < 0.03), "d": torch.randn(50)}
        for _ in range(5)
    ]
    sparse = centered_clip(contribs, tau=1.0, byzantine_fraction=0.2)
    assert checkpoint.dumps(sparse) == checkpoint.dumps(centered_clip(contribs[::-1], tau=1.0, byzantine_fraction=0.2))
    held = torch.stack([c["s"] != 0 for c in contribs]).any(dim=0)
    assert bool((sparse["s"][~held] == 0).all()) and int(held.sum()) < numel // 5

    def dense_held(cs, name, scales):  # every column, as _slabs gives them
        for start, stop, x in aggregation._slabs(cs, name, scales):
            yield None, stop - start, x

    monkeypatch.setattr(aggregation, "_held_slabs", dense_held)
    dense = centered_clip(contribs, tau=1.0, byzantine_fraction=0.2)
    for k in sparse:
        assert torch.allclose(sparse[k], dense[k], rtol=1e-6, atol=1e-9), k
