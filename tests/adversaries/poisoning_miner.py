"""A Byzantine miner, for tests and benchmarks only: runs the production neurons/miner.py with a test-only
subclass of the ``diloco`` strategy installed in its own process, whose :meth:`Poisoner.encode` sends a
poisoned contribution *in the exchange*. The payload is validly compressed and goes through the normal
signing path, so peers see a validly signed contribution and validators are served exactly the bytes
that were sent (the receipt store is not touched). It trains honestly, so its step-0 loss claims are
true and the losses it reports are its honest ones.

    TENSORSWARM_POISON=KIND[,KIND...] TENSORSWARM_POISON_DIR=DIR \\
        python tests/adversaries/poisoning_miner.py <miner.py flags>

(from the environment, because the meta-miner starts it with the miner's flags:
``neurons/meta_miner.py --miner-script tests/adversaries/poisoning_miner.py``). With several kinds,
round r uses ``KINDS[r % len(KINDS)]`` (all colluders agree on it without talking).

KIND, with Δ_j the honest (error-feedback compressed) pseudo-gradient colluder j would have sent:

- ``alie`` ("a little is enough"): per coordinate mean − z·σ of the colluders' Δ_j (σ the sample
  standard deviation over them; z = ``TENSORSWARM_POISON_Z``, default 1);
- ``ipm`` (inner-product manipulation): −ε·mean of the colluders' Δ_j (ε = ``TENSORSWARM_POISON_EPS``,
  default 1);
- ``signflip``: −k·Δ_own with k = ``TENSORSWARM_POISON_SIGNFLIP`` (default 0.95) × the norm screen's
  ratio (``template.engine.screening.NORM_MAX_RATIO``; 10 if the screen no longer has one), i.e. just
  under what the screen drops when Δ_own has the median norm;
- ``noise``: Gaussian noise with Δ_own's norm;
- ``f32max``: the largest-magnitude values the wire format still parses, alternating signs: int8
  schemes send q = ±127 with the largest scale :meth:`Compressed.from_bytes` accepts (it probes
  down from float32(``MAX_SCALE``)), float schemes ±float32 max.

Colluders coordinate through ``TENSORSWARM_POISON_DIR``: each writes its Δ_own of every round to
``DIR/honest/<round>/<hotkey>.pt`` (whatever kind it sends), and for alie and ipm waits (at most
``TENSORSWARM_POISON_WAIT_S``, default 15 s, well under the collective timeout) for
``TENSORSWARM_POISON_COLLUDERS`` (default 2) files; after a timeout it uses what is there (alone:
mean = Δ_own, σ = 0). Colluders may run different kinds (each its own ``TENSORSWARM_POISON``).

Two colluders sending the same alie or ipm vector would send identical bytes, which copy detection
catches for free; a careful colluder avoids that, so unless ``TENSORSWARM_POISON_DISTINCT=0`` (the
textbook vector, e.g. when only one colluder sends it) colluder j adds 0.5·(Δ_j − mean) to its alie or
ipm payload, which keeps it inside the colluders' spread but far from its partner's (cosine ≈ 0.8 for two).

Each round it also writes ``DIR/sent/<hotkey>/<round>.json`` (kind, norms, colluders seen) so a test
can check the attack it asked for was really sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))

KINDS = ("alie", "ipm", "signflip", "noise", "f32max")
log = logging.getLogger("tensorswarm.poison")


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"alie"`` or ``"alie,ipm,..."`` → the kinds in order (ValueError on an unknown one)."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"TENSORSWARM_POISON={text!r}: choose from {', '.join(KINDS)} (comma-separated)")
    return kinds


def kind_for(kinds: tuple[str, ...], round: int) -> str:
    return kinds[round % len(kinds)]


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _flat_norm(delta) -> float:
    from template.engine.aggregation import vector_norm

    return vector_norm(delta)


def alie(deltas: list[dict], z: float) -> dict:
    """Per coordinate mean − z·σ over ``deltas`` (σ: sample standard deviation; 0 for one)."""
    import torch

    out = {}
    for name in deltas[0]:
        x = torch.stack([d[name].double() for d in deltas])
        sigma = x.std(dim=0) if len(deltas) > 1 else torch.zeros_like(x[0])
        out[name] = (x.mean(dim=0) - z * sigma).float()
    return out


def ipm(deltas: list[dict], eps: float) -> dict:
    """−ε·mean over ``deltas``."""
    import torch

    return {name: (-eps * torch.stack([d[name].double() for d in deltas]).mean(dim=0)).float() for name in deltas[0]}


def gaussian_like(delta: dict, seed: int) -> dict:
    """Gaussian noise with ``delta``'s shapes and L2 norm."""
    import torch

    g = torch.Generator().manual_seed(seed)
    noise = {n: torch.randn(t.shape, generator=g, dtype=torch.float64) for n, t in sorted(delta.items())}
    target = _flat_norm(delta)
    total = math.sqrt(sum(float((t * t).sum()) for t in noise.values()))
    return {n: (t * (target / total if total > 0 else 0.0)).float() for n, t in noise.items()}


