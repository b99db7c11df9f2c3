"""Deterministic robust aggregation of pseudo-gradients, with a stated Byzantine guarantee.

Every rank receives the same n contributions (``{name: tensor}``, same names and shapes) and must
compute the bit-identical aggregate, whatever its CPU, thread count or torch build. Each contribution
is treated as one vector: the concatenation of its tensors flattened in sorted-name order.

**Guarantee.** A run tolerates a Byzantine fraction f ∈ [0, 0.5) (``TrainingConfig.byzantine_fraction``,
passed here as ``byzantine_fraction``). Of n accepted contributions, at most b(n) = ⌊f·n⌋
(:func:`template.config.run.tolerated_byzantine`, capped so that n ≥ 2b + 1) may be arbitrary — chosen by
colluders who know the honest ones, as long as they are finite (:func:`norm_check` drops the rest). With
f > 0 every aggregator here first scales each contribution down to at most M, the median of the n L2
norms, and scales its result down to at most M too. Then, with at most b(n) Byzantine contributions:

1. M lies between the smallest and the largest honest norm (at most b of the n ≥ 2b + 1 norms are
   Byzantine, so each middle value has an honest one on either side), so ‖aggregate‖ ≤ M ≤ the largest
   honest norm: however large or crafted the Byzantine vectors (a sign flip scaled just under the 10×
   norm screen, float32-max values), θ moves by no more than an honest step would.
2. :func:`trimmed_mean` drops k ≥ b(n) values at each end of every coordinate (:func:`trim_count`), so
   every kept value, hence every coordinate of the aggregate, lies within the honest (clipped) values'
   [min, max] at that coordinate, scaled towards 0: within [min(0, h_min), max(0, h_max)] of the honest
   contributions h. No coordinate is pushed beyond, or against, what every honest miner proposes.

With f = 0 (a trusted run) nothing is clipped and the aggregators are the plain statistics. The bound is
about magnitude and box, not direction within the box: attacks inside the honest spread (ALIE, inner-product
manipulation) still bias the result by up to the honest spread; ``scripts/bench/aggregators.py`` measures it.

How determinism is obtained (and why torch's reductions are avoided):

- Everything is computed in float64 and cast back to the inputs' dtype once, at the end.
- Only elementwise IEEE operations (+, −, ×, ÷, √, min), which are correctly rounded on every
  machine, are used on data. ``torch.sum``/``norm`` are not: their summation order depends on the
  SIMD width and the number of threads.
- Sums over the n contributions: per coordinate, the n values are first *sorted* and then added in
  that order. Sorted values do not depend on the order of the list, so every aggregator here is
  exactly permutation-invariant; callers should still pass contributions in a canonical order
  (by rank) so that logs and :func:`norm_check` indices agree across ranks.
- Sums over coordinates (norms): a fixed pairwise tree (fold the vector in half until one value is
  left), done with elementwise adds, then per-tensor results added in sorted-name order. Clip factors
  are Python floats (IEEE doubles) computed from those norms.
- A final ``+ 0.0`` turns −0.0 into +0.0, so equal-valued results have equal bits.

**Sparse contributions** (``topk``, ``topk_int8``, ``sparseloco``: each sender keeps its own support).
A contributor proposes 0 for every coordinate it did not send (what it holds back stays in its error
feedback for later rounds), so every aggregator sees n dense vectors and the guarantee above holds
unchanged: a coordinate no honest contributor sent stays 0 whatever b colluders put there, and one sent
by m honest contributors lies within [min(0, h_min), max(0, h_max)]. The price: :func:`trimmed_mean`
keeps a coordinate's signal only where more than k contributors sent it (k per end), so supports that
barely overlap are thinned; at the fractions here the largest pseudo-gradient coordinates are largely
shared across ranks (same model, same data distribution), and ``scripts/bench/train_compare.py``
measures the loss that results.

Inputs must be finite: run :func:`norm_check` first and drop what it flags (an aggregator refuses
NaN/Inf with :class:`AggregationError`).

Aggregators: :func:`mean`, :func:`median` (coordinate-wise), :func:`trimmed_mean`,
:func:`centered_clip`; :func:`aggregate` dispatches by name (:data:`AGGREGATORS`). The ones a run can
choose (``TrainingConfig.aggregator``) are :data:`AGGREGATOR_PARAMS`, with how each one's keyword
parameters come from the run config (:func:`run_params`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch

from template.config.run import TrainingConfig, tolerated_byzantine

__all__ = [
    "AGGREGATORS",
    "AGGREGATOR_PARAMS",
    "AggregationError",
    "Contribution",
    "aggregate",
    "centered_clip",
    "mean",
    "median",
    "median_norm",
    "norm_check",
    "run_params",
    "trim_count",
    "trimmed_mean",
    "vector_norm",
]

Contribution = Mapping[str, torch.Tensor]
CHUNK = 1 << 20  # coordinates per slab: bounds memory at n × CHUNK float64
Flat = dict[str, torch.Tensor]  # name -> float64 flat result


class AggregationError(ValueError):
    """Contributions that cannot be aggregated (empty, mismatched, non-finite, bad parameters)."""


def _validate(contribs: Sequence[Contribution]) -> list[str]:
    if len(contribs) == 0:
        raise AggregationError("no contributions to aggregate")
    names = sorted(contribs[0])
    for i, c in enumerate(contribs):
        if sorted(c) != names:
            raise AggregationError(f"contribution {i} has different parameter names")
        for name in names:
            t = c[name]
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise AggregationError(f"contribution {i}: {name} is not a floating-point tensor")
            if t.shape != contribs[0][name].shape:
                raise AggregationError(
                    f"contribution {i}: {name} has shape {list(t.shape)}, expected {list(contribs[0][name].shape)}"
                )
    return names


def _slabs(contribs: Sequence[Contribution], name: str, scales: Optional[torch.Tensor] = None):
    """Yield (start, stop, X) with X = float64 (n, stop-start), row i = contribution i's slab, times
    ``scales[i]`` when clip factors are given."""
    flats = [c[name].detach().to("cpu").reshape(-1) for c in contribs]
    numel = flats[0].numel()
    for start in range(0, numel, CHUNK):
        stop = min(numel, start + CHUNK)
        x = torch.stack([f[start:stop].to(torch.float64) for f in flats])
        if not bool(torch.isfinite(x).all()):
            raise AggregationError(f"{name}: non-finite values (run norm_check and drop flagged contributions)")
        yield start, stop, x if scales is None else x * scales[:, None]


def _held_slabs(contribs: Sequence[Contribution], name: str, scales: Optional[torch.Tensor]):
    """Yield (idx, length, X) per CHUNK slab: X = float64 (n, m) of the columns some contribution holds
    non-zero (non-finite values count as non-zero and are refused), ``idx`` their positions in the slab
    (None: every column, where gathering would cost more than it saves), times ``scales[i]`` when given."""
    flats = [c[name].detach().to("cpu").reshape(-1) for c in contribs]
    numel = flats[0].numel()
    for start in range(0, numel, CHUNK):
        stop = min(numel, start + CHUNK)
        held = flats[0][start:stop] != 0
        for f in flats[1:]:
            held |= f[start:stop] != 0
        idx = held.nonzero().squeeze(1)
        if idx.numel() * 2 > stop - start:
            idx = None
        x = torch.stack([(f[start:stop] if idx is None else f[start:stop][idx]).to(torch.float64) for f in flats])
        if not bool(torch.isfinite(x).all()):
            raise AggregationError(f"{name}: non-finite values (run norm_check and drop flagged contributions)")
        yield idx, stop - start, x if scales is None else x * scales[:, None]


def _scatter(idx: Optional[torch.Tensor], length: int, r: torch.Tensor) -> torch.Tensor:
    return r if idx is None else torch.zeros(length, dtype=torch.float64).index_put_((idx,), r)


def _columnwise(
    contribs: Sequence[Contribution], names: list[str], scales: Optional[torch.Tensor], fn: Callable
) -> Flat:
    """``fn`` (float64 (n, m) -> (m,)) applied per coordinate, where a coordinate that every contribution
    holds at 0 gives 0: it runs on the columns where some contribution is non-zero (:func:`_held_slabs`), and
    the rest are 0. Bit-identical to running it on every column, and far cheaper for sparse contributions,
    whose supports cover a few percent of the coordinates."""
    return {
        name: _cat([_scatter(idx, length, fn(x)) for idx, length, x in _held_slabs(contribs, name, scales)])
        for name in names
    }


def _sorted_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 (the contributions) in ascending order per coordinate: order-independent."""
    s = torch.sort(x, dim=0, stable=True).values
    acc = s[0].clone()
    for row in s[1:]:
        acc = acc + row
    return acc


