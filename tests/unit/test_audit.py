"""template.validator.audit on a real (tiny) diloco run.

A swarm of five ``Trainer`` ranks (tiny preset, the preset's run defaults: H = 20, batch 8, seq_len
64) trains three rounds in this process: each rank runs in a thread and the rank's all-gather of raw
contribution bytes is replaced by an in-memory exchange (``template.engine.exchange.InMemoryExchange``), so everything else
— inner AdamW steps on ``batch_offsets`` batches, int8 error-feedback compression, signatures,
screening, robust aggregation, the Nesterov outer step — is the production code, and every rank ends
each round with the same state hash. Ranks 0–2 are honest; rank 3 trains honestly and lies in its
receipt (loss-liar); rank 4 trains honestly and serves its Δ negated (sign-flip). The free-rider,
noise, copier, near-copier and stale miners never train: their evidence is crafted here from the run's
data, and the swarm's receipts are made to attest it (as if they had sent those bytes to their peers).
Adversaries live in this file only. Updates crafted from other miners' work (ALIE, inner-product
manipulation, noised replays) and a miner that trains only on the old audit's steps are in
tests/unit/test_audit_scores.py.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import random
import threading

import pytest
import torch

from template.config.presets import RUN_DEFAULTS
from template.config.presets import get as get_preset
from template.config.run import TrainingConfig
from template.data.corpus import build_dataset
from template.data.sampling import batch_offsets, windows_to_tensor
from template.data.store import shard_reader
from template.engine.aggregation import vector_norm
from template.engine.compression import Compressed, compress, param_spec
from template.engine.exchange import InMemoryExchange
from template.engine.model import init_model
from template.engine.state import load_model
from template.engine.trainer import Trainer
from template.validator.audit import (
    FIRST_LOSS_ABS_TOL,
    REPLAY_COSINE,
    Audit,
    Evidence,
    audit_round,
    first_loss_tolerance,
)
from template.validator.scoring import round_scores
from template.wire.receipts import Receipt
from template.wire.signing import sign_receipt

RUN_ID = "run-audit"
GENERATION = 0
ROUNDS = 3
CFG = TrainingConfig(preset="tiny", seq_len=64, **RUN_DEFAULTS["tiny"])  # H=20, batch 8, int8, trimmed mean
H = CFG.inner_steps
HELDOUT = CFG.batch_size  # one batch of held-out windows per audit
SECRET = bytes(range(32))  # the validator's audit secret in these tests

SWARM = ["honest-0", "honest-1", "honest-2", "liar", "signflip"]
OTHERS = ["freerider", "noise", "copier", "nearcopy", "stale"]


def _keypair(name: str):
    from bittensor.sp_core import Keypair

    return Keypair.create_from_uri(f"//tensorswarm-audit-{name}")


KEYS = {name: _keypair(name) for name in SWARM + OTHERS}
HK = {name: k.ss58_address for name, k in KEYS.items()}
RANK = {name: i for i, name in enumerate(SWARM + OTHERS)}


def _corpus(size: int = 96 * 1024) -> bytes:
    """English-like text with learnable byte statistics, deterministic."""
    rng = random.Random(7)
    words = [
        "the",
        "a",
        "miner",
        "validator",
        "trains",
        "model",
        "round",
        "state",
        "loss",
        "batch",
        "every",
        "each",
        "small",
        "large",
        "byte",
        "network",
        "weight",
        "gradient",
        "step",
        "good",
        "bad",
        "quick",
        "slow",
        "river",
        "mountain",
        "city",
        "garden",
        "window",
        "reads",
        "writes",
        "keeps",
        "sends",
        "checks",
        "counts",
        "learns",
        "remembers",
        "finds",
        "builds",
    ]
    out, n = [], 0
    while n < size:
        k = rng.randint(5, 12)
        s = " ".join(rng.choice(words) for _ in range(k)).capitalize() + rng.choice([".", ".", "!", "?"]) + " "
        if rng.random() < 0.15:
            s += "\n"
        out.append(s)
        n += len(s)
    return "".join(out).encode()[:size]


def _batcher(manifest, read, hotkey: str, round_: int, cfg: TrainingConfig = CFG):
    def batch(step: int) -> torch.Tensor:
        offsets = batch_offsets(
            manifest,
            seed=cfg.seed,
            round=round_,
            hotkey=hotkey,
            step=step,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
        )
        return windows_to_tensor(read, offsets, cfg.seq_len)

    return batch


def _trainers(names: list[str], cfg: TrainingConfig = CFG) -> list[Trainer]:
    ex = InMemoryExchange(len(names))
    out = []
    for rank, name in enumerate(names):
        t = Trainer(
            cfg,
            rank=rank,
            world_size=len(names),
            peers=[HK[n] for n in names],
            sign=KEYS[name].sign,
            context=f"{RUN_ID}/{GENERATION}",
            exchange=ex.bind(rank),
        )
        t.test_exchange = ex
        out.append(t)
    return out


def _run_parallel(trainers, fn):
    results, errors = [None] * len(trainers), []

    def work(i):
        try:
            results[i] = fn(i, trainers[i])
        except BaseException as e:  # surface it in the test, and free the others
            errors.append(e)
            trainers[i].test_exchange.barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(trainers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors, errors
    return results


def _signed(name, round_, *, start, end, losses, contribution, norm=None, **override):
    fields = dict(
        hotkey=HK[name],
        run_id=RUN_ID,
        generation=GENERATION,
        round=round_,
        rank=RANK[name],
        start_state=start,
        end_state=end,
        seed=CFG.seed,
        losses=list(losses),
        contribution_sha256=hashlib.sha256(contribution).hexdigest(),
        contribution_norm=norm,
        contribution_bytes=len(contribution),
        created_at=1.0,
    )
    fields.update(override)
    return sign_receipt(Receipt(**fields), KEYS[name].sign)


def _decompressed(data: bytes, spec) -> dict[str, torch.Tensor]:
    return Compressed.from_bytes(data, spec).decompress()


def _compressed(delta) -> bytes:
    return compress(delta, CFG.compression, fraction=CFG.topk_fraction).to_bytes()


def _cos(a, b) -> float:
    x = torch.cat([a[n].reshape(-1) for n in sorted(a)]).double()
    y = torch.cat([b[n].reshape(-1) for n in sorted(b)]).double()
    return float(x @ y / (x.norm() * y.norm()))


@dataclasses.dataclass
class Run:
    cfg: TrainingConfig
    manifest: object
    read: object
    spec: dict
    starts: list  # state bytes at the start of each round (None: seed init)
    hashes: list  # state hash at the start of each round, then the final one
    results: list  # per round: {name: RoundResult}
    step0_train_loss: dict  # (name, round) -> loss the Trainer reported for step 0 (train mode, grad on)


def _swarm(cfg: TrainingConfig, names: list[str], rounds: int) -> Run:
    manifest, shards = build_dataset("audit-test", _corpus(), shard_size=8 * 1024, heldout_fraction=0.2)
    read = shard_reader(manifest, shards.__getitem__)
    spec = param_spec(dict(init_model(get_preset(cfg.preset), cfg.seed).named_parameters()))
    trainers = _trainers(names, cfg)
    initial = {t.load(None) for t in trainers}
    assert len(initial) == 1
    starts, hashes, results, step0 = [None], [initial.pop()], [], {}
    for r in range(rounds):

        def one(i, t, r=r):
            return t.run_round(r, _batcher(manifest, read, HK[names[i]], r, cfg))

        res = _run_parallel(trainers, one)
        assert len({x.state_hash for x in res}) == 1, "ranks disagree"
        assert all(not x.dropped for x in res), [x.dropped for x in res]
        results.append(dict(zip(names, res)))
        hashes.append(res[0].state_hash)
        starts.append(trainers[0].state_bytes())
        for name, x in zip(names, res):
            step0[(name, r)] = x.losses[0]
    curve = [sum(sum(x.losses) / len(x.losses) for x in rr.values()) / len(rr) for rr in results]
    print(f"swarm ({cfg.compression}) mean loss per round:", [round(c, 3) for c in curve])
    return Run(cfg, manifest, read, spec, starts, hashes, results, step0)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: the swarm's ranks are Python threads already, and on a small shared
    machine OpenMP spin-waiting would otherwise dominate both the run time and the cost measurement."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run() -> Run:
    return _swarm(CFG, SWARM, ROUNDS)


def _honest_evidence(run: Run, name: str, r: int) -> Evidence:
    x = run.results[r][name]
    receipt = _signed(
        name,
        r,
        start=None if r == 0 else run.hashes[r],
        end=run.hashes[r + 1],
        losses=x.losses,
        contribution=x.contribution,
        norm=x.contribution_norm,
    )
    return Evidence(HK[name], RANK[name], receipt, x.contribution)


def _step0_loss(run: Run, name: str, r: int) -> float:
    """What an adversary that does no training can still report exactly: its step-0 loss at θ_r."""
    model, _, _ = load_model(run.cfg, run.starts[r])
    model.eval()
    xy = _batcher(run.manifest, run.read, HK[name], r, run.cfg)(0)
    with torch.no_grad():
        return float(model(xy[:, :-1], xy[:, 1:])[1])


def _crafted(run: Run, name: str, r: int, contribution: bytes, losses=None) -> Evidence:
    """An adversary's evidence: a valid signed receipt for ``contribution`` whose losses look honest
    (exact step 0, then honest-0's trajectory shifted to start there)."""
    if losses is None:
        l0 = _step0_loss(run, name, r)
        ref = run.results[r]["honest-0"].losses
        losses = [l0 + (v - ref[0]) for v in ref]
    norm = vector_norm(_decompressed(contribution, run.spec))
    receipt = _signed(
        name,
        r,
        start=None if r == 0 else run.hashes[r],
        end=run.hashes[r + 1],
        losses=losses,
        contribution=contribution,
        norm=norm,
    )
    return Evidence(HK[name], RANK[name], receipt, contribution)


def _members(run: Run, r: int) -> list[str]:
    """The round's members in rank order: the swarm's ranks, then (for the main swarm) the crafted miners."""
    names = list(run.results[r])
    return names + (OTHERS if names == SWARM else [])


def _attesting_receipts(run: Run, r: int, evidence: list[Evidence]):
    """Receipts of every swarm rank listing what it received: the swarm's contributions, and for the
    crafted miners outside the swarm (ranks 5…) the bytes they serve — as if they had sent them."""
    served = {e.rank: e.receipt.receipt.contribution_sha256 for e in evidence if e.receipt is not None}
    names = list(run.results[r])
    extra = [served.get(RANK[n]) for n in _members(run, r)[len(names) :]]
    out = []
    for name in names:
        x = run.results[r][name]
        out.append(
            _signed(
                name,
                r,
                start=None if r == 0 else run.hashes[r],
                end=run.hashes[r + 1],
                losses=x.losses,
                contribution=x.contribution,
                norm=x.contribution_norm,
                received_sha256=list(x.received) + extra,
            )
        )
    return out


def _audit(run: Run, r: int, evidence: list[Evidence], seen: dict, *, attest: bool = True, **kw) -> dict[str, Audit]:
    """audit_round as a validator calls it; ``attest``: the swarm's receipts attest the served bytes."""
    args = dict(
        training=run.cfg,
        manifest=run.manifest,
        read_shard=run.read,
        start_state=run.starts[r],
        agreed_start=None if r == 0 else run.hashes[r],
        agreed_end=run.hashes[r + 1],
        run_id=RUN_ID,
        generation=GENERATION,
        round=r,
        evidence=evidence,
        heldout_count=HELDOUT,
        secret=SECRET,
        seen_contributions=seen,
    )
    if attest:
        args["members"] = [HK[n] for n in _members(run, r)]
        args["peer_receipts"] = _attesting_receipts(run, r, evidence)
    args.update(kw)
    audits = audit_round(**args)
    assert [a.hotkey for a in audits] == [e.hotkey for e in evidence]
    return {name: a for name in SWARM + OTHERS for a in audits if a.hotkey == HK[name]}


def _round1_evidence(run: Run) -> list[Evidence]:
    r = 1
    ev = [_honest_evidence(run, n, r) for n in ("honest-0", "honest-1", "honest-2")]
    liar = run.results[r]["liar"]
    ev.append(
        Evidence(
            HK["liar"],
            RANK["liar"],
            _signed(
                "liar",
                r,
                start=run.hashes[r],
                end=run.hashes[r + 1],
                losses=[0.8 * v for v in liar.losses],
                contribution=liar.contribution,
                norm=liar.contribution_norm,
            ),
            liar.contribution,
        )
    )
    flip = run.results[r]["signflip"]
    neg = _compressed({n: -t for n, t in _decompressed(flip.contribution, run.spec).items()})
    ev.append(_crafted(run, "signflip", r, neg, losses=flip.losses))
    zeros = {n: torch.zeros(s) for n, s in run.spec.items()}
    ev.append(_crafted(run, "freerider", r, _compressed(zeros)))
    honest = _decompressed(run.results[r]["honest-0"].contribution, run.spec)
    g = torch.Generator().manual_seed(5)
    noise = {n: torch.randn(s, generator=g) for n, s in run.spec.items()}
    scale = vector_norm(honest) / vector_norm(noise)
    ev.append(_crafted(run, "noise", r, _compressed({n: t * scale for n, t in noise.items()})))
    ev.append(_crafted(run, "copier", r, run.results[r]["honest-1"].contribution))
    jitter = {n: t + 0.01 * scale * torch.randn(t.shape, generator=g) for n, t in honest.items()}
    ev.append(_crafted(run, "nearcopy", r, _compressed(jitter)))
    return ev


@pytest.fixture(scope="module")
def audited(run: Run):
    """Rounds 0, 1, 2 audited in order with one persisted ``seen`` map, as a validator would."""
    seen: dict = {}
    out = {}
    out[0] = _audit(run, 0, [_honest_evidence(run, n, 0) for n in ("honest-0", "honest-1", "honest-2")], seen)
    out[1] = _audit(run, 1, _round1_evidence(run), seen)
    r = 2
    ev = [_honest_evidence(run, n, r) for n in ("honest-0", "honest-1", "honest-2")]
    ev.append(_crafted(run, "stale", r, run.results[1]["honest-2"].contribution))  # replays round 1
    out[2] = _audit(run, r, ev, seen)
    for r_, audits in out.items():
        for name, a in audits.items():
            print(
                f"round {r_} {name:9s} passed={a.passed!s:5s} attested={a.attested!s:5s} "
                f"first={a.loss_first_claimed} rec={a.loss_first_recomputed} last={a.loss_last_claimed} "
                f"start_last={a.loss_last_start} eval_last={a.loss_last_evaluated} own={a.own_gain} "
                f"spec={a.specificity} held={a.heldout_gain} norm={a.norm} "
                f"copied={a.copied_from and a.copied_from[:8]} reasons={a.reasons}"
            )
    return out, seen


# -- honest ------------------------------------------------------------------------------------------


def test_honest_miners_pass_every_check_with_positive_gains(run, audited):
    out, _ = audited
    for r in range(ROUNDS):
        for name in ("honest-0", "honest-1", "honest-2"):
            a = out[r][name]
            assert a.passed, (r, name, a.reasons)
            assert a.reasons == ()
            assert a.own_gain > 0 and a.heldout_gain > 0, (r, name, a)
            # The step-0 replay is exact on one machine (train mode + grad vs eval + no_grad).
            assert abs(a.loss_first_claimed - a.loss_first_recomputed) <= 1e-6, (r, name, a)
            assert a.loss_first_claimed == run.step0_train_loss[(name, r)]
            assert a.norm == pytest.approx(run.results[r][name].contribution_norm, rel=1e-9)


def test_honest_margins_and_cosines_are_far_from_the_thresholds(run, audited):
    out, _ = audited
    slack = []
    for r in range(ROUNDS):
        for name in ("honest-0", "honest-1", "honest-2"):
            a = out[r][name]
            slack.append(a.loss_last_claimed - a.loss_last_evaluated)
    print("honest last-step claimed − evaluated (nats):", [round(s, 4) for s in slack])
    # Every swarm rank trains honestly (the liar and the sign-flipper tamper with what they serve only).
    ds = [{n: _decompressed(run.results[r][n].contribution, run.spec) for n in SWARM} for r in range(ROUNDS)]
    same = [_cos(d[a], d[b]) for d in ds for a in SWARM for b in SWARM if a < b]
    cross = [_cos(ds[r][a], ds[q][b]) for r in range(ROUNDS) for q in range(r) for a in SWARM for b in SWARM]
    print(
        f"honest Δ cosines: same round {min(same):.4f}..{max(same):.4f}, across rounds {min(cross):.4f}..{max(cross):.4f}"
    )
    # The near-replay check needs an earlier round's update to sit far above REPLAY_COSINE for a replay and
    # far below it for honest work, and an honest update's cosine with its own round's peers to be above
    # its cosines with earlier rounds (then the margin never flags it).
    assert max(cross) < REPLAY_COSINE - 0.2
    assert min(same) > max(cross)


def test_honest_miners_pass_under_topk_compression():
    """Top-k sends a fraction of Δ + residual, so θ_r − Δ_sent realises only part of the progress the
    receipt's losses show: the last-step margin scales with 1/fraction and honest miners still pass."""
    cfg = CFG.model_copy(update={"compression": "topk_int8", "topk_fraction": 0.1})
    names = ["honest-0", "honest-1", "honest-2"]
    run = _swarm(cfg, names, 2)
    seen: dict = {}
    for r in range(2):
        out = _audit(run, r, [_honest_evidence(run, n, r) for n in names], seen)
        for n in names:
            a = out[n]
            assert a.passed and a.heldout_gain > 0 and a.own_gain > 0, (r, n, a.reasons)
            print(
                f"top-k round {r} {n}: claimed progress {a.loss_last_start - a.loss_last_claimed:.3f} "
                f"vs realised {a.loss_last_start - a.loss_last_evaluated:.3f}"
            )


def test_step0_tolerance_dwarfs_float32_rounding(run):
    """The step-0 tolerance (1e-3) against the float32 rounding of the forward pass, measured as the
    distance of the float32 loss from the same forward in float64 (any correct float32 implementation
    — another BLAS, thread count or a GPU — lands within about that distance of the float64 value) and
    between 1 and 2 intra-op threads (different reduction splits)."""
    r = 1
    model, _, _ = load_model(CFG, run.starts[r])
    model.eval()
    model64 = copy.deepcopy(model).double()
    worst64, worst_threads = 0.0, 0.0
    for name in SWARM:
        xy = _batcher(run.manifest, run.read, HK[name], r)(0)
        with torch.no_grad():
            l32 = float(model(xy[:, :-1], xy[:, 1:])[1])
            l64 = float(model64(xy[:, :-1], xy[:, 1:])[1])
            torch.set_num_threads(2)
            try:
                l32b = float(model(xy[:, :-1], xy[:, 1:])[1])
            finally:
                torch.set_num_threads(1)
        worst64 = max(worst64, abs(l32 - l64))
        worst_threads = max(worst_threads, abs(l32 - l32b))
    print(
        f"step-0 loss: |float32 − float64| ≤ {worst64:.2e}, |1 thread − 2 threads| ≤ {worst_threads:.2e} "
        f"(tolerance {FIRST_LOSS_ABS_TOL:g})"
    )
    assert worst64 < FIRST_LOSS_ABS_TOL / 20 and worst_threads < FIRST_LOSS_ABS_TOL / 20


def test_seed_init_start_is_rebuilt_and_checked(run, audited):
    out, _ = audited
    assert all(out[0][n].passed for n in ("honest-0", "honest-1", "honest-2"))
    # A receipt may name the seed init by its hash as well as by None.
    ev = _honest_evidence(run, "honest-0", 0)
    rec = ev.receipt.receipt.model_copy(update={"start_state": run.hashes[0]})
    ev = Evidence(ev.hotkey, ev.rank, sign_receipt(rec, KEYS["honest-0"].sign), ev.contribution)
    assert _audit(run, 0, [ev], {})["honest-0"].passed
    with pytest.raises(ValueError, match="agreed start"):
        _audit(run, 1, [ev], {}, agreed_start=run.hashes[2])  # bytes that do not hash to it
    with pytest.raises(ValueError, match="round"):
        _audit(run, 2, [ev], {}, start_state=run.starts[1], agreed_start=run.hashes[1])


# -- adversaries -------------------------------------------------------------------------------------


def test_loss_liar_fails_the_step0_check(audited):
    a = audited[0][1]["liar"]
    assert a.receipt_ok and a.contribution_ok
    assert a.loss_first_ok is False
    assert a.loss_first_recomputed - a.loss_first_claimed > first_loss_tolerance(a.loss_first_recomputed)
    assert not a.passed and any("step-0" in s for s in a.reasons)


def test_careful_loss_liar_fails_the_last_step_check(run):
    """Step 0 honest (it is exactly replayable), every later loss 20% lower."""
    for r in (1, 2):
        x = run.results[r]["liar"]
        losses = [x.losses[0]] + [0.8 * v for v in x.losses[1:]]
        ev = Evidence(
            HK["liar"],
            RANK["liar"],
            _signed(
                "liar",
                r,
                start=run.hashes[r],
                end=run.hashes[r + 1],
                losses=losses,
                contribution=x.contribution,
                norm=x.contribution_norm,
            ),
            x.contribution,
        )
        a = _audit(run, r, [ev], {})["liar"]
        assert a.loss_first_ok is True
        assert a.loss_last_ok is False, a
        assert a.loss_last_contradicted, a  # 20 % of a loss is far past the margin: proof, not a marginal miss
        assert not a.passed
        # …and the same miner telling the truth passes.
        assert _audit(run, r, [_honest_evidence(run, "liar", r)], {})["liar"].passed


def test_free_rider_gains_nothing(audited):
    a = audited[0][1]["freerider"]
    assert a.receipt_ok and a.contribution_ok and a.loss_first_ok
    assert a.norm == 0.0
    assert a.own_gain == 0.0 and a.heldout_gain == 0.0
    assert a.heldout_gains == (0.0,) * len(a.heldout_gains) and len(a.heldout_gains) > 1


def test_the_heldout_gain_is_the_mean_of_the_per_window_gains(audited):
    """The harm floor's window noise comes from ``heldout_gains``: one gain per held-out window whose
    mean is the held-out gain, for the same Δ."""
    for a in audited[0][1].values():
        if a.heldout_gains is not None:
            assert a.heldout_gain == pytest.approx(sum(a.heldout_gains) / len(a.heldout_gains), abs=1e-12)
            assert len(set(a.heldout_gains)) > 1 or a.norm == 0.0


@pytest.mark.parametrize("name", ["noise", "signflip"])
def test_noise_and_sign_flip_lose_on_heldout(audited, name):
    a = audited[0][1][name]
    assert a.receipt_ok and a.contribution_ok and a.loss_first_ok
    assert a.heldout_gain < 0 and a.own_gain < 0, a
    honest = audited[0][1]["honest-0"]
    assert a.norm == pytest.approx(honest.norm, rel=0.02 if name == "noise" else 0.5)


def test_copier_is_flagged_and_a_near_copy_is_not_paid(run, audited):
    """Identical bytes are a copy. A same-round near-copy (another miner's Δ plus a little noise) is no
    longer flagged by similarity — honest updates of a wrecked model are nearly parallel too — but it is
    not specific to the copier's own batches, so it earns nothing (test_round_scores_reward_honest_work_only)."""
    out, _ = audited
    assert out[1]["copier"].copied_from == HK["honest-1"] and out[1]["copier"].copy_cosine is None
    assert out[1]["honest-1"].copied_from is None and out[1]["honest-0"].copied_from is None
    assert not out[1]["copier"].passed
    near = out[1]["nearcopy"]
    assert near.copied_from is None and near.passed and near.attested is True
    victim = _decompressed(run.results[1]["honest-0"].contribution, run.spec)
    served = _decompressed(_round1_evidence(run)[-1].contribution, run.spec)
    assert _cos(victim, served) > 0.999  # what the old same-round cosine check flagged
    honest = [out[1][n].specificity for n in ("honest-0", "honest-1", "honest-2")]
    assert near.specificity < 0.3 * min(honest), (near.specificity, honest)


def test_without_attestations_the_lower_rank_wins(run):
    x = run.results[1]["honest-1"]
    original = _honest_evidence(run, "honest-1", 1)
    lower = Evidence(
        HK["honest-0"],
        0,
        _signed(
            "honest-0",
            1,
            start=run.hashes[1],
            end=run.hashes[2],
            losses=run.results[1]["honest-0"].losses,
            contribution=x.contribution,
            norm=x.contribution_norm,
            rank=0,
        ),
        x.contribution,
    )
    audits = _audit(run, 1, [original, lower], {}, attest=False)  # order given does not matter, rank does
    assert audits["honest-0"].copied_from is None
    assert audits["honest-1"].copied_from == HK["honest-0"]


def test_attestation_verdicts():
    from template.validator.audit import MIN_ATTESTERS, attestation_problem

    assert MIN_ATTESTERS == 2
    assert attestation_problem("a", ["a", "a", "b"]) == (True, None)
    verdict, why = attestation_problem("a", ["b", "b", "a"])
    assert verdict is False and "2 of 3" in why
    # One peer alone cannot fail anyone, and a split proves nothing either way: unverifiable (None,
    # with the reason), which scores 0 for the round without the reset of a proven cheat.
    for split in (["b"], ["b", "a"]):
        verdict, why = attestation_problem("a", split)
        assert verdict is None and "unverifiable" in why
    # Ranks that got nothing validly signed from it (it may have sent them garbage, or a link failed) are
    # not evidence against it while another peer holds the bytes; other validly signed bytes are.
    assert attestation_problem("a", [None, None, "a"]) == (True, None)
    assert attestation_problem("a", [None, "b", "b", "a"])[0] is False
    # Attesters exist but none of them holds valid bytes from it: what it served reached nobody.
    verdict, why = attestation_problem("a", [None, None, None])
    assert verdict is False and "none of its 3" in why
    # No attester's receipt at all: unverifiable.
    verdict, why = attestation_problem("a", [])
    assert verdict is None and "no attesting peer" in why


def _attested_evidence(run: Run, name: str, r: int, contribution: bytes, norm) -> Evidence:
    """``name``'s receipt for round r, listing what it really received, but serving ``contribution``."""
    x = run.results[r][name]
    receipt = _signed(
        name,
        r,
        start=run.hashes[r],
        end=run.hashes[r + 1],
        losses=x.losses,
        contribution=contribution,
        norm=norm,
        received_sha256=x.received,
    )
    return Evidence(HK[name], RANK[name], receipt, contribution)


def test_peers_attest_who_sent_what_so_a_lower_ranked_copier_is_caught(run):
    r = 1
    members = [HK[n] for n in SWARM]
    res = run.results[r]
    # Every rank received every other rank's validly signed bytes, and they are what each one kept.
    for name in SWARM:
        assert res[name].received == [res[n].contribution_sha256 for n in SWARM]
    victim = res["honest-1"]
    # honest-0 (rank 0) re-serves honest-1's (rank 1) bytes; by rank alone the victim would be flagged.
    copier = _attested_evidence(run, "honest-0", r, victim.contribution, victim.contribution_norm)
    original = _attested_evidence(run, "honest-1", r, victim.contribution, victim.contribution_norm)
    peers = [
        _attested_evidence(run, n, r, res[n].contribution, res[n].contribution_norm).receipt
        for n in ("honest-2", "liar", "signflip")
    ]
    audits = _audit(run, r, [copier, original], {}, members=members, peer_receipts=peers)
    assert audits["honest-1"].attested is True and audits["honest-1"].passed, audits["honest-1"].reasons
    assert audits["honest-1"].copied_from is None
    assert audits["honest-0"].attested is False and not audits["honest-0"].passed
    assert audits["honest-0"].copied_from == HK["honest-1"]
    assert any("not what it sent" in why for why in audits["honest-0"].reasons)
    # A peer receipt that fails the receipt checks (wrong round here) attests nothing.
    bogus = [
        _signed(
            n,
            r + 1,
            start=run.hashes[r],
            end=run.hashes[r + 1],
            losses=res[n].losses,
            contribution=res[n].contribution,
            received_sha256=[None] * len(SWARM),
        )
        for n in ("honest-2", "liar", "signflip")
    ]
    audits = _audit(run, r, [original], {}, members=members, peer_receipts=bogus)
    assert audits["honest-1"].attested is None and audits["honest-1"].passed


def test_stale_replays_are_flagged_and_seen_is_updated(run, audited):
    out, seen = audited
    assert out[2]["stale"].copied_from == HK["honest-2"]
    assert any("round 1" in s for s in out[2]["stale"].reasons)
    # A miner replaying its *own* old contribution is stale too.
    x = run.results[1]["honest-0"]
    ev = _crafted(run, "honest-0", 2, x.contribution, losses=run.results[2]["honest-0"].losses)
    again = dict(seen)
    assert _audit(run, 2, [ev], again)["honest-0"].copied_from == HK["honest-0"]
    # seen maps every attributable contribution to the first (hotkey, round) that served it.
    for r in range(ROUNDS):
        for name in ("honest-0", "honest-1", "honest-2"):
            assert seen[run.results[r][name].contribution_sha256] == (HK[name], r)
    # Re-auditing a round with the same seen map does not flag anyone against themselves.
    honest = [_honest_evidence(run, n, 2) for n in ("honest-0", "honest-1", "honest-2")]
    assert all(a.passed for a in _audit(run, 2, honest, dict(seen)).values())


def test_tampered_receipt_and_wrong_states_fail_receipt_ok(run):
    r = 1
    ev = _honest_evidence(run, "honest-0", r)
    forged = ev.receipt.model_copy(update={"receipt": ev.receipt.receipt.model_copy(update={"losses": [1.0] * H})})
    x = run.results[r]["honest-0"]
    cases = {
        "tampered": Evidence(ev.hotkey, ev.rank, forged, ev.contribution),
        "end": Evidence(
            ev.hotkey,
            ev.rank,
            _signed(
                "honest-0", r, start=run.hashes[r], end=run.hashes[r], losses=x.losses, contribution=x.contribution
            ),
            x.contribution,
        ),
        "start": Evidence(
            ev.hotkey,
            ev.rank,
            _signed(
                "honest-0", r, start=run.hashes[0], end=run.hashes[r + 1], losses=x.losses, contribution=x.contribution
            ),
            x.contribution,
        ),
        "round": Evidence(
            ev.hotkey,
            ev.rank,
            _signed(
                "honest-0",
                r,
                start=run.hashes[r],
                end=run.hashes[r + 1],
                losses=x.losses,
                contribution=x.contribution,
                round=0,
            ),
            x.contribution,
        ),
        "other's": Evidence(HK["honest-1"], ev.rank, ev.receipt, ev.contribution),  # served as someone else
    }
    for what, case in cases.items():
        a = audit_round(
            training=CFG,
            manifest=run.manifest,
            read_shard=run.read,
            start_state=run.starts[r],
            agreed_start=run.hashes[r],
            agreed_end=run.hashes[r + 1],
            run_id=RUN_ID,
            generation=GENERATION,
            round=r,
            evidence=[case],
            heldout_count=HELDOUT,
            secret=SECRET,
            seen_contributions={},
        )[0]
        assert a.receipt_ok is False and not a.passed, what
        assert a.reasons, what
    assert (
        "signature"
        in audit_round(
            training=CFG,
            manifest=run.manifest,
            read_shard=run.read,
            start_state=run.starts[r],
            agreed_start=run.hashes[r],
            agreed_end=run.hashes[r + 1],
            run_id=RUN_ID,
            generation=GENERATION,
            round=r,
            evidence=[cases["tampered"]],
            heldout_count=HELDOUT,
            secret=SECRET,
            seen_contributions={},
        )[0].reasons[0]
    )


def test_bad_or_missing_contributions(run):
    r = 1
    x = run.results[r]["honest-0"]
    other = run.results[r]["honest-1"].contribution
    garbage = bytes(len(x.contribution))
    cases = {
        "swapped bytes": Evidence(HK["honest-0"], 0, _honest_evidence(run, "honest-0", r).receipt, other),
        "garbage": Evidence(
            HK["honest-0"],
            0,
            _signed("honest-0", r, start=run.hashes[r], end=run.hashes[r + 1], losses=x.losses, contribution=garbage),
            garbage,
        ),
        "wrong norm": Evidence(
            HK["honest-0"],
            0,
            _signed(
                "honest-0",
                r,
                start=run.hashes[r],
                end=run.hashes[r + 1],
                losses=x.losses,
                contribution=x.contribution,
                norm=2 * x.contribution_norm,
            ),
            x.contribution,
        ),
    }
    for what, case in cases.items():
        a = _audit(run, r, [case], {})["honest-0"]
        assert a.served and a.receipt_ok and a.contribution_ok is False and not a.passed, (what, a)
    missing = Evidence(HK["honest-0"], 0, _honest_evidence(run, "honest-0", r).receipt, None)
    a = _audit(run, r, [missing], {})["honest-0"]
    assert not a.served and not a.passed and a.loss_first_ok is True  # the step-0 claim is still checked
    a = _audit(run, r, [Evidence(HK["honest-0"], 0, None, None)], {})["honest-0"]
    assert not a.served and not a.receipt_ok and a.reasons


# -- scores on the real audits -------------------------------------------------------------------------


def test_round_scores_reward_honest_work_only(run, audited):
    """Pay needs evidence of work: specificity to the miner's own batches (secret gain steps), here from
    one round alone (a validator accumulates it over rounds: tests/unit/test_audit_scores.py). A round
    whose specificities are within two or three standard errors (early rounds of this small swarm) pays
    little or nothing (round 1 here); a round that shows work pays the honest miners and nobody else.
    Every failure scores 0."""
    out, _ = audited
    for r in (1, 2):
        audits = list(out[r].values())
        reported = {
            a.hotkey: list(ev_losses)
            for a, ev_losses in (
                (a, run.results[r][n].losses if n in SWARM else [a.loss_first_claimed] * H) for n, a in out[r].items()
            )
        }
        scores = round_scores(audits, reported)
        print(f"round {r} scores:", {n: round(scores[a.hotkey], 3) for n, a in out[r].items()})
        for n, a in out[r].items():
            if not n.startswith("honest"):
                assert scores[a.hotkey] == 0.0, (n, a)
        honest = [scores[HK[n]] for n in ("honest-0", "honest-1", "honest-2")]
        if r == 2:  # the specificity of honest work is well above the noise by then: all are paid
            assert min(honest) > 0 and sum(honest) / len(honest) > 0.5
