"""template.engine.trainer on real process groups.

Each test spawns 1–3 processes (6 for the colluders' test) that join a gloo group on 127.0.0.1 through a TCPStore hosted by the
test process (as the orchestrator hosts it), under a generation prefix. Tiny preset, H = 5, batch 4,
seq_len 32, on a repeated text that the model learns within a few rounds. Ranks sign with real
sr25519 keys and verify with the default (bittensor) verifier.

The worker functions (``_train_*``) run inside the spawned processes and return plain JSON; the
tests assert on what every rank reported. Adversaries are test-only subclasses of the ``diloco`` strategy
(:class:`template.engine.strategies.diloco.DiLoCo`), registered under its name in the adversary's own
process only (see :func:`_strategy`).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.compression import ErrorFeedback
from template.engine.strategies import STRATEGIES
from template.engine.strategies.diloco import DiLoCo
from template.engine.trainer import GroupFailure, Trainer

TEXT = b"".join(b"Round %d: every miner trains the same little model, byte by byte.\n" % (i % 10) for i in range(64))
BASE = dict(preset="tiny", inner_steps=5, batch_size=4, seq_len=32)
CONTEXT = "run-test/0"  # run id / generation, bound into every signature


def _keypair(rank: int):
    from bittensor.sp_core import Keypair

    return Keypair.create_from_uri(f"//tensorswarm-test-{rank}")


def _batches(rank: int, round: int):
    """This rank's batches for ``round``: random windows of TEXT, a pure function of (rank, round, step)."""

    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1_000_003 * round + 1_009 * rank + step)
        starts = torch.randint(0, len(TEXT) - 33, (4,), generator=g).tolist()
        return torch.tensor([list(TEXT[s : s + 33]) for s in starts], dtype=torch.long)

    return batch


def _trainer(rank: int, world_size: int, **cfg) -> Trainer:
    keys = [_keypair(r) for r in range(world_size)]
    return Trainer(
        TrainingConfig(**{**BASE, **cfg}),
        rank=rank,
        world_size=world_size,
        peers=[k.ss58_address for k in keys],
        sign=keys[rank].sign,
        context=CONTEXT,
    )


@contextmanager
def _strategy(cls, name: str = "diloco"):
    """Trainers built inside use ``cls`` for strategy ``name`` (the config, hence the state format and
    what the peers expect, stay ``name``'s)."""
    honest = STRATEGIES[name]
    STRATEGIES[name] = cls
    try:
        yield
    finally:
        STRATEGIES[name] = honest


def _report(res) -> dict:
    return {
        "round": res.round,
        "losses": res.losses,
        "hash": res.state_hash,
        "dropped": {str(k): v for k, v in res.dropped.items()},
        "bytes_sent": res.bytes_sent,
        "norm": res.contribution_norm,
    }


def _mean(xs) -> float:
    return sum(xs) / len(xs)


# -- process-group harness ---------------------------------------------------------------------------


def _worker(fn, rank, world_size, port, out, pg_timeout_s, kwargs):
    torch.set_num_threads(1)  # 2–3 ranks share two cores
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=30))
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore("generation-0/", store),
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=pg_timeout_s),
    )
    result = None
    try:
        result = fn(rank, world_size, **kwargs)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    except BaseException:
        Path(out, f"rank{rank}.err").write_text(traceback.format_exc())
    # Leave only once every rank is past its last collective (a peer's socket closing early could
    # break a collective still in flight), then skip the teardown: destroying a gloo group whose
    # peers have exited can abort the process. A broken group has nobody left to wait for.
    if not (isinstance(result, dict) and result.get("group_failed")):
        store.add("done", 1)
        deadline = time.monotonic() + 30
        while store.add("done", 0) < world_size and time.monotonic() < deadline:
            time.sleep(0.01)
    os._exit(0)