def _tree_sum(v: torch.Tensor) -> float:
    """Sum of a 1-D float64 tensor by a fixed pairwise tree of elementwise adds."""
    v = v.reshape(-1)
    if v.numel() == 0:
        return 0.0
    while v.numel() > 1:
        half = v.numel() // 2
        folded = v[:half] + v[half : 2 * half]
        v = torch.cat([folded, v[2 * half :]]) if v.numel() % 2 else folded
    return float(v[0])


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)


def _finish(acc: Flat, contribs: Sequence[Contribution], names: list[str]) -> dict[str, torch.Tensor]:
    first = contribs[0]
    return {n: (acc[n] + 0.0).to(first[n].dtype).reshape(first[n].shape) for n in names}


def _flat_norm(flat: Mapping[str, torch.Tensor]) -> float:
    """Deterministic L2 norm of flat float tensors: per tensor (sorted names) and CHUNK slab, the squares
    of the slab's non-zero values (in float64) summed by a fixed tree; the per-slab sums are added in
    order. Zeros add nothing, so they are skipped: a sparse contribution costs its support, not its size."""
    total = 0.0
    for name in sorted(flat):
        x = flat[name].reshape(-1)
        for start in range(0, x.numel(), CHUNK):
            part = x[start : start + CHUNK]
            part = part[part != 0].to(torch.float64)  # NaN is non-zero: it still makes the norm NaN
            total += _tree_sum(part * part)
    return math.sqrt(total)


