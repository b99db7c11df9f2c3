#!/usr/bin/env python
"""How far two colluders out of six move each aggregation rule from the honest mean.

    python scripts/bench/aggregators.py [--rounds 3] [--inner-steps H] [--threads 1] [--seed 0]

Real pseudo-gradients: an honest-only swarm of 4 ``Trainer`` ranks (tiny preset, its run defaults: H = 20,
batch 8, seq_len 64, int8 compression with error feedback) trains ``--rounds`` rounds in this process, one
thread per rank and the all-gather replaced by ``template.engine.exchange.InMemoryExchange`` (as
tests/unit/test_audit.py builds it), on the Python standard library's sources
(:func:`template.data.corpus.default_corpus`). Each round's 4 contributions are the decompressed Δs the
ranks exchanged. Then, offline, for each attack 2 colluders who know the 4 honest Δs add their own
(n = 6, f = 1/3, b(6) = 2), at ranks 1 and 4:

- ``flip``: −mean of the honest Δs, scaled to 9.9 × the honest median norm (just under the 10× screen);
- ``alie``: mean − z·σ per coordinate, z = 1 (Baruch et al., 2019), both colluders alike;
- ``ipm``: −ε·mean, ε = 0.5 (inner-product manipulation, Xie et al., 2020);
- ``noise``: Gaussian noise with the honest mean norm, one draw per colluder;
- ``f32max``: float32-max values against the sign of the honest mean;
- ``none``: the 4 honest Δs alone (n = 4, b = 1): what robustness costs without an attack.

No norm screen runs here: each rule stands alone, as if the screen had missed the colluders. Rules
(``template.engine.aggregation`` with the run's ``byzantine_fraction`` = 1/3, so every rule clips to
the median norm): ``trimmed_mean`` (trim 0.2 raised to b(n) per end; the default), ``centered_clip``
(τ = the run's ``clip_tau``, the coordinate-wise median as centre, 3 iterations; bench-only variants:
``centered_clip_tau10`` with τ = 10, ``centered_clip_rel03`` with τ = 0.3 × the median norm), ``median``
(coordinate-wise), ``bucketed_median`` (Karimireddy et al., 2022: a fixed random pairing into buckets
of 2, their means, then the median; bench-only), and, for reference, ``trimmed_mean_f0``: the trimmed
mean as it was (one value per end at n = 6, no clip).

Figures, one per line ``name value unit`` on stdout (progress on stderr), each the mean over rounds:

- ``<rule>_<attack>_rel_dist`` (x): ‖aggregate − honest mean‖ / ‖honest mean‖;
- ``<rule>_<attack>_cosine`` (cosine): the cosine between the aggregate and the honest mean;
- ``<rule>_aggregate_ms`` (ms): the median wall time of one aggregation of 6 contributions.
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from template.config.cli import ArgumentParser, non_negative_int, positive_int  # noqa: E402
from template.config.presets import RUN_DEFAULTS  # noqa: E402
from template.config.run import TrainingConfig  # noqa: E402
from template.engine.aggregation import aggregate, mean, median, median_norm, vector_norm  # noqa: E402
from utils.procs import log  # noqa: E402

HONEST = 4
COLLUDER_RANKS = (1, 4)
FLIP_RATIO = 9.9
ALIE_Z = 1.0
IPM_EPS = 0.5
REL_TAU = 0.3  # centered_clip_rel03: τ = 0.3 × the median norm of the round's contributions
KEY_URI = "//tensorswarm-bench-aggregators-{i}"
Delta = dict[str, torch.Tensor]


def figure(name: str, value: float, unit: str) -> None:
    print(f"{name} {value:.6g} {unit}", flush=True)


# -- the honest swarm -------------------------------------------------------------------------------


def honest_deltas(cfg: TrainingConfig, rounds: int) -> list[list[Delta]]:
    """Per round, the 4 honest ranks' decompressed contributions, from a real in-process swarm."""
    from bittensor.sp_core import Keypair

    from template.data.corpus import build_dataset, default_corpus
    from template.data.sampling import batch_offsets, windows_to_tensor
    from template.data.store import shard_reader
    from template.engine.compression import DEFAULT_CHUNK_SIZE, Compressed
    from template.engine.exchange import InMemoryExchange
    from template.engine.trainer import Trainer

    name, corpus = default_corpus(max_bytes=2 * 2**20)
    manifest, shards = build_dataset(name, corpus, shard_size=256 * 1024, heldout_fraction=0.05)
    read = shard_reader(manifest, shards.__getitem__)
    keys = [Keypair.create_from_uri(KEY_URI.format(i=i)) for i in range(HONEST)]
    hub = InMemoryExchange(HONEST, timeout_s=3600)
    trainers = [
        Trainer(
            cfg,
            rank=i,
            world_size=HONEST,
            peers=[k.ss58_address for k in keys],
            sign=keys[i].sign,
            context="bench-aggregators/0",
            exchange=hub.bind(i),
        )
        for i in range(HONEST)
    ]
    for t in trainers:
        t.load(None)

    def batcher(hotkey: str, r: int):
        def batch(step: int) -> torch.Tensor:
            offsets = batch_offsets(
                manifest,
                seed=cfg.seed,
                round=r,
                hotkey=hotkey,
                step=step,
                batch_size=cfg.batch_size,
                seq_len=cfg.seq_len,
            )
            return windows_to_tensor(read, offsets, cfg.seq_len)

        return batch

    out = []
    for r in range(rounds):
        results, errors = [None] * HONEST, []

        def work(i: int, r: int = r, results: list = results, errors: list = errors) -> None:
            try:
                results[i] = trainers[i].run_round(r, batcher(keys[i].ss58_address, r))
            except BaseException as error:  # free the others, report it below
                errors.append(error)
                hub.barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(HONEST)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        if len({x.state_hash for x in results}) != 1:
            raise RuntimeError(f"round {r}: the honest ranks disagree")
        spec = trainers[0].spec
        out.append(
            [
                Compressed.from_bytes(
                    x.contribution,
                    spec,
                    scheme=cfg.compression,
                    fraction=cfg.topk_fraction,
                    chunk_size=DEFAULT_CHUNK_SIZE,
                    max_bytes=trainers[0].max_contribution_bytes,
                ).decompress()
                for x in results
            ]
        )
        loss = statistics.mean(sum(x.losses) / len(x.losses) for x in results)
        log(f"round {r}: honest mean loss {loss:.3f}, Δ norms {[round(vector_norm(d), 3) for d in out[-1]]}")
    return out


