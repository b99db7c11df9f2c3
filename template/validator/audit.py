"""Validator audits of one diloco round: what a validator can check about each miner's work from the
data it has already fetched (the round's start state, the miners' signed receipts and compressed
contributions, the dataset shards). Pure functions over that data: no networking, no chain, no disk.

What is checked, per miner (:class:`Audit` holds the outcome, :func:`audit_round` computes it):

receipt
    Signed by the hotkey it names (:func:`template.receipts.verify_receipt`); names this hotkey, run,
    generation, round, rank and the run's seed; starts from the agreed start state and ends at the
    agreed end state (a miner that diverged, or replays a receipt of another round, fails here);
    carries one loss per inner step and a contribution hash.

contribution
    Its sha256 is the one the receipt signs; it parses strictly against the model's parameter spec and
    the run's compression (:meth:`Compressed.from_bytes`, the same check the miners' exchange applies);
    it is finite; its L2 norm is the one the receipt claims.

step-0 loss (exact)
    The inner AdamW state persists across rounds on each rank, so of the H losses a miner reports only
    the first is a pure function of public data: loss(θ_r, batch(hotkey, step 0)). The validator
    recomputes it and compares with the claim (tolerance below).

last-step loss (approximate)
    The claimed loss of step H−1 was taken at θ_{H−1} on the miner's last batch. The validator cannot
    rebuild θ_{H−1}; it evaluates the same batch at θ_r − Δ_sent, which is θ_H (one more AdamW step
    *on that very batch*) up to the compression error and the error-feedback residual. An honest claim
    is therefore usually *above* the evaluated value; loss-liars report *lower* losses, so only a claim
    implausibly below it fails (tolerance below).

usefulness
    ``own_gain``: mean of loss(θ_r) − loss(θ_r − Δ) over some of the miner's own batches;
    ``heldout_gain``: the same over ``heldout_count`` held-out windows that the validator draws with
    its own ``audit_seed`` (:func:`template.data.heldout_offsets`), so miners cannot train on them.
    A free-rider's zero Δ gains exactly 0; noise or a sign-flipped Δ of honest norm loses.

copies
    A contribution whose bytes (sha256) were seen before, in an earlier round (any hotkey — this is
    also how a *stale* miner replaying an old round's contribution is caught, its own included) or in
    this round from a lower rank; or whose decompressed Δ has cosine ≥ :data:`COPY_COSINE` with a
    lower-ranked miner's Δ of this round (catches a copy with a little noise added, re-compressed).
    Earlier round wins; within a round the miner whose peers attest the bytes wins, then the lower rank.

peer attestation
    Every rank's signed receipt lists the sha256 of the validly signed contribution it received from
    each rank in the exchange (:attr:`Receipt.received_sha256`). A contribution served to the validator
    when a strict majority of the attesting peers (at least :data:`MIN_ATTESTERS`) received *other
    validly signed* bytes from that miner fails: it was not what the miner sent (a copier re-serving
    someone else's bytes, a stale miner re-serving an old round). Peers that hold no valid bytes from
    it do not count (see :func:`attestation_problem`). Receipts of members outside the audit sample count as attesters
    (``peer_receipts``), so a lone lying attester cannot frame an honest miner.

Cost model (the goal is ≤ 10% of a miner's round). A miner's diloco round is H inner steps of forward
+ backward + AdamW on B = ``batch_size`` windows: ≈ 3·H·B window-forwards (backward ≈ 2 forwards),
plus compression and signing. Auditing one miner is forward passes only, under ``no_grad``: the
batches of ``own_steps ∪ {H−1}`` at θ_r (step 0's doubles as the step-0 check) and at θ_r − Δ, and the
``heldout_count`` held-out windows at θ_r − Δ (the same windows at θ_r are evaluated once per round and
shared by every audited miner); plus one signature check, one strict parse + decompression of Δ and
one parameter copy. Per round, once: building θ_r (init + strict parse of the state), a copy, and the
peer receipts' signature checks. With the validator's defaults (three own steps, 16 held-out windows)
that is 6B + 16 window-forwards per miner: 64 against the miner's ≈ 480 on the tiny preset (H = 20,
B = 8), 112 against ≈ 2400 on small (H = 50, B = 16), and the audit does not grow with H.
``scripts/bench/audit_cost.py`` measures it (CPU time, one thread, 3 miners per round sharing the
fixed part): ≈ 15% per miner-round on tiny, where the model is too small for the per-forward work to
dominate, and 4.8% on small; larger presets only lower it.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.data.sampling import batch_offsets, heldout_offsets, windows_to_tensor
from template.engine.aggregation import vector_norm
from template.engine.compression import DEFAULT_CHUNK_SIZE, Compressed, CompressionError
from template.engine.trainer import Trainer
from template.wire.dataset import DatasetManifest
from template.wire.receipts import SignedReceipt
from template.wire.signing import verify_receipt

__all__ = [
    "Evidence",
    "Audit",
    "audit_round",
    "first_loss_tolerance",
    "last_loss_margin",
    "FIRST_LOSS_ABS_TOL",
    "FIRST_LOSS_REL_TOL",
    "LAST_LOSS_ABS_TOL",
    "LAST_LOSS_PROGRESS_FACTOR",
    "COPY_COSINE",
    "MIN_ATTESTERS",
    "attestation_problem",
    "NORM_REL_TOL",
    "SKETCH_COORDS",
]

# Step-0 loss: |claimed − recomputed| ≤ max(FIRST_LOSS_ABS_TOL, FIRST_LOSS_REL_TOL·|recomputed|).
# The recomputation is the same deterministic float32 forward the miner ran (dropout is 0, so train
# and eval mode compute the same function). On one machine it reproduces the claim bit for bit; across
# CPU/GPU, BLAS libraries and thread counts float32 reductions differ by ~1e-6..1e-5 relative (measured
# here: |float32 − float64| ≤ 3e-7 on the tiny preset), i.e. ≤ 6e-5 absolute for a mean cross-entropy
# of ~1–6 nats. 1e-3 leaves a ≥ 15× margin for that (the Trainer leaves TF32 off, torch's default),
# while a liar can shave off at most ~0.1% of a loss — far below the batch-to-batch spread of honest
# losses (~0.05 nats), so a lie small enough to pass buys nothing.
FIRST_LOSS_ABS_TOL = 1e-3
FIRST_LOSS_REL_TOL = 1e-3

# Last-step loss: the claim fails when claimed < evaluated − margin on the last batch b, with
#   D      = loss(θ_r, b) − loss(θ_r − Δ_sent, b)       (the progress the sent Δ realises on b)
#   margin = max(LAST_LOSS_ABS_TOL, (f − 1) · max(0, D)),  f = LAST_LOSS_PROGRESS_FACTOR (none/int8)
#                                                          f = LAST_LOSS_PROGRESS_FACTOR / fraction (top-k)
# i.e. the miner may claim up to f× the progress its Δ shows on that batch (plus 0.05 nats). Derived
# from the data of the round (D), with factors set from measurements on the tiny preset
# (tests/test_audit.py): with dense compression (none, int8: |error| ≤ absmax/254 per chunk, and an
# equally small error-feedback residual) θ_r − Δ_sent is θ_H almost exactly, one AdamW step past the
# claimed θ_{H−1} *on b itself*, so honest claims sit 0.02–0.05 nats *above* the evaluated loss
# (claimed progress 0.87–0.99 × D); f = 1.25 and the 0.05 floor leave room for a last step that did
# not help. Top-k sends only a fraction δ of the coordinates of Δ + residual: the sent Δ realises less
# than the miner's progress (measured: claimed progress up to 3.8× D at δ = 0.1, 12× at δ = 0.01,
# shrinking as error feedback catches up), hence the 1/δ scaling. Under top-k this check only
# catches gross lies; the exact step-0 check and the cross-miner statistics of template.scoring
# (reported-minus-evaluated gap as a robust z-score) cover the rest, as they do in early rounds where
# D, and so the margin, is large.
LAST_LOSS_ABS_TOL = 0.05
LAST_LOSS_PROGRESS_FACTOR = 1.25

MIN_ATTESTERS = 2  # disagreeing peers needed to fail a miner's served contribution (one liar is not enough)
COPY_COSINE = 0.999  # honest miners' Δs from one θ_r on different batches stay well below (measured ≤ 0.85)
NORM_REL_TOL = 1e-6  # the receipt's norm is vector_norm() of the same bytes (bit-exact); JSON round-trips floats
SKETCH_COORDS = 1 << 22  # cosines are computed on at most this many coordinates (a fixed random subset)

_AUDITOR = "tensorswarm-auditor"  # the audit's Trainer never signs or exchanges anything


def _never_sign(message: bytes) -> bytes:
    raise RuntimeError("the auditor does not sign contributions")


def first_loss_tolerance(recomputed: float) -> float:
    return max(FIRST_LOSS_ABS_TOL, FIRST_LOSS_REL_TOL * abs(recomputed))


def last_loss_margin(loss_at_start: float, loss_evaluated: float, training: TrainingConfig) -> float:
    """How far below the evaluated last-step loss an honest claim may lie (see the constants)."""
    factor = LAST_LOSS_PROGRESS_FACTOR
    if training.compression in ("topk", "topk_int8"):
        factor /= training.topk_fraction
    return max(LAST_LOSS_ABS_TOL, (factor - 1.0) * max(0.0, loss_at_start - loss_evaluated))


@dataclass(frozen=True)
class Evidence:
    """What a validator fetched from one miner for one round (None: not served)."""

    hotkey: str
    rank: int
    receipt: Optional[SignedReceipt]
    contribution: Optional[bytes]


@dataclass(frozen=True)
class Audit:
    """The outcome of auditing one miner in one round. ``None`` means "not evaluated" (an earlier check
    failed or the data was missing); ``reasons`` says what failed, in words."""

    hotkey: str
    round: int
    rank: int = -1
    served: bool = False  # a receipt and a contribution were obtained
    receipt_ok: bool = False
    contribution_ok: bool = False
    loss_first_claimed: Optional[float] = None
    loss_first_recomputed: Optional[float] = None
    loss_first_ok: Optional[bool] = None
    loss_last_claimed: Optional[float] = None
    loss_last_start: Optional[float] = None  # loss(θ_r) on the last batch: the base of the margin
    loss_last_evaluated: Optional[float] = None  # loss(θ_r − Δ) on the last batch
    loss_last_ok: Optional[bool] = None
    own_gain: Optional[float] = None
    heldout_gain: Optional[float] = None
    norm: Optional[float] = None
    copied_from: Optional[str] = None
    copied_round: Optional[int] = None  # the round of the original (< round: a replay of evidence already seen)
    attested: Optional[bool] = None  # peers confirm (True) / contradict (False) the served bytes; None: too few
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """Every check passed (usefulness is scored separately, in template.scoring)."""
        return (
            self.served
            and self.receipt_ok
            and self.contribution_ok
            and self.loss_first_ok is True
            and self.loss_last_ok is True
            and self.copied_from is None
            and self.attested is not False
            and self.own_gain is not None
            and self.heldout_gain is not None
        )


@torch.no_grad()
def _mean_loss(model: torch.nn.Module, xy: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-byte cross-entropy over the rows of ``xy``, exactly as the Trainer computes it for one
    batch (``model(x, y)``), in chunks of ``batch_size`` rows weighted by their row counts."""
    total, rows = 0.0, xy.shape[0]
    for start in range(0, rows, batch_size):
        chunk = xy[start : start + batch_size].to(device)
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        total += float(loss) * chunk.shape[0]
    return total / rows