def vector_norm(c: Contribution) -> float:
    """Deterministic L2 norm of a contribution (all tensors, sorted-name order; float64)."""
    return _flat_norm({name: t.detach().to("cpu") for name, t in c.items()})


def _median_of(sorted_values: Sequence[float]) -> float:
    m = len(sorted_values)
    return sorted_values[m // 2] if m % 2 else (sorted_values[m // 2 - 1] + sorted_values[m // 2]) / 2


def median_norm(contribs: Sequence[Contribution]) -> float:
    """The median of the contributions' L2 norms (mean of the two middle ones for even n): the scale
    every contribution and the aggregate are clipped to when the run tolerates Byzantine ones."""
    _validate(contribs)
    norms = sorted(vector_norm(c) for c in contribs)
    if not all(math.isfinite(x) for x in norms):
        raise AggregationError("non-finite values (run norm_check and drop flagged contributions)")
    return _median_of(norms)


def _check_fraction(byzantine_fraction: float) -> None:
    if not (isinstance(byzantine_fraction, (int, float)) and 0 <= byzantine_fraction < 0.5):
        raise AggregationError(f"byzantine_fraction must be in [0, 0.5), got {byzantine_fraction!r}")


def _robust(
    contribs: Sequence[Contribution],
    byzantine_fraction: float,
    body: Callable[[list[str], Optional[torch.Tensor]], Flat],
) -> dict[str, torch.Tensor]:
    """Validate, clip the inputs to the median norm (f > 0), run ``body(names, scales)`` → float64
    flats, clip the result to the median norm (f > 0), cast back. See the module's guarantee."""
    names = _validate(contribs)
    _check_fraction(byzantine_fraction)
    if byzantine_fraction == 0:
        return _finish(body(names, None), contribs, names)
    norms = [vector_norm(c) for c in contribs]
    if not all(math.isfinite(x) for x in norms):
        raise AggregationError("non-finite values (run norm_check and drop flagged contributions)")
    cap = _median_of(sorted(norms))
    # x ≤ cap keeps its bits (factor exactly 1); above, the factor is one correctly rounded division.
    scales = torch.tensor([1.0 if x <= cap else cap / x for x in norms], dtype=torch.float64)
    out = body(names, scales)
    norm = _flat_norm(out)
    if norm > cap:  # a coordinate-wise statistic of vectors of norm ≤ M can itself exceed M
        factor = cap / norm
        out = {name: v * factor for name, v in out.items()}
    return _finish(out, contribs, names)


def mean(contribs: Sequence[Contribution], byzantine_fraction: float = 0.0) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean. Not robust per coordinate (one contribution moves it by up to M/n), but
    with ``byzantine_fraction`` > 0 its norm is bounded by the median norm like every aggregator here."""
    n = len(contribs)

    def body(names: list[str], scales: Optional[torch.Tensor]) -> Flat:
        return _columnwise(contribs, names, scales, lambda x: _sorted_sum(x) / n)

    return _robust(contribs, byzantine_fraction, body)


def _median_rows(s: torch.Tensor) -> torch.Tensor:
    """Median over dim 0 of values already sorted along dim 0 (mean of the two middles if n is even)."""
    n = s.shape[0]
    if n % 2:
        return s[n // 2].clone()
    return (s[n // 2 - 1] + s[n // 2]) / 2


def median(contribs: Sequence[Contribution], byzantine_fraction: float = 0.0) -> dict[str, torch.Tensor]:
    """Coordinate-wise median (for even n, the mean of the two middle values)."""

    def body(names: list[str], scales: Optional[torch.Tensor]) -> Flat:
        return _columnwise(contribs, names, scales, lambda x: _median_rows(torch.sort(x, dim=0, stable=True).values))

    return _robust(contribs, byzantine_fraction, body)


def trim_count(n: int, trim_fraction: float, byzantine_fraction: float = 0.0) -> int:
    """How many values :func:`trimmed_mean` drops at *each* end of every coordinate.

    k = max(⌊trim_fraction · n⌋, b(n)) with b(n) = ⌊byzantine_fraction · n⌋ (the run's tolerated
    Byzantine count), raised to 1 when trim_fraction > 0 and n ≥ 3 (so at n ≥ 3 a single outlier is
    always dropped), and capped at (n − 1) // 2 so at least one value remains.
    """
    if not (0 <= trim_fraction < 0.5):
        raise AggregationError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    _check_fraction(byzantine_fraction)
    k = max(math.floor(trim_fraction * n), tolerated_byzantine(n, byzantine_fraction))
    if trim_fraction > 0 and n >= 3:
        k = max(k, 1)
    return min(k, (n - 1) // 2)


def trimmed_mean(
    contribs: Sequence[Contribution], trim_fraction: float = 0.2, byzantine_fraction: float = 0.0
) -> dict[str, torch.Tensor]:
    """Per coordinate: drop the k largest and k smallest values (:func:`trim_count`), average the rest.

    With at most k arbitrary contributions, every kept value — hence the result — lies within the
    honest contributions' [min, max] at that coordinate (after the clip when ``byzantine_fraction`` > 0).
    """
    n = len(contribs)

    def body(names: list[str], scales: Optional[torch.Tensor]) -> Flat:
        k = trim_count(n, trim_fraction, byzantine_fraction)

        def trimmed(x: torch.Tensor) -> torch.Tensor:
            kept = torch.sort(x, dim=0, stable=True).values[k : n - k]
            acc = kept[0].clone()
            for row in kept[1:]:  # already sorted: add in ascending order
                acc = acc + row
            return acc / (n - 2 * k)

        return _columnwise(contribs, names, scales, trimmed)

    return _robust(contribs, byzantine_fraction, body)


def centered_clip(
    contribs: Sequence[Contribution],
    tau: float,
    iters: int = 3,
    center: Contribution | None = None,
    byzantine_fraction: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Centered clipping (Karimireddy, He & Jaggi, 2021).

    v₀ = ``center`` or the coordinate-wise median; then ``iters`` times
    v ← v + (1/n) Σ_i (x_i − v) · min(1, τ / ‖x_i − v‖), with whole-vector L2 norms.
    Each contribution moves v by at most τ/n per iteration, however large it is.
    Holds the n contributions in float64 while it iterates (8·n bytes per coordinate some contribution
    holds non-zero, when started from the median; 8·n·numel from a given center).
    """
    n = len(contribs)

    def body(names: list[str], scales: Optional[torch.Tensor]) -> Flat:
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise AggregationError(f"tau must be a positive finite number, got {tau!r}")
        if not (isinstance(iters, int) and iters >= 0):
            raise AggregationError(f"iters must be a non-negative int, got {iters!r}")
        # Materialise the inputs once as float64 (the norm pass and the update pass both need them). From the
        # median, a column every contribution holds at 0 stays 0 (each difference there is 0): only the
        # columns some contribution holds are kept, and the norms are of those (zeros add nothing).
        if center is None:
            held = {name: list(_held_slabs(contribs, name, scales)) for name in names}
            xs = {name: [x for _, _, x in held[name]] for name in names}
            v = {name: [_median_rows(torch.sort(x, dim=0, stable=True).values) for x in xs[name]] for name in names}
        else:
            held = None
            xs = {name: [x for _, _, x in _slabs(contribs, name, scales)] for name in names}
            _validate([contribs[0], center])
            v = {}
            for name in names:
                flat = center[name].detach().to("cpu", torch.float64).reshape(-1)
                if not bool(torch.isfinite(flat).all()):
                    raise AggregationError(f"center: {name} has non-finite values")
                v[name] = [flat[s : s + CHUNK].clone() for s in range(0, flat.numel(), CHUNK)]

        for _ in range(iters):
            # Pass 1: ‖x_i − v‖ for every i, summed tensor by tensor in sorted-name order.
            sq = [0.0] * n
            for name in names:
                for x, vv in zip(xs[name], v[name]):
                    d = x - vv
                    for i in range(n):
                        sq[i] += _tree_sum(d[i] * d[i])
            scale = torch.tensor([1.0 if s == 0.0 else min(1.0, tau / math.sqrt(s)) for s in sq], dtype=torch.float64)
            # Pass 2: v += mean of the clipped differences (sorted per coordinate, as in mean()).
            for name in names:
                v[name] = [vv + _sorted_sum((x - vv) * scale[:, None]) / n for x, vv in zip(xs[name], v[name])]
        if held is None:
            return {name: _cat(v[name]) for name in names}
        return {name: _cat([_scatter(i, m, vv) for (i, m, _), vv in zip(held[name], v[name])]) for name in names}

    return _robust(contribs, byzantine_fraction, body)


def norm_check(contribs: Sequence[Contribution], max_ratio: float) -> list[int]:
    """Indices (ascending) of contributions to drop: a non-finite value, or an L2 norm greater than
    ``max_ratio`` × the median norm of the finite ones. (If that median is 0, every non-zero
    contribution is flagged.)"""
    if not (isinstance(max_ratio, (int, float)) and max_ratio >= 1):
        raise AggregationError(f"max_ratio must be ≥ 1, got {max_ratio!r}")
    norms: list[float | None] = []
    for c in contribs:
        norm = vector_norm(c)  # a non-finite value makes it NaN or inf (float32 squares cannot overflow float64)
        norms.append(norm if math.isfinite(norm) else None)
    finite_norms = sorted(x for x in norms if x is not None)
    if not finite_norms:
        return list(range(len(contribs)))
    med = _median_of(finite_norms)
    return [i for i, x in enumerate(norms) if x is None or x > max_ratio * med]


AGGREGATORS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "mean": mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "centered_clip": centered_clip,
}