# -- attacks: two colluders who know the honest Δs --------------------------------------------------


def _stack(honest: list[Delta], name: str) -> torch.Tensor:
    return torch.stack([h[name].double() for h in honest])


def _mean(honest: list[Delta]) -> Delta:
    return {k: _stack(honest, k).mean(0) for k in honest[0]}


def _scaled(d: Delta, norm: float) -> Delta:
    return {k: v * (norm / vector_norm(d)) for k, v in d.items()}


def flip(honest: list[Delta], i: int) -> Delta:
    norms = sorted(vector_norm(h) for h in honest)
    median = (norms[1] + norms[2]) / 2
    return _scaled({k: -v for k, v in _mean(honest).items()}, FLIP_RATIO * median)


def alie(honest: list[Delta], i: int) -> Delta:
    return {k: _stack(honest, k).mean(0) - ALIE_Z * _stack(honest, k).std(0) for k in honest[0]}


def ipm(honest: list[Delta], i: int) -> Delta:
    return {k: -IPM_EPS * v for k, v in _mean(honest).items()}


def noise(honest: list[Delta], i: int) -> Delta:
    g = torch.Generator().manual_seed(1000 + i)
    d = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in honest[0].items()}
    return _scaled(d, statistics.mean(vector_norm(h) for h in honest))


def f32max(honest: list[Delta], i: int) -> Delta:
    return {k: -torch.sign(v) * torch.finfo(torch.float32).max for k, v in _mean(honest).items()}


ATTACKS: dict[str, Callable[[list[Delta], int], Delta]] = {
    "none": lambda honest, i: {},
    "flip": flip,
    "alie": alie,
    "ipm": ipm,
    "noise": noise,
    "f32max": f32max,
}


