"""Deterministic robust aggregation of pseudo-gradients.

Every rank receives the same n contributions (``{name: tensor}``, same names and shapes) and must
compute the bit-identical aggregate, whatever its CPU, thread count or torch build. Each contribution
is treated as one vector: the concatenation of its tensors flattened in sorted-name order.

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
  left), done with elementwise adds, then per-tensor results added in sorted-name order.
- A final ``+ 0.0`` turns −0.0 into +0.0, so equal-valued results have equal bits.

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
from typing import Any

import torch

from template.config.run import TrainingConfig

__all__ = [
    "AGGREGATORS",
    "AGGREGATOR_PARAMS",
    "AggregationError",
    "Contribution",
    "aggregate",
    "centered_clip",
    "mean",
    "median",
    "norm_check",
    "run_params",
    "trim_count",
    "trimmed_mean",
    "vector_norm",
]

Contribution = Mapping[str, torch.Tensor]
CHUNK = 1 << 20  # coordinates per slab: bounds memory at n × CHUNK float64


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


def _slabs(contribs: Sequence[Contribution], name: str):
    """Yield (start, stop, X) with X = float64 (n, stop-start), row i = contribution i's slab."""
    flats = [c[name].detach().to("cpu").reshape(-1) for c in contribs]
    numel = flats[0].numel()
    for start in range(0, numel, CHUNK):
        stop = min(numel, start + CHUNK)
        x = torch.stack([f[start:stop].to(torch.float64) for f in flats])
        if not bool(torch.isfinite(x).all()):
            raise AggregationError(f"{name}: non-finite values (run norm_check and drop flagged contributions)")
        yield start, stop, x


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


def _finish(
    acc: dict[str, torch.Tensor], contribs: Sequence[Contribution], names: list[str]
) -> dict[str, torch.Tensor]:
    first = contribs[0]
    return {n: (acc[n] + 0.0).to(first[n].dtype).reshape(first[n].shape) for n in names}


def vector_norm(c: Contribution) -> float:
    """Deterministic L2 norm of a contribution (all tensors, sorted-name order; float64)."""
    total = 0.0
    for name in sorted(c):
        x = c[name].detach().to("cpu", torch.float64).reshape(-1)
        for start in range(0, x.numel(), CHUNK):
            part = x[start : start + CHUNK]
            total += _tree_sum(part * part)
    return math.sqrt(total)