def _receipt_problems(
    ev: Evidence,
    *,
    training: TrainingConfig,
    run_id: str,
    generation: int,
    round: int,
    starts: set,
    agreed_end: str,
) -> list[str]:
    signed = ev.receipt
    r = signed.receipt
    if not verify_receipt(signed):
        return ["bad receipt signature"]
    problems = []
    for what, got, want in (
        ("hotkey", r.hotkey, ev.hotkey),
        ("run", r.run_id, run_id),
        ("generation", r.generation, generation),
        ("round", r.round, round),
        ("rank", r.rank, ev.rank),
        ("seed", r.seed, training.seed),
    ):
        if got != want:
            problems.append(f"receipt names {what} {got!r}, expected {want!r}")
    if r.start_state not in starts:
        problems.append(f"receipt start_state {r.start_state} is not the agreed start")
    if r.end_state != agreed_end:
        problems.append(f"receipt end_state {r.end_state} is not the agreed end {agreed_end}")
    if len(r.losses) != training.inner_steps:
        problems.append(f"receipt has {len(r.losses)} losses, expected {training.inner_steps}")
    if r.contribution_sha256 is None:
        problems.append("receipt names no contribution")
    return problems


def _contribution_problems(
    ev: Evidence, trainer: Trainer, training: TrainingConfig
) -> tuple[list[str], Optional[dict[str, torch.Tensor]], Optional[float]]:
    r = ev.receipt.receipt
    data = ev.contribution
    if hashlib.sha256(data).hexdigest() != r.contribution_sha256:
        return ["contribution does not match the receipt's sha256"], None, None
    problems = []
    if len(data) != r.contribution_bytes:
        problems.append(f"contribution is {len(data)} bytes, the receipt says {r.contribution_bytes}")
    try:
        parsed = Compressed.from_bytes(
            data,
            trainer.spec,
            scheme=training.compression,
            fraction=training.topk_fraction,
            chunk_size=DEFAULT_CHUNK_SIZE,
            max_bytes=trainer.max_contribution_bytes,
        )
    except CompressionError as e:
        return problems + [f"malformed contribution: {e}"], None, None
    delta = parsed.decompress()
    if not all(bool(torch.isfinite(t).all()) for t in delta.values()):
        return problems + ["contribution is not finite"], None, None
    norm = vector_norm(delta)
    if not math.isfinite(norm):
        return problems + ["contribution norm is not finite"], None, None
    claimed = r.contribution_norm
    if claimed is not None and abs(claimed - norm) > NORM_REL_TOL * max(abs(norm), 1e-12):
        problems.append(f"receipt claims norm {claimed:.6g}, the contribution's is {norm:.6g}")
    return problems, delta, norm