# The aggregators a run config may name, each with its keyword parameters taken from the config. Adding
# one: its function in AGGREGATORS, a line here, and its name in the config's accepted names. Every one
# gets the run's Byzantine fraction: the norm clip (and the trim) of the module's guarantee follow it.
AGGREGATOR_PARAMS: dict[str, Callable[[TrainingConfig], dict[str, Any]]] = {
    "mean": lambda cfg: {"byzantine_fraction": cfg.byzantine_fraction},
    "trimmed_mean": lambda cfg: {"trim_fraction": cfg.trim_fraction, "byzantine_fraction": cfg.byzantine_fraction},
    "centered_clip": lambda cfg: {"tau": cfg.clip_tau, "byzantine_fraction": cfg.byzantine_fraction},
}


def run_params(cfg: TrainingConfig) -> dict[str, Any]:
    """The keyword parameters of the run's aggregator (``cfg.aggregator``), from the run config."""
    return AGGREGATOR_PARAMS[cfg.aggregator](cfg)


def aggregate(name: str, contribs: Sequence[Contribution], **params: Any) -> dict[str, torch.Tensor]:
    """Run aggregator ``name`` (one of :data:`AGGREGATORS`) with its keyword ``params``, e.g.
    ``aggregate("trimmed_mean", cs, trim_fraction=0.2, byzantine_fraction=1/3)`` or
    ``aggregate("centered_clip", cs, tau=1.0)``; ``aggregate(cfg.aggregator, cs, **run_params(cfg))`` is
    what a diloco round runs."""
    try:
        fn = AGGREGATORS[name]
    except KeyError:
        raise AggregationError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}") from None
    try:
        inspect.signature(fn).bind(contribs, **params)
    except TypeError as e:  # a wrong or missing keyword for this aggregator
        raise AggregationError(f"{name}: {e}") from None
    return fn(contribs, **params)
