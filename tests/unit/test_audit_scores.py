"""Scores pay for work on the miner's own batches: measured on a real in-process tiny swarm.

Seven ``Trainer`` ranks (tiny preset, its run defaults: H = 20, batch 8, int8, trimmed mean) train
ROUNDS rounds in threads over the in-memory exchange, as tests/unit/test_audit.py builds them: six
honest, and one that trains only on the batches the old audit checked — steps {0, H/2, H−1}, repeated
(a test-only ``DiLoCo`` subclass). Colluders outside the swarm serve validly signed updates crafted from
the round's honest work, with honest-looking losses (exact step 0, a last step just above what their
update gives), and the swarm's receipts attest their bytes (they are what they "sent"):

- ALIE: the honest mean − z·σ per coordinate (z = 1);
- IPM: −ε × the honest mean (ε = 0.5, inner-product manipulation);
- replay: honest-2's update of the previous round + noise of 20 % of its norm, re-compressed;
- nearcopy: honest-1's update of this round + noise of 20 % of its norm, re-compressed.

A validator audits every member each round (one persisted ``seen`` map and sketch history), scores the
round and keeps the EMA. Adversaries live in this file only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics

import pytest
import torch

from template.config.presets import RUN_DEFAULTS
from template.config.presets import get as get_preset
from template.config.run import TrainingConfig
from template.data.corpus import build_dataset
from template.data.store import shard_reader
from template.engine.aggregation import vector_norm
from template.engine.compression import Compressed, compress, param_spec
from template.engine.exchange import InMemoryExchange
from template.engine.model import init_model
from template.engine.state import load_model
from template.engine.strategies.diloco import DiLoCo
from template.engine.trainer import Trainer
from template.validator.audit import Evidence, audit_round
from template.validator.checks.copies import REPLAY_COSINE
from template.validator.scoring import evidence_z, proven_cheats, round_scores, update_ema, update_evidence
from template.wire.receipts import Receipt
from template.wire.signing import sign_receipt
from tests.unit.test_audit import _batcher, _corpus, _run_parallel

RUN_ID = "run-audit-scores"
GENERATION = 0
ROUNDS = 6
CFG = TrainingConfig(preset="tiny", seq_len=64, **RUN_DEFAULTS["tiny"])
H = CFG.inner_steps
OLD_STEPS = (0, H // 2, H - 1)  # what the old audit always checked
SECRET = bytes(range(100, 132))
HONEST = [f"honest-{i}" for i in range(6)]
SWARM = HONEST + ["steps-only"]
CRAFTED = ["alie", "ipm", "replay", "nearcopy"]
NAMES = SWARM + CRAFTED
ALPHA = 0.3  # the validator's default EMA


def _keypair(name: str):
    from bittensor.sp_core import Keypair

    return Keypair.create_from_uri(f"//tensorswarm-audit-scores-{name}")


KEYS = {name: _keypair(name) for name in NAMES}
HK = {name: k.ss58_address for name, k in KEYS.items()}
RANK = {name: i for i, name in enumerate(NAMES)}


class TrainsOnOldAuditedSteps(DiLoCo):
    """Trains H steps, but only ever on the batches of steps 0, H/2 and H−1 (its step 0 and step H−1 use
    their own batches, so its loss claims check out)."""

    def train(self, round, batch):
        def gamed(step: int) -> torch.Tensor:
            return batch(step if step in (0, H - 1) else OLD_STEPS[step % 3])

        return super().train(round, gamed)


@dataclasses.dataclass
class Swarm:
    manifest: object
    read: object
    spec: dict
    starts: dict  # round -> state bytes at its start (None: the seed init)
    hashes: dict  # round -> state hash at its start (round + 1: at its end)
    results: dict  # round -> {name: RoundResult}


def _trainers(names: list[str], starts: bytes | None = None) -> list[Trainer]:
    ex = InMemoryExchange(len(names))
    out = []
    for rank, name in enumerate(names):
        t = Trainer(
            CFG,
            rank=rank,
            world_size=len(names),
            peers=[HK[n] for n in names],
            sign=KEYS[name].sign,
            context=f"{RUN_ID}/{GENERATION}",
            exchange=ex.bind(rank),
        )
        if name == "steps-only":
            t.strategy = TrainsOnOldAuditedSteps(t)
        t.test_exchange = ex
        out.append(t)
    return out


def _train(trainers, manifest, read, first: int, rounds: int, swarm: Swarm) -> None:
    for r in range(first, first + rounds):
        res = _run_parallel(trainers, lambda i, t, r=r: t.run_round(r, _batcher(manifest, read, HK[SWARM[i]], r)))
        assert len({x.state_hash for x in res}) == 1, "ranks disagree"
        swarm.results[r] = dict(zip(SWARM, res))
        swarm.hashes[r + 1] = res[0].state_hash
        swarm.starts[r + 1] = trainers[0].state_bytes()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def swarm() -> Swarm:
    manifest, shards = build_dataset("audit-scores", _corpus(), shard_size=8 * 1024, heldout_fraction=0.2)
    read = shard_reader(manifest, shards.__getitem__)
    spec = param_spec(dict(init_model(get_preset(CFG.preset), CFG.seed).named_parameters()))
    trainers = _trainers(SWARM)
    initial = {t.load(None) for t in trainers}
    s = Swarm(manifest, read, spec, {0: None}, {0: initial.pop()}, {})
    _train(trainers, manifest, read, 0, ROUNDS, s)
    return s


# -- the colluders' evidence ------------------------------------------------------------------------


def _dec(data: bytes, spec) -> dict[str, torch.Tensor]:
    return Compressed.from_bytes(data, spec).decompress()


def _comp(delta) -> bytes:
    return compress(delta, CFG.compression, fraction=CFG.topk_fraction).to_bytes()


def _flat(d) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in sorted(d)]).double()


def _cos(a, b) -> float:
    x, y = _flat(a), _flat(b)
    return float(x @ y / (x.norm() * y.norm()))


def _noised(delta, fraction: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    noise = {n: torch.randn(t.shape, generator=g) for n, t in delta.items()}
    scale = fraction * vector_norm(delta) / vector_norm(noise)
    return {n: t + scale * noise[n] for n, t in delta.items()}


def _crafted_bytes(swarm: Swarm, r: int, name: str) -> bytes | None:
    honest = [_dec(swarm.results[r][n].contribution, swarm.spec) for n in HONEST]
    stack = {n: torch.stack([d[n] for d in honest]) for n in swarm.spec}
    if name == "alie":
        return _comp({n: t.mean(0) - 1.0 * t.std(0) for n, t in stack.items()})
    if name == "ipm":
        return _comp({n: -0.5 * t.mean(0) for n, t in stack.items()})
    if name == "nearcopy":
        return _comp(_noised(honest[1], 0.2, seed=r))
    if name == "replay":
        if r == 0:
            return None  # nothing to replay yet
        return _comp(_noised(_dec(swarm.results[r - 1]["honest-2"].contribution, swarm.spec), 0.2, seed=100 + r))
    raise AssertionError(name)


def _signed(name: str, r: int, swarm: Swarm, losses, contribution: bytes, norm, received=()):
    receipt = Receipt(
        hotkey=HK[name],
        run_id=RUN_ID,
        generation=GENERATION,
        round=r,
        rank=RANK[name],
        start_state=None if r == 0 else swarm.hashes[r],
        end_state=swarm.hashes[r + 1],
        seed=CFG.seed,
        losses=list(losses),
        contribution_sha256=hashlib.sha256(contribution).hexdigest(),
        contribution_norm=norm,
        contribution_bytes=len(contribution),
        received_sha256=list(received),
        created_at=1.0,
    )
    return sign_receipt(receipt, KEYS[name].sign)


def _plausible_losses(swarm: Swarm, r: int, name: str, contribution: bytes) -> list[float]:
    """What a careful colluder reports: the exact step-0 loss, and a last-step loss just above what its
    update gives on its last batch (it can compute both), linear in between."""
    model, _, _ = load_model(CFG, swarm.starts[r])
    model.eval()
    batch = _batcher(swarm.manifest, swarm.read, HK[name], r)
    with torch.no_grad():
        xy = batch(0)
        first = float(model(xy[:, :-1], xy[:, 1:])[1])
        for n, p in model.named_parameters():
            p.sub_(_dec(contribution, swarm.spec)[n])
        xy = batch(H - 1)
        last = float(model(xy[:, :-1], xy[:, 1:])[1]) + 0.03
    return [first + (last - first) * s / (H - 1) for s in range(H)]


def _evidence(swarm: Swarm, r: int) -> list[Evidence]:
    crafted = {n: _crafted_bytes(swarm, r, n) for n in CRAFTED}
    # The swarm's receipts attest the colluders' bytes: as if those were what they sent.
    extra = [hashlib.sha256(b).hexdigest() if b is not None else None for b in crafted.values()]
    out = []
    for name in SWARM:
        x = swarm.results[r][name]
        receipt = _signed(name, r, swarm, x.losses, x.contribution, x.contribution_norm, list(x.received) + extra)
        out.append(Evidence(HK[name], RANK[name], receipt, x.contribution))
    for name, data in crafted.items():
        if data is None:
            out.append(Evidence(HK[name], RANK[name], None, None))
            continue
        norm = vector_norm(_dec(data, swarm.spec))
        out.append(
            Evidence(
                HK[name], RANK[name], _signed(name, r, swarm, _plausible_losses(swarm, r, name, data), data, norm), data
            )
        )
    return out


def _audit(
    swarm: Swarm,
    r: int,
    seen: dict,
    history: list,
    secret: bytes = SECRET,
    evidence=None,
    names=NAMES,
    proof: dict | None = None,
    included=None,
):
    """Audit round r as a validator does; ``proof``: the evidence of work so far, updated in place."""
    evidence = _evidence(swarm, r) if evidence is None else evidence
    audits = audit_round(
        training=CFG,
        manifest=swarm.manifest,
        read_shard=swarm.read,
        start_state=swarm.starts[r],
        agreed_start=None if r == 0 else swarm.hashes[r],
        agreed_end=swarm.hashes[r + 1],
        run_id=RUN_ID,
        generation=GENERATION,
        round=r,
        evidence=evidence,
        heldout_count=16,
        secret=secret,
        seen_contributions=seen,
        history=history,
        members=[HK[n] for n in names],
        included=included,
    )
    reported = {e.hotkey: list(e.receipt.receipt.losses) for e in evidence if e.receipt is not None}
    proof = {} if proof is None else proof
    proof.update(update_evidence(proof, audits))
    for hk in proven_cheats(audits):
        proof.pop(hk, None)
    return {n: a for n, a in zip(names, audits)}, round_scores(audits, reported, proof)


@dataclasses.dataclass
class Audited:
    audits: list  # per round: {name: Audit}
    scores: list  # per round: {name: score}
    ema: dict  # name -> EMA after the last round
    seen: dict
    history: list


@pytest.fixture(scope="module")
def audited(swarm: Swarm) -> Audited:
    seen, history, ema, proof = {}, [], {}, {}
    out = Audited([], [], {}, seen, history)
    for r in range(ROUNDS):
        audits, scores = _audit(swarm, r, seen, history, proof=proof)
        by_name = {n: scores.get(HK[n], 0.0) for n in NAMES}  # left out: not scored this round
        ema = update_ema(ema, scores, ALPHA, {HK[n] for n in NAMES}, reset=proven_cheats(list(audits.values())))
        out.audits.append(audits)
        out.scores.append(by_name)
        print(
            f"round {r}: specificity",
            {n: round(a.specificity, 4) if a.specificity is not None else None for n, a in audits.items()},
        )
        print(f"round {r}: evidence z", {n: round(evidence_z(proof[HK[n]]), 1) for n in NAMES if HK[n] in proof})
        print(f"round {r}: score", {n: round(v, 2) for n, v in by_name.items()})
    out.ema = {n: ema.get(HK[n], 0.0) for n in NAMES}
    print("EMA", {n: round(v, 3) for n, v in out.ema.items()})
    return out


def _total(audited: Audited, name: str) -> float:
    return sum(s[name] for s in audited.scores)


# -- tests ---------------------------------------------------------------------------------------------


def test_every_member_is_audited_and_honest_ones_pass(audited):
    for r, audits in enumerate(audited.audits):
        for name in SWARM:
            a = audits[name]
            assert a.passed and a.attested is True, (r, name, a.reasons)
        for name in CRAFTED:
            a = audits[name]
            if name == "replay" and r == 0:
                assert not a.served
                continue
            # Validly signed, attested, plausible losses: only usefulness (and the replay's sketch) tells.
            assert a.receipt_ok and a.contribution_ok and a.attested is True, (r, name, a.reasons)
            assert a.loss_first_ok and a.loss_last_ok, (r, name, a.reasons)


def test_honest_miners_earn_within_2x_of_each_other(audited):
    totals = [_total(audited, n) for n in HONEST]
    emas = [audited.ema[n] for n in HONEST]
    print("honest totals", [round(t, 2) for t in totals], "EMA", [round(e, 3) for e in emas])
    assert min(totals) > 0 and max(totals) <= 2 * min(totals)
    assert min(emas) > 0 and max(emas) <= 2 * min(emas)


@pytest.mark.parametrize("name", ["alie", "ipm", "replay", "nearcopy"])
def test_updates_not_trained_on_the_miners_batches_earn_about_nothing(audited, name):
    honest = statistics.mean(_total(audited, n) for n in HONEST)
    total = _total(audited, name)
    print(f"{name}: total score {total:.3f} vs honest mean {honest:.3f}; EMA {audited.ema[name]:.4f}")
    assert total <= 0.05 * honest
    assert audited.ema[name] <= 0.05 * statistics.mean(audited.ema[n] for n in HONEST)


def test_training_only_on_the_old_audited_steps_earns_less_than_every_honest_miner(audited):
    total = _total(audited, "steps-only")
    print(f"steps-only: total {total:.3f}, honest {[round(_total(audited, n), 3) for n in HONEST]}")
    assert total < min(_total(audited, n) for n in HONEST)
    assert audited.ema["steps-only"] < min(audited.ema[n] for n in HONEST)


def test_a_noised_replay_is_flagged_by_its_sketch_and_honest_work_never(audited, swarm):
    for r, audits in enumerate(audited.audits):
        for name in SWARM + ["alie", "ipm", "nearcopy"]:
            assert audits[name].copied_from is None, (r, name, audits[name].reasons)
        if r == 0:
            continue
        a = audits["replay"]
        assert a.copied_from == HK["honest-2"] and a.copied_round == r - 1, a.reasons
        assert a.copy_cosine >= REPLAY_COSINE and any("replays" in why for why in a.reasons)
        print(f"round {r}: {a.reasons[-1]}")
        # A cosine is not a signature over the same bytes: the round scores 0, the EMA is not reset.
        assert HK["replay"] not in proven_cheats(list(audits.values()))
    # The cosines the threshold was set from: honest updates against earlier rounds' updates.
    cross = [
        _cos(_dec(swarm.results[r][a].contribution, swarm.spec), _dec(swarm.results[q][b].contribution, swarm.spec))
        for r in range(1, ROUNDS)
        for q in (r - 1,)
        for a in HONEST
        for b in HONEST
    ]
    print(f"honest cosines with the previous round's updates: {min(cross):.3f}..{max(cross):.3f}")
    assert max(cross) < REPLAY_COSINE - 0.2


def test_nearly_parallel_honest_updates_flag_no_copies(swarm, audited):
    """A wrecked model makes every honest update point the same way, round after round (the old
    same-round cosine check flagged honest miners at 0.99994). Emulated on two real rounds: each
    miner's update is one common direction plus 1 % of its own noise, in both rounds. Nothing is a copy:
    the cosine with an earlier round's update is no higher than with this round's peers."""
    common = _dec(swarm.results[ROUNDS - 2]["honest-0"].contribution, swarm.spec)
    seen, history = dict(audited.seen), list(audited.history)
    for r in (ROUNDS - 2, ROUNDS - 1):
        served = {n: _comp(_noised(common, 0.01, seed=1000 * r + i)) for i, n in enumerate(HONEST)}
        hashes = [hashlib.sha256(served[n]).hexdigest() for n in HONEST]
        evidence = []
        for n in HONEST:
            data = served[n]
            losses = _plausible_losses(swarm, r, n, data)
            receipt = _signed(n, r, swarm, losses, data, vector_norm(_dec(data, swarm.spec)), hashes)
            evidence.append(Evidence(HK[n], RANK[n], receipt, data))
        deltas = [_dec(served[n], swarm.spec) for n in HONEST]
        cosines = [_cos(deltas[i], deltas[j]) for i in range(len(deltas)) for j in range(i)]
        assert min(cosines) > 0.999  # the old COPY_COSINE: every one of them would have been a "copy"
        audits, _ = _audit(swarm, r, seen, history, evidence=evidence, names=HONEST)
        for n, a in audits.items():
            assert a.passed and a.copied_from is None, (r, n, a.reasons)
    # The earlier round's sketches were there to match: the margin, not a lack of history, kept it quiet.
    assert {t.round for t in history} >= {ROUNDS - 3, ROUNDS - 2, ROUNDS - 1}


def test_a_little_is_enough_is_skewed_against_its_peers(audited, swarm):
    """ALIE sits inside the honest spread per coordinate but on the same side of it everywhere: it fails
    the balance check every round, honest updates never come near the tolerance. The colluders' own
    version (from two colluders' honest Δs: their coordinate-wise min) carries their work and is skewed
    too."""
    from template.validator.checks.usefulness import BALANCE_TOLERANCE, balance
    from template.validator.scoring import skewed

    for r, audits in enumerate(audited.audits):
        for name in HONEST:
            # Against all ten others, four of them crafted: the median share stays near 0.5.
            assert abs(audits[name].balance - 0.5) < BALANCE_TOLERANCE / 3, (r, name, audits[name].balance)
        alie = audits["alie"]
        assert abs(alie.balance - 0.5) > BALANCE_TOLERANCE and HK["alie"] in skewed([alie]), (r, alie.balance)
        assert audited.scores[r]["alie"] == 0.0
        deltas = [_dec(swarm.results[r][n].contribution, swarm.spec) for n in HONEST]
        own = {n: torch.minimum(deltas[0][n], deltas[1][n]) for n in swarm.spec}  # mean − σ of two
        share = balance(own, deltas[2:])
        assert abs(share - 0.5) > BALANCE_TOLERANCE, (r, share)


def test_a_delta_that_overflows_the_model_fails_and_scoring_goes_on(swarm):
    """A validly signed Δ with a few float32-sized values (scales up to float32-max/127 parse) overflows
    the forward pass: that miner fails with the reason, every other one is audited and scored as usual,
    and the round's scoring does not raise (it used to: a NaN spread in the specificity's statistics)."""
    r = ROUNDS - 1
    evidence = [e for e in _evidence(swarm, r) if e.hotkey in {HK[n] for n in HONEST}]
    delta = _dec(swarm.results[r]["honest-0"].contribution, swarm.spec)
    name = max(delta, key=lambda n: delta[n].numel())
    delta[name].view(-1)[:64] = 3.0e38
    data = _comp(delta)
    for i, e in enumerate(evidence):  # every peer "received" the bad bytes: attested
        receipt = e.receipt.receipt
        received = list(receipt.received_sha256)
        received[RANK["honest-0"]] = hashlib.sha256(data).hexdigest()
        norm = vector_norm(_dec(data, swarm.spec)) if i == 0 else receipt.contribution_norm
        signed = _signed(HONEST[i], r, swarm, receipt.losses, data if i == 0 else e.contribution, norm, received)
        evidence[i] = Evidence(e.hotkey, e.rank, signed, data if i == 0 else e.contribution)
    audits, scores = _audit(swarm, r, {}, [], evidence=evidence, names=HONEST)
    a = audits["honest-0"]
    assert not a.passed and any("non-finite" in why for why in a.reasons), a.reasons
    assert scores[HK["honest-0"]] == 0.0
    assert all(audits[n].passed for n in HONEST[1:]), {n: audits[n].reasons for n in HONEST[1:]}


def test_the_agreed_contribution_set_settles_attestation(swarm):
    """With the round record's agreed hashes, receipts' claims do not decide: bytes the round agreed are
    attested even when every receipt names other ones (colluding attesters), other bytes fail; a rank the
    round aggregated nothing from is unverifiable whatever the receipts say (no work of it entered the
    model: it earns nothing that round, without the reset of a proven cheat)."""
    r = ROUNDS - 1
    names = HONEST
    evidence = []
    for n in names:
        x = swarm.results[r][n]
        bogus = ["0" * 64] * len(names)  # what lying attesters would claim for everyone
        evidence.append(
            Evidence(
                HK[n],
                RANK[n],
                _signed(n, r, swarm, x.losses, x.contribution, x.contribution_norm, bogus),
                x.contribution,
            )
        )
    agreed = [hashlib.sha256(swarm.results[r][n].contribution).hexdigest() for n in names]
    agreed[2] = "1" * 64  # the round agreed other bytes from honest-2
    agreed[3] = None  # and none from honest-3
    by, scores = _audit(swarm, r, {}, [], evidence=evidence, names=names, included=agreed)
    assert all(by[n].attested is True and by[n].passed for n in ("honest-0", "honest-1", "honest-4", "honest-5"))
    assert by["honest-2"].attested is False and any("round agreed" in why for why in by["honest-2"].reasons)
    assert by["honest-3"].attested is None and scores[HK["honest-3"]] == 0.0
    assert any("aggregated no contribution" in why for why in by["honest-3"].reasons), by["honest-3"].reasons