def spawn(tmp_path: Path, world_size: int, fn, *, pg_timeout_s: float = 30, timeout_s: float = 120, **kwargs):
    """Run ``fn(rank, world_size, **kwargs)`` on ``world_size`` ranks; returns each rank's JSON
    result (None for a rank that left without one). A rank that raised fails the test."""
    out = tmp_path / f"ranks-{fn.__name__}-{world_size}"
    out.mkdir()
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # the "orchestrator's"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(fn, r, world_size, store.port, str(out), pg_timeout_s, kwargs))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = sorted(out.glob("*.err"))
    assert not errors, "\n".join(e.read_text() for e in errors)
    assert all(p.exitcode is not None for p in procs)
    del store
    return [
        json.loads((out / f"rank{r}.json").read_text()) if (out / f"rank{r}.json").exists() else None
        for r in range(world_size)
    ]


# -- 0. global state: strict loading (no process group needed) ------------------------------------


def test_load_refuses_foreign_and_corrupt_states():
    diloco = _trainer(0, 1)
    good = diloco.load(None)
    state = diloco.state_bytes()
    assert checkpoint.state_hash(state) == good == _trainer(0, 1).load(state)
    tensors, meta = checkpoint.loads(state)
    with pytest.raises(ValueError, match="strategy"):
        _trainer(0, 1, strategy="ddp").load(state)  # another strategy's state
    with pytest.raises(ValueError, match="checksum"):
        diloco.load(state[:-40] + bytes(8) + state[-32:])  # corrupted bytes
    bad = dict(tensors)
    bad["param/transformer.wte.weight"] = bad["param/transformer.wte.weight"].clone()
    bad["param/transformer.wte.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        diloco.load(checkpoint.dumps(bad, meta))
    del bad["param/transformer.wte.weight"]
    with pytest.raises(ValueError, match="missing"):
        diloco.load(checkpoint.dumps(bad, meta))
    with pytest.raises(ValueError, match="round 0, not 3"):
        diloco.run_round(3, _batches(0, 3))


# -- 1. diloco: learning, agreement, catch-up -------------------------------------------------------


def _train_diloco(rank, world_size, rounds):
    trainer = _trainer(rank, world_size)
    initial = trainer.load(None)
    reports, catch_up = [], []
    for r in range(rounds):
        if r == 2 and rank == world_size - 1:
            # This rank "crashes" and rejoins from the agreed state bytes: a fresh Trainer.
            state = trainer.state_bytes()
            trainer = _trainer(rank, world_size)
            catch_up.append(trainer.load(state) == checkpoint.state_hash(state))
        res = trainer.run_round(r, _batches(rank, r))
        state = trainer.state_bytes()
        fresh = _trainer(rank, world_size)
        catch_up.append(checkpoint.state_hash(state) == res.state_hash and fresh.load(state) == res.state_hash)
        reports.append(_report(res))
    return {"initial": initial, "rounds": reports, "catch_up": catch_up}


def test_diloco_three_ranks_learn_agree_and_catch_up(tmp_path):
    rounds = 5
    ranks = spawn(tmp_path, 3, _train_diloco, rounds=rounds)
    assert len({r["initial"] for r in ranks}) == 1  # same deterministic init everywhere
    for i in range(rounds):
        hashes = {r["rounds"][i]["hash"] for r in ranks}
        assert len(hashes) == 1, f"round {i}: ranks disagree on the state: {hashes}"
        assert all(r["rounds"][i]["dropped"] == {} for r in ranks)
        assert all(r["rounds"][i]["norm"] > 0 for r in ranks)
    assert all(all(r["catch_up"]) for r in ranks)
    # Round-mean loss over all ranks falls every round, and clearly overall.
    curve = [_mean([x for r in ranks for x in r["rounds"][i]["losses"]]) for i in range(rounds)]
    print("diloco loss per round:", [round(x, 3) for x in curve])
    assert all(b < a for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < 0.6 * curve[0], curve


# -- 2. compression: still learns, far fewer bytes -----------------------------------------------------


def _train_schemes(rank, world_size, rounds, schemes):
    out = {}
    for scheme in schemes:
        trainer = _trainer(rank, world_size, compression=scheme, topk_fraction=0.1)
        trainer.load(None)
        reports = [_report(trainer.run_round(r, _batches(rank, r))) for r in range(rounds)]
        out[scheme] = reports
    return out


def test_compression_trains_and_cuts_bytes(tmp_path):
    rounds, schemes = 3, ["none", "int8", "topk_int8"]
    ranks = spawn(tmp_path, 2, _train_schemes, rounds=rounds, schemes=schemes)
    sent = {}
    for scheme in schemes:
        for i in range(rounds):
            assert len({r[scheme][i]["hash"] for r in ranks}) == 1
        curve = [_mean([x for r in ranks for x in r[scheme][i]["losses"]]) for i in range(rounds)]
        assert curve[-1] < 0.8 * curve[0], (scheme, curve)
        sent[scheme] = ranks[0][scheme][0]["bytes_sent"]
        assert all(r[scheme][i]["bytes_sent"] == sent[scheme] for r in ranks for i in range(rounds))
    ratio_int8 = sent["none"] / sent["int8"]
    ratio_topk = sent["none"] / sent["topk_int8"]
    print(f"bytes_sent per round: {sent}; none/int8 = {ratio_int8:.2f}x, none/topk_int8 = {ratio_topk:.2f}x")
    assert ratio_int8 > 3.5  # 4 bytes → 1 byte per value, plus one scale per 4096
    assert ratio_topk > 6  # 10% of the values at 1 byte + a 4-byte index each


# -- 3. adversaries: dropped by everyone, identically ----------------------------------------------

ATTACKS = ["bad signature", "nan", "scale x1000", "garbage", "oversized"]


class Adversary(DiLoCo):
    """Rank that attacks round r with ATTACKS[r] (test-only; the production strategy has no such mode)."""

    def encode(self, round, delta):
        attack = ATTACKS[round]
        if attack == "scale x1000":
            return super().encode(round, {k: v * 1000 for k, v in delta.items()})
        if attack == "nan":
            c = ErrorFeedback(self.cfg.compression).compress(delta)
            next(iter(c.tensors.values())).scales[0] = float("nan")
            return c.to_bytes()
        honest = super().encode(round, delta)
        if attack == "garbage":
            return os.urandom(len(honest))
        if attack == "oversized":
            return honest + b"\0" * 1024
        return honest

    def sign(self, round, payload):
        if ATTACKS[round] == "bad signature":  # the payload signed by a key that is not this rank's
            return _keypair(99).sign(b"anything")
        return super().sign(round, payload)


def _train_with_adversary(rank, world_size, adversary):
    with _strategy(Adversary if rank == adversary else DiLoCo):
        trainer = _trainer(rank, world_size)
    assert isinstance(trainer.strategy, Adversary) == (rank == adversary)
    trainer.load(None)
    return {"rounds": [_report(trainer.run_round(r, _batches(rank, r))) for r in range(len(ATTACKS))]}


def test_adversarial_contributions_are_dropped_by_every_honest_rank(tmp_path):
    ranks = spawn(tmp_path, 3, _train_with_adversary, adversary=2)
    honest = ranks[:2]
    expected = ["bad signature", "malformed", "norm outlier", "malformed", "oversized"]
    for i, (attack, reason) in enumerate(zip(ATTACKS, expected)):
        dropped = [r["rounds"][i]["dropped"] for r in honest]
        assert dropped[0] == dropped[1], (attack, dropped)
        assert list(dropped[0]) == ["2"] and dropped[0]["2"].startswith(reason), (attack, dropped[0])
        assert len({r["rounds"][i]["hash"] for r in honest}) == 1, attack
    assert "NaN" in honest[0]["rounds"][1]["dropped"]["2"]
    curve = [_mean([x for r in honest for x in r["rounds"][i]["losses"]]) for i in range(len(ATTACKS))]
    print("loss per round under attack:", [round(x, 3) for x in curve])
    assert curve[-1] < 0.6 * curve[0], curve


# -- 3b. two colluders of six: validly signed poison, accepted or screened, never steers θ -------------

COLLUSION = ["flip", "f32max", "flip"]  # what both colluders send in rounds 0, 1, 2


class Colluder(DiLoCo):
    """Test-only colluder: a sign flip of its own Δ scaled to 9× (just under the 10× norm screen, so it
    is accepted), or float32-max values against the Δ's sign (screened as a norm outlier)."""

    def encode(self, round, delta):
        if COLLUSION[round] == "flip":
            return super().encode(round, {k: -9.0 * v for k, v in delta.items()})
        big = torch.finfo(torch.float32).max
        payload = super().encode(round, {k: -torch.sign(v) * big for k, v in delta.items()})
        self.ef.reset()  # its own residual would be Inf: the colluder keeps attacking with finite bytes
        return payload


def _train_with_colluders(rank, world_size, colluders):
    with _strategy(Colluder if rank in colluders else DiLoCo):
        trainer = _trainer(rank, world_size)
    trainer.load(None)
    out = []
    for r in range(len(COLLUSION)):
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        res = trainer.run_round(r, _batches(rank, r))
        step = math.sqrt(
            sum(
                float(((p.detach().double() - before[n].double()) ** 2).sum())
                for n, p in trainer.model.named_parameters()
            )
        )
        checkpoint.loads(trainer.state_bytes(), require_finite=True)  # raises on NaN/Inf
        out.append({**_report(res), "step": step})
    return {"rounds": out}


def test_two_colluders_of_six_cannot_steer_or_overflow_theta(tmp_path):
    """f = 1/3 (the default): b(6) = 2. Every honest rank ends every round finite and bit-identical, and θ
    moves by no more than an outer step over the honest scale: with m̂_r = μ·m̂_{r−1} + h_r, where h_r is
    the largest honest Δ norm of round r, ‖θ_{r+1} − θ_r‖ ≤ lr·(h_r + μ·m̂_r), because the aggregate's norm
    is at most the median norm, which lies within the honest norms."""
    colluders = (1, 4)
    ranks = spawn(tmp_path, 6, _train_with_colluders, colluders=colluders, timeout_s=400)
    honest = [r for i, r in enumerate(ranks) if i not in colluders]
    cfg = TrainingConfig(**BASE)
    assert cfg.byzantine_fraction == 1 / 3
    lr, mu, m_hat = cfg.outer_lr, cfg.outer_momentum, 0.0
    for i, attack in enumerate(COLLUSION):
        rounds = [r["rounds"][i] for r in honest]
        assert len({x["hash"] for x in rounds}) == 1, (attack, [x["hash"] for x in rounds])
        assert all(x["dropped"] == rounds[0]["dropped"] for x in rounds)
        if attack == "f32max":
            assert sorted(rounds[0]["dropped"]) == ["1", "4"], rounds[0]["dropped"]
        else:  # accepted: only the trim and the clip stand between the colluders and θ
            assert rounds[0]["dropped"] == {}, rounds[0]["dropped"]
        scale = max(x["norm"] for x in rounds)
        m_hat = mu * m_hat + scale
        bound = lr * (scale + mu * m_hat)
        steps = [x["step"] for x in rounds]
        print(f"round {i} ({attack}): θ step {steps[0]:.4f}, honest bound {bound:.4f}, largest honest Δ {scale:.4f}")
        assert all(s == steps[0] for s in steps) and steps[0] <= bound * (1 + 1e-3) + 1e-4
    curve = [_mean([x for r in honest for x in r["rounds"][i]["losses"]]) for i in range(len(COLLUSION))]
    print("honest loss per round under collusion:", [round(x, 3) for x in curve])
    assert curve[-1] < curve[0], curve


# -- 4./5. ddp and fsdp --------------------------------------------------------------------------------


def _train_plain(rank, world_size, strategies, rounds):
    out = {}
    for strategy in strategies:
        trainer = _trainer(rank, world_size, strategy=strategy)
        initial = trainer.load(None)
        reports = []
        for r in range(rounds):
            res = trainer.run_round(r, _batches(rank, r))
            assert checkpoint.state_hash(trainer.state_bytes()) == res.state_hash
            reports.append(_report(res))
        out[strategy] = {
            "initial": initial,
            "rounds": reports,
            "param_bytes": trainer.param_bytes_per_rank(),
            "optimizer_bytes": trainer.optimizer_bytes_per_rank(),
            "resumed": _trainer(rank, world_size, strategy=strategy).load(trainer.state_bytes()) == res.state_hash,
        }
    return out


def _check_plain(ranks, rounds):
    for i in range(rounds):
        assert len({r["rounds"][i]["hash"] for r in ranks}) == 1, f"round {i}: ranks disagree"
    assert all(r["resumed"] for r in ranks)
    curve = [_mean([x for r in ranks for x in r["rounds"][i]["losses"]]) for i in range(rounds)]
    assert all(b < a for a, b in zip(curve, curve[1:])) and curve[-1] < 0.7 * curve[0], curve
    return curve


def test_ddp_two_ranks(tmp_path):
    ranks = [r["ddp"] for r in spawn(tmp_path, 2, _train_plain, strategies=["ddp"], rounds=3)]
    curve = _check_plain(ranks, 3)
    print("ddp loss per round:", [round(x, 3) for x in curve])
    assert ranks[0]["rounds"][0]["bytes_sent"] == 5 * 4 * 120_576  # H all-reduces of the fp32 gradients


def test_fsdp_shards_parameters_and_optimizer_state(tmp_path):
    one = [r["fsdp"] for r in spawn(tmp_path, 1, _train_plain, strategies=["fsdp"], rounds=3)]
    both = spawn(tmp_path, 2, _train_plain, strategies=["fsdp", "ddp"], rounds=3)
    two, ddp = [r["fsdp"] for r in both], [r["ddp"] for r in both]
    for ranks in (one, two):
        print("fsdp loss per round:", [round(x, 3) for x in _check_plain(ranks, 3)])
    # Sharding changes where the numbers live, not the training: FSDP (averaged reduce-scatter)
    # follows the same trajectory as DDP (averaged all-reduce) on the same batches.
    for f, d in zip(two, ddp):
        for fr, dr in zip(f["rounds"], d["rounds"]):
            assert fr["losses"] == pytest.approx(dr["losses"], rel=1e-4)
    full_params, full_opt = one[0]["param_bytes"], one[0]["optimizer_bytes"]
    assert full_params == 4 * 120_576 and full_opt == 2 * full_params  # tiny preset, fp32; exp_avg + exp_avg_sq
    for r in two:
        print(
            f"fsdp per-rank bytes: params {r['param_bytes']} (1 rank: {full_params}), "
            f"AdamW moments {r['optimizer_bytes']} (1 rank: {full_opt})"
        )
        assert math.isclose(r["param_bytes"], full_params / 2, rel_tol=0.1)
        assert math.isclose(r["optimizer_bytes"], full_opt / 2, rel_tol=0.1)


# -- 6. a peer dies (or stalls) mid-round --------------------------------------------------------------


class Dies(DiLoCo):
    """Leaves (or hangs) after its inner steps of round 1, before the exchange."""

    how = "exit"
    stall_s = 0.0

    def encode(self, round, delta):
        if round == 1:
            if self.how == "stall":
                time.sleep(self.stall_s)
            os._exit(3)
        return super().encode(round, delta)


def _train_until_peer_fails(rank, world_size, victim, how, stall_s):
    with _strategy(Dies if rank == victim else DiLoCo):
        trainer = _trainer(rank, world_size)
    trainer.strategy.how, trainer.strategy.stall_s = how, stall_s
    trainer.load(None)
    trainer.run_round(0, _batches(rank, 0))
    start = time.monotonic()
    try:
        trainer.run_round(1, _batches(rank, 1))
    except GroupFailure as e:
        return {"group_failed": True, "elapsed": time.monotonic() - start, "error": str(e)}
    return {"group_failed": False}


@pytest.mark.parametrize("how", ["exit", "stall"])
def test_failed_peer_raises_group_failure_within_the_timeout(tmp_path, how):
    timeout = 4.0
    ranks = spawn(
        tmp_path,
        3,
        _train_until_peer_fails,
        victim=2,
        how=how,
        stall_s=timeout + 2,
        pg_timeout_s=timeout,
        timeout_s=60,
    )
    assert ranks[2] is None  # the victim left without a result
    for r in ranks[:2]:
        assert r["group_failed"], r
        assert r["elapsed"] < timeout + 1.5, r
    print(how, "survivors:", [(round(r["elapsed"], 2), r["error"][:100]) for r in ranks[:2]])