class _Sketch:
    """The coordinates of Δ used for cosines: all of them for models up to SKETCH_COORDS parameters,
    else a fixed random subset drawn from the validator's audit seed (unknown to miners, so a copier
    cannot hide its copy by perturbing only unsampled coordinates)."""

    def __init__(self, names: Sequence[str], spec: dict, seed: int):
        self.names = list(names)
        total = sum(math.prod(spec[n]) for n in self.names)
        self.index = None
        if total > SKETCH_COORDS:
            g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
            # With replacement (no O(total) permutation); duplicates do not bias a cosine estimate.
            self.index = torch.randint(total, (SKETCH_COORDS,), generator=g).sort().values

    def __call__(self, delta: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([delta[n].reshape(-1) for n in self.names])
        if self.index is not None:
            flat = flat[self.index]
        return flat.to(torch.float64)


def attestation_problem(
    served_sha256: str, attestations: Sequence[Optional[str]]
) -> tuple[Optional[bool], Optional[str]]:
    """What the peers' signed receipts say about the bytes a miner served: ``attestations`` holds,
    per attesting peer, the sha256 of the validly signed contribution it received from that miner
    (None: nothing validly signed arrived). Only positive evidence counts: gloo's all-gather is a
    ring, so a relaying rank can corrupt a neighbour's bytes for the ranks after it, which then hold
    no valid signature from that miner — that must not frame the miner. A different *validly signed*
    hash, though, can only come from the miner itself.

    Returns (attested, problem): (False, reason) when at least :data:`MIN_ATTESTERS` peers and a
    strict majority of those holding a valid hash received other bytes; (True, None) when a strict
    majority of them received exactly the served bytes; (None, None) otherwise."""
    held = [h for h in attestations if h is not None]
    n = len(held)
    agree = sum(1 for h in held if h == served_sha256)
    disagree = n - agree
    if disagree >= MIN_ATTESTERS and 2 * disagree > n:
        return False, (
            f"served contribution {served_sha256[:12]} is not what it sent: {disagree} of {n} "
            "peers' signed receipts name other validly signed bytes received from it"
        )
    if n and 2 * agree > n:
        return True, None
    return None, None


def audit_round(
    *,
    training: TrainingConfig,
    manifest: DatasetManifest,
    read_shard: Callable[[int], bytes],
    start_state: Optional[bytes],
    agreed_start: Optional[str],
    agreed_end: str,
    run_id: str,
    generation: int,
    round: int,
    evidence: list[Evidence],
    heldout_count: int,
    own_steps: list[int],
    audit_seed: int,
    seen_contributions: dict[str, tuple[str, int]],
    members: Sequence[str] = (),
    peer_receipts: Sequence[SignedReceipt] = (),
    device: str = "cpu",
) -> list[Audit]:
    """Audit the miners in ``evidence`` for ``round`` (see the module docstring for the checks).

    ``start_state``: the canonical bytes of θ_r (hash-verified against ``agreed_start`` here), or
    None for the seed init (round 0; rebuilt exactly as :meth:`Trainer.load` ``(None)`` does, and then
    ``agreed_start`` must be None or that state's hash). ``agreed_end``: the state the round produced.
    ``read_shard``: shard index → bytes (e.g. :func:`template.data.shard_reader`). ``own_steps``:
    inner steps whose batches measure ``own_gain`` (the last step is always added: the last-loss check
    evaluates it anyway). ``audit_seed``: the validator's own seed for the held-out windows.

    ``seen_contributions`` maps a contribution's sha256 to the (hotkey, round) that first served it;
    it is read for the copy check and **updated in place** with this round's attributable
    contributions (signed receipt and valid bytes). The caller must persist it across rounds and
    restarts, or a replay of an old round's contribution goes unnoticed. Entries may be pruned for
    rounds older than anything a miner could still replay (a miner keeps 200 rounds of receipts).

    ``members``: the round's hotkeys in rank order; ``peer_receipts``: receipts of members outside the
    sample. Together with the sampled miners' receipts they are the attesters for the peer-attestation
    check (a receipt counts only if it passes the same receipt checks, for the hotkey at its rank).

    Returns one :class:`Audit` per evidence entry, in the order given. Raises ``ValueError`` for
    inconsistent inputs from the caller (a start state that does not hash to ``agreed_start`` or is
    not at ``round``, a strategy without contributions, bad ``own_steps``, duplicate hotkeys or ranks).
    """
    if training.strategy != "diloco":
        raise ValueError(f"audits need diloco contributions; this run's strategy is {training.strategy!r}")
    H = training.inner_steps
    last = H - 1
    for s in own_steps:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < H:
            raise ValueError(f"own_steps must be inner steps in [0, {H}), got {s!r}")
    if heldout_count < 1:
        raise ValueError(f"heldout_count must be >= 1, got {heldout_count}")
    if len({e.hotkey for e in evidence}) != len(evidence) or len({e.rank for e in evidence}) != len(evidence):
        raise ValueError("evidence must name each hotkey and each rank at most once")
    gain_steps = sorted(set(own_steps) | {last})

    # θ_r, built once, exactly as the miners' Trainer builds it (strict parse of the state).
    trainer = Trainer(
        training, rank=0, world_size=1, device=device, peers=[_AUDITOR], sign=_never_sign, context="audit"
    )
    loaded = trainer.load(start_state)
    if start_state is not None:
        if agreed_start is None or loaded != agreed_start:
            raise ValueError(f"start_state hashes to {loaded}, not to the agreed start {agreed_start}")
        starts = {agreed_start}
    else:
        if agreed_start not in (None, loaded):
            raise ValueError(f"agreed_start {agreed_start} is not the seed init {loaded}; pass its bytes")
        starts = {None, loaded}
    if trainer.round != round:
        raise ValueError(f"the start state is at round {trainer.round}, not {round}")
    dev = trainer.device
    base_model = trainer.model
    base_model.eval()
    moved = copy.deepcopy(base_model)  # θ_r − Δ, one miner at a time
    moved.eval()
    base = {n: p.detach().clone() for n, p in base_model.named_parameters()}
    moved_params = dict(moved.named_parameters())
    B, T = training.batch_size, training.seq_len

    def batch(hotkey: str, step: int) -> torch.Tensor:
        offsets = batch_offsets(
            manifest, seed=training.seed, round=round, hotkey=hotkey, step=step, batch_size=B, seq_len=T
        )
        return windows_to_tensor(read_shard, offsets, T)

    heldout = windows_to_tensor(
        read_shard, heldout_offsets(manifest, seed=audit_seed, round=round, count=heldout_count, seq_len=T), T
    )
    heldout_base: Optional[float] = None  # loss(θ_r) on the held-out windows, once per round

    # Attesters: every receipt of this round that passes the receipt checks for the hotkey at its rank.
    attesters: dict[int, list[Optional[str]]] = {}
    for signed in [*(e.receipt for e in evidence if e.receipt is not None), *peer_receipts]:
        r_ = signed.receipt
        if not (0 <= r_.rank < len(members)) or r_.rank in attesters:
            continue
        probe = Evidence(members[r_.rank], r_.rank, signed, None)
        if not _receipt_problems(
            probe,
            training=training,
            run_id=run_id,
            generation=generation,
            round=round,
            starts=starts,
            agreed_end=agreed_end,
        ):
            attesters[r_.rank] = list(r_.received_sha256)
    sketch = _Sketch(trainer.names, trainer.spec, audit_seed)

    results: dict[str, dict] = {}
    deltas: dict[str, torch.Tensor] = {}  # hotkey -> sketch of Δ, for attributable contributions
    for ev in evidence:
        a: dict = {"hotkey": ev.hotkey, "round": round, "rank": ev.rank}
        reasons: list[str] = []
        a["served"] = ev.receipt is not None and ev.contribution is not None
        if ev.receipt is None:
            reasons.append("not served: no receipt")
        if ev.contribution is None:
            reasons.append("not served: no contribution")
        results[ev.hotkey] = a
        a["reasons"] = reasons
        if ev.receipt is None:
            continue
        problems = _receipt_problems(
            ev,
            training=training,
            run_id=run_id,
            generation=generation,
            round=round,
            starts=starts,
            agreed_end=agreed_end,
        )
        reasons.extend(problems)
        a["receipt_ok"] = not problems
        if problems:
            continue  # claims that are not attributable (or not about this round) are not evaluated
        losses = ev.receipt.receipt.losses

        # Step 0: exact replay at θ_r.
        claimed0 = float(losses[0])
        recomputed0 = _mean_loss(base_model, batch(ev.hotkey, 0), B, dev)
        a["loss_first_claimed"], a["loss_first_recomputed"] = claimed0, recomputed0
        a["loss_first_ok"] = abs(claimed0 - recomputed0) <= first_loss_tolerance(recomputed0)
        if not a["loss_first_ok"]:
            reasons.append(f"step-0 loss: claimed {claimed0:.6f}, recomputed {recomputed0:.6f}")
        a["loss_last_claimed"] = float(losses[last])

        if ev.contribution is None:
            continue
        problems, delta, norm = _contribution_problems(ev, trainer, training)
        reasons.extend(problems)
        a["contribution_ok"] = not problems
        a["norm"] = norm
        if problems or delta is None:
            continue
        deltas[ev.hotkey] = sketch(delta)
        served = ev.receipt.receipt.contribution_sha256
        said = [got[ev.rank] if ev.rank < len(got) else None for j, got in attesters.items() if j != ev.rank]
        a["attested"], problem = attestation_problem(served, said)
        if problem:
            reasons.append(problem)

        with torch.no_grad():
            for n, p in moved_params.items():
                p.copy_(base[n]).sub_(delta[n].to(dev))
        del delta
        gains, at_start, at_moved = [], {}, {}
        for s in gain_steps:
            xy = batch(ev.hotkey, s)
            at_start[s] = recomputed0 if s == 0 else _mean_loss(base_model, xy, B, dev)
            at_moved[s] = _mean_loss(moved, xy, B, dev)
            gains.append(at_start[s] - at_moved[s])
        a["own_gain"] = sum(gains) / len(gains)
        if heldout_base is None:
            heldout_base = _mean_loss(base_model, heldout, B, dev)
        a["heldout_gain"] = heldout_base - _mean_loss(moved, heldout, B, dev)

        start_last, evaluated = at_start[last], at_moved[last]
        a["loss_last_start"], a["loss_last_evaluated"] = start_last, evaluated
        margin = last_loss_margin(start_last, evaluated, training)
        a["loss_last_ok"] = a["loss_last_claimed"] >= evaluated - margin
        if not a["loss_last_ok"]:
            reasons.append(
                f"last-step loss: claimed {a['loss_last_claimed']:.4f} is implausibly below "
                f"{evaluated:.4f} at θ_r − Δ (margin {margin:.4f})"
            )

    # Copies: earlier round wins (seen_contributions); within this round the miner whose peers
    # attest the bytes, then the lower rank.
    in_round = sorted(
        (ev for ev in evidence if ev.hotkey in deltas),
        key=lambda e: (results[e.hotkey].get("attested") is not True, e.rank),
    )
    hotkeys_here = {ev.hotkey for ev in in_round}
    originals: list[tuple[str, str, torch.Tensor, float]] = []  # (hotkey, sha, sketch, sketch norm)
    for ev in in_round:
        sha = ev.receipt.receipt.contribution_sha256
        vec = deltas[ev.hotkey]
        vnorm = float(vec.norm())
        a = results[ev.hotkey]
        copied, copied_round = None, None
        prior = seen_contributions.get(sha)
        if prior is not None:
            p_hotkey, p_round = prior
            if p_round < round or (p_round == round and p_hotkey != ev.hotkey and p_hotkey not in hotkeys_here):
                copied, copied_round = p_hotkey, p_round
                a["reasons"].append(f"contribution is identical to {p_hotkey}'s of round {p_round}")
        if copied is None:
            for o_hotkey, o_sha, o_vec, o_norm in originals:
                if o_sha == sha:
                    copied, copied_round = o_hotkey, round
                    a["reasons"].append(f"contribution is identical to {o_hotkey}'s of this round")
                    break
                if vnorm > 0 and o_norm > 0:
                    cos = float(torch.dot(vec, o_vec)) / (vnorm * o_norm)
                    if cos >= COPY_COSINE:
                        copied, copied_round = o_hotkey, round
                        a["reasons"].append(
                            f"contribution is a near-copy (cosine {cos:.5f}) of {o_hotkey}'s of this round"
                        )
                        break
        a["copied_from"], a["copied_round"] = copied, copied_round
        originals.append((ev.hotkey, sha, vec, vnorm))
        if prior is None or prior[1] > round:
            seen_contributions[sha] = (ev.hotkey, round)

    return [Audit(**{**results[ev.hotkey], "reasons": tuple(results[ev.hotkey]["reasons"])}) for ev in evidence]