def f32max_payload(spec: dict, scheme: str, fraction: float) -> bytes:
    """A contribution whose every sent value has the largest magnitude the parser accepts, signs
    alternating. Built by compressing ±1 (so indices, chunking and dtypes are the honest ones),
    then raising the scales (int8 schemes) or the values (float schemes) to the limit."""
    import torch

    from template.engine.compression import MAX_SCALE, Compressed, CompressionError, compress

    def alternating(shape):
        n = math.prod(shape)
        return (1.0 - 2.0 * (torch.arange(n) % 2)).float().reshape(shape)

    base = compress({n: alternating(s) for n, s in spec.items()}, scheme, fraction=fraction)
    big = torch.finfo(torch.float32).max
    scale = torch.tensor(MAX_SCALE, dtype=torch.float32)
    for _ in range(8):
        for ct in base.tensors.values():
            if ct.scales is not None:
                ct.scales = torch.full_like(ct.scales, float(scale))
            else:
                ct.values = torch.sign(ct.values) * big
        data = base.to_bytes()
        try:
            Compressed.from_bytes(data, spec, scheme=scheme, fraction=fraction)
            return data
        except CompressionError:
            scale = torch.nextafter(scale, torch.tensor(0.0))
    raise RuntimeError("no f32max payload parses")


class Colluders:
    """The rendezvous directory: publish this rank's honest Δ for a round, read the others'."""

    def __init__(self, root: Path, me: str, expected: int, wait_s: float):
        self.root, self.me, self.expected, self.wait_s = root, me, expected, wait_s

    def publish(self, round: int, delta: dict) -> None:
        import torch

        here = self.root / "honest" / f"{round:010d}"
        here.mkdir(parents=True, exist_ok=True)
        tmp = here / f".{self.me}.tmp"
        torch.save(delta, tmp)
        tmp.replace(here / f"{self.me}.pt")  # atomic: a partner never reads half a file
        (self.root / "honest" / f"{round - 3:010d}" / f"{self.me}.pt").unlink(missing_ok=True)

    def gather(self, round: int) -> dict[str, dict]:
        """The colluders' honest Δs of ``round`` (this one's included), after a bounded wait for all."""
        import torch

        here = self.root / "honest" / f"{round:010d}"
        deadline = time.monotonic() + self.wait_s
        while len(list(here.glob("*.pt"))) < self.expected and time.monotonic() < deadline:
            time.sleep(0.05)
        found = {}
        for path in sorted(here.glob("*.pt")):
            try:
                found[path.stem] = torch.load(path, weights_only=True)
            except Exception as error:  # a partner mid-crash: do without it
                log.warning("poison: cannot read %s: %s", path, error)
        return found

    def record(self, round: int, info: dict) -> None:
        out = self.root / "sent" / self.me
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{round:010d}.json").write_text(json.dumps(info))