def with_colluders(honest: list[Delta], attack: str) -> list[Delta]:
    contribs = [{k: v.float() for k, v in h.items()} for h in honest]
    if attack == "none":
        return contribs
    for i, rank in enumerate(COLLUDER_RANKS):
        contribs.insert(rank, {k: v.float() for k, v in ATTACKS[attack](honest, i).items()})
    return contribs


# -- rules ---------------------------------------------------------------------------------------------


def bucketed_median(contribs: list[Delta], round_: int, f: float) -> Delta:
    """Buckets of 2 by a fixed random pairing (seeded by the round), their means, the median of those."""
    order = torch.randperm(len(contribs), generator=torch.Generator().manual_seed(round_)).tolist()
    buckets = [mean([contribs[j] for j in order[s : s + 2]]) for s in range(0, len(order), 2)]
    return median(buckets, byzantine_fraction=f)


def rules(cfg: TrainingConfig) -> dict[str, Callable[[list[Delta], int], Delta]]:
    f = cfg.byzantine_fraction
    return {
        "trimmed_mean": lambda cs, r: aggregate(
            "trimmed_mean", cs, trim_fraction=cfg.trim_fraction, byzantine_fraction=f
        ),
        "centered_clip": lambda cs, r: aggregate("centered_clip", cs, tau=cfg.clip_tau, byzantine_fraction=f),
        "median": lambda cs, r: aggregate("median", cs, byzantine_fraction=f),
        # The same rule at a larger absolute τ, and with τ tied to the contributions' scale (bench-only).
        "centered_clip_tau10": lambda cs, r: aggregate("centered_clip", cs, tau=10.0, byzantine_fraction=f),
        "centered_clip_rel03": lambda cs, r: aggregate(
            "centered_clip", cs, tau=REL_TAU * median_norm(cs), byzantine_fraction=f
        ),
        "bucketed_median": lambda cs, r: bucketed_median(cs, r, f),
        "trimmed_mean_f0": lambda cs, r: aggregate("trimmed_mean", cs, trim_fraction=cfg.trim_fraction),
    }


def distance(agg: Delta, target: Delta) -> tuple[float, float]:
    """(‖agg − target‖ / ‖target‖, cosine(agg, target)) over all tensors, in float64."""
    a = torch.cat([agg[k].double().reshape(-1) for k in sorted(target)])
    t = torch.cat([target[k].double().reshape(-1) for k in sorted(target)])
    if not bool(torch.isfinite(a).all()):
        return math.inf, math.nan
    return float((a - t).norm() / t.norm()), float(a @ t / (a.norm() * t.norm()).clamp_min(1e-300))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/bench/aggregators.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds of honest Δs")
    parser.add_argument("--inner-steps", type=positive_int, default=None, help="H (default: the preset's)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="run seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults = dict(RUN_DEFAULTS["tiny"])
    if args.inner_steps:
        defaults["inner_steps"] = args.inner_steps
    cfg = TrainingConfig(preset="tiny", seed=args.seed, **defaults)
    log(f"{HONEST} honest ranks, {args.rounds} rounds, H = {cfg.inner_steps}, f = {cfg.byzantine_fraction:.3f}")
    rounds = honest_deltas(cfg, args.rounds)
    table = rules(cfg)
    times: dict[str, list[float]] = {name: [] for name in table}
    for name, rule in table.items():
        for attack in ATTACKS:
            dists, cosines = [], []
            for r, honest in enumerate(rounds):
                contribs = with_colluders(honest, attack)
                start = time.perf_counter()
                agg = rule(contribs, r)
                if attack != "none":
                    times[name].append((time.perf_counter() - start) * 1e3)
                d, c = distance(agg, _mean(honest))
                dists.append(d)
                cosines.append(c)
            figure(f"{name}_{attack}_rel_dist", statistics.mean(dists), "x")
            figure(f"{name}_{attack}_cosine", statistics.mean(cosines), "cosine")
        figure(f"{name}_aggregate_ms", statistics.median(times[name]), "ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