def mean(contribs: Sequence[Contribution]) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean (not robust: one contribution can move it arbitrarily)."""
    names = _validate(contribs)
    n = len(contribs)
    out = {}
    for name in names:
        parts = [_sorted_sum(x) / n for _, _, x in _slabs(contribs, name)]
        out[name] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return _finish(out, contribs, names)


def _median_rows(s: torch.Tensor) -> torch.Tensor:
    """Median over dim 0 of values already sorted along dim 0 (mean of the two middles if n is even)."""
    n = s.shape[0]
    if n % 2:
        return s[n // 2].clone()
    return (s[n // 2 - 1] + s[n // 2]) / 2


def median(contribs: Sequence[Contribution]) -> dict[str, torch.Tensor]:
    """Coordinate-wise median (for even n, the mean of the two middle values)."""
    names = _validate(contribs)
    out = {}
    for name in names:
        parts = [_median_rows(torch.sort(x, dim=0, stable=True).values) for _, _, x in _slabs(contribs, name)]
        out[name] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return _finish(out, contribs, names)


def trim_count(n: int, trim_fraction: float) -> int:
    """How many values :func:`trimmed_mean` drops at *each* end of every coordinate.

    k = floor(trim_fraction · n), raised to 1 when trim_fraction > 0 and n ≥ 3 (so at n ≥ 3 a single
    outlier is always dropped), and capped at (n − 1) // 2 so at least one value remains.
    """
    if not (0 <= trim_fraction < 0.5):
        raise AggregationError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    k = math.floor(trim_fraction * n)
    if trim_fraction > 0 and n >= 3:
        k = max(k, 1)
    return min(k, (n - 1) // 2)


def trimmed_mean(contribs: Sequence[Contribution], trim_fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """Per coordinate: drop the k largest and k smallest values (:func:`trim_count`), average the rest.

    With at most k arbitrary contributions, every kept value — hence the result — lies within the
    honest contributions' [min, max] at that coordinate.
    """
    names = _validate(contribs)
    n = len(contribs)
    k = trim_count(n, trim_fraction)
    out = {}
    for name in names:
        parts = []
        for _, _, x in _slabs(contribs, name):
            kept = torch.sort(x, dim=0, stable=True).values[k : n - k]
            acc = kept[0].clone()
            for row in kept[1:]:  # already sorted: add in ascending order
                acc = acc + row
            parts.append(acc / (n - 2 * k))
        out[name] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return _finish(out, contribs, names)


def centered_clip(
    contribs: Sequence[Contribution],
    tau: float,
    iters: int = 3,
    center: Contribution | None = None,
) -> dict[str, torch.Tensor]:
    """Centered clipping (Karimireddy, He & Jaggi, 2021).

    v₀ = ``center`` or the coordinate-wise median; then ``iters`` times
    v ← v + (1/n) Σ_i (x_i − v) · min(1, τ / ‖x_i − v‖), with whole-vector L2 norms.
    Each contribution moves v by at most τ/n per iteration, however large it is.
    Holds the n contributions in float64 while it iterates (8·n·numel bytes).
    """
    names = _validate(contribs)
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise AggregationError(f"tau must be a positive finite number, got {tau!r}")
    if not (isinstance(iters, int) and iters >= 0):
        raise AggregationError(f"iters must be a non-negative int, got {iters!r}")
    n = len(contribs)
    # Materialise the inputs once as float64 (the norm pass and the update pass both need them).
    xs = {name: [x for _, _, x in _slabs(contribs, name)] for name in names}
    if center is None:
        v = {name: [_median_rows(torch.sort(x, dim=0, stable=True).values) for x in xs[name]] for name in names}
    else:
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

    out = {name: torch.cat(v[name]) if v[name] else torch.empty(0, dtype=torch.float64) for name in names}
    return _finish(out, contribs, names)


def norm_check(contribs: Sequence[Contribution], max_ratio: float) -> list[int]:
    """Indices (ascending) of contributions to drop: a non-finite value, or an L2 norm greater than
    ``max_ratio`` × the median norm of the finite ones. (If that median is 0, every non-zero
    contribution is flagged.)"""
    if not (isinstance(max_ratio, (int, float)) and max_ratio >= 1):
        raise AggregationError(f"max_ratio must be ≥ 1, got {max_ratio!r}")
    norms: list[float | None] = []
    for c in contribs:
        finite = all(bool(torch.isfinite(t).all()) for t in c.values())
        norm = vector_norm(c) if finite else None
        norms.append(norm if norm is not None and math.isfinite(norm) else None)
    finite_norms = sorted(x for x in norms if x is not None)
    if not finite_norms:
        return list(range(len(contribs)))
    m = len(finite_norms)
    med = finite_norms[m // 2] if m % 2 else (finite_norms[m // 2 - 1] + finite_norms[m // 2]) / 2
    return [i for i, x in enumerate(norms) if x is None or x > max_ratio * med]


AGGREGATORS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "mean": mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "centered_clip": centered_clip,
}

# The aggregators a run config may name, each with its keyword parameters taken from the config. Adding
# one: its function in AGGREGATORS, a line here, and its name in the config's accepted names.
AGGREGATOR_PARAMS: dict[str, Callable[[TrainingConfig], dict[str, Any]]] = {
    "mean": lambda cfg: {},
    "trimmed_mean": lambda cfg: {"trim_fraction": cfg.trim_fraction},
    "centered_clip": lambda cfg: {"tau": cfg.clip_tau},
}


def run_params(cfg: TrainingConfig) -> dict[str, Any]:
    """The keyword parameters of the run's aggregator (``cfg.aggregator``), from the run config."""
    return AGGREGATOR_PARAMS[cfg.aggregator](cfg)


def aggregate(name: str, contribs: Sequence[Contribution], **params: Any) -> dict[str, torch.Tensor]:
    """Run aggregator ``name`` (one of :data:`AGGREGATORS`) with its keyword ``params``, e.g.
    ``aggregate("trimmed_mean", cs, trim_fraction=0.2)`` or ``aggregate("centered_clip", cs, tau=1.0)``."""
    try:
        fn = AGGREGATORS[name]
    except KeyError:
        raise AggregationError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}") from None
    try:
        inspect.signature(fn).bind(contribs, **params)
    except TypeError as e:  # a wrong or missing keyword for this aggregator
        raise AggregationError(f"{name}: {e}") from None
    return fn(contribs, **params)