def make_strategy(kinds: tuple[str, ...], rendezvous: Path | None):
    """The test-only ``diloco`` subclass that poisons what it sends (see the module docstring)."""
    import torch

    from template.engine import screening
    from template.engine.compression import compress
    from template.engine.strategies.diloco import DiLoCo
    from template.engine.trainer import WARM_UP_CONTEXT

    z = _env_float("TENSORSWARM_POISON_Z", 1.0)
    eps = _env_float("TENSORSWARM_POISON_EPS", 1.0)
    flip = _env_float("TENSORSWARM_POISON_SIGNFLIP", 0.95)
    expected = int(os.environ.get("TENSORSWARM_POISON_COLLUDERS", "2"))
    wait_s = _env_float("TENSORSWARM_POISON_WAIT_S", 15.0)
    distinct = os.environ.get("TENSORSWARM_POISON_DISTINCT", "1") != "0"

    class Poisoner(DiLoCo):
        """Trains honestly, compresses its Δ with its (honest) error feedback, then sends a poisoned Δ."""

        def encode(self, round: int, delta: dict[str, torch.Tensor]) -> bytes:
            if not all(bool(torch.isfinite(v).all()) for v in delta.values()):
                return super().encode(round, delta)  # a diverged inner run: production sends nothing
            if self.trainer.context == WARM_UP_CONTEXT:  # the spare's throwaway round: no partner's business
                return super().encode(round, delta)
            t, cfg = self.trainer, self.cfg
            me = t.peers[t.rank]
            own = self.ef.compress(delta).decompress()  # what an honest rank would send (its EF advances)
            kind = kind_for(kinds, round)
            info = {"kind": kind, "honest_norm": _flat_norm(own), "colluders": 1}
            if rendezvous is not None:  # every round, whatever this one sends: partners may need it
                Colluders(rendezvous, me, expected, wait_s).publish(round, own)
            if kind == "f32max":
                payload = f32max_payload(t.spec, cfg.compression, cfg.topk_fraction)
            else:
                if kind in ("alie", "ipm") and rendezvous is not None:
                    found = Colluders(rendezvous, me, expected, wait_s).gather(round)
                    found[me] = own
                else:
                    found = {me: own}
                deltas = [found[k] for k in sorted(found)]
                info["colluders"] = len(deltas)
                if kind == "alie":
                    poison = alie(deltas, z)
                elif kind == "ipm":
                    poison = ipm(deltas, eps)
                elif kind == "signflip":
                    ratio = getattr(screening, "NORM_MAX_RATIO", 10.0)
                    poison = {n: -flip * ratio * v for n, v in own.items()}
                else:
                    seed = int(hashlib.sha256(f"{me}/{round}".encode()).hexdigest()[:15], 16)
                    poison = gaussian_like(own, seed)
                if distinct and kind in ("alie", "ipm") and len(deltas) > 1:
                    mean = {n: torch.stack([d[n] for d in deltas]).mean(dim=0) for n in own}
                    poison = {n: poison[n] + 0.5 * (own[n] - mean[n]) for n in own}
                payload = compress(poison, cfg.compression, fraction=cfg.topk_fraction).to_bytes()
            info["payload_sha256"] = hashlib.sha256(payload).hexdigest()
            log.warning(
                "poison round %d: %s (honest norm %.4g, %d colluder(s))",
                round,
                kind,
                info["honest_norm"],
                info["colluders"],
            )
            if rendezvous is not None:
                Colluders(rendezvous, me, expected, wait_s).record(round, info)
            return payload

    return Poisoner


def main() -> int:
    argv = sys.argv[1:]
    kinds = parse_kinds(os.environ["TENSORSWARM_POISON"])
    rendezvous = os.environ.get("TENSORSWARM_POISON_DIR")
    rendezvous = Path(rendezvous) if rendezvous else None

    from template.engine.strategies import STRATEGIES

    # Only inside this process: the run's config, state format and the peers' expectations stay diloco's.
    STRATEGIES["diloco"] = make_strategy(kinds, rendezvous)
    from neurons import miner

    return miner.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
