#!/usr/bin/env python
"""The validator's audit cost per miner-round as a share of the miner's compute for that round
(goal: at most 10%).

    python scripts/bench/audit_cost.py [--preset tiny] [--inner-steps H] [--repeats 7] [--miners 3] \\
        [--heldout-count 16] [--attesters 8] [--threads 1]

Everything runs in this process: no chain, no HTTP, no orchestrator. The run config is the preset's
run defaults (``template.config.presets.RUN_DEFAULTS``, as ``python -m template.config.presets write`` makes them:
tiny H = 20, batch 8, seq_len 64; small H = 50, batch 16, seq_len 256) with the rest of
:class:`template.config.run.TrainingConfig` (diloco, int8 compression, trimmed mean). The data are the
Python standard library's sources (:func:`template.data.corpus.default_corpus`, 2 MiB, 256 KiB shards), read
from memory.

Setup (not timed): a swarm of K + A ranks (``--miners`` K audited, ``--attesters`` A more whose
receipts the validator fetches for the peer-attestation check) trains round 0 from the seed state,
as tests/unit/test_audit.py builds it: one ``Trainer`` per rank in a thread, the all-gather of raw
contribution bytes replaced by an in-memory exchange, everything else production code. Each rank's
round gives a real compressed contribution; each rank signs a real receipt for it (its own key),
naming the seed state's hash as start, the swarm's agreed state hash as end and the contributions
it received, as neurons/miner.py does.

Then ``--repeats`` times, interleaved so both see the same machine load:

miner_round_s
    One miner's round (the first audited miner's hotkey and batches): ``Trainer.run_round`` on a real
    single-rank gloo process group (in-memory ``HashStore``), i.e. H inner forward/backward/AdamW steps on the miner's
    batches (``batch_offsets`` + ``windows_to_tensor``, as neurons/miner.py draws them), the
    pseudo-gradient, int8 error-feedback compression, signing the contribution, the all-gather,
    screening (signature, parse, decompress), aggregation, the Nesterov outer step and the state
    hash; plus signing the receipt. Not timed: ``load()`` of the start state (once per generation),
    disk writes, networking, waiting for peers. A world of one screens and aggregates one
    contribution instead of N, so this is a slight underestimate of a real miner's round and the
    ratio errs high.
audit_round_s
    One ``template.validator.audit.audit_round`` call on the K miners' evidence, with the validator's defaults
    (``Validator.step``): ``--heldout-count`` 16 held-out windows, three gain steps and their reference
    batches drawn from a fixed bench secret, a fresh ``seen_contributions`` map and sketch history, the
    round's members and the A peer receipts. Round 0's start state is passed as its bytes (strictly
    parsed and hash-checked, as for any later round). It includes the once-per-round part (θ_r built,
    the median reference update Δ_ref, the reference batches at θ_r and θ_r − Δ_ref, the held-out loss
    at θ_r, the peer receipts' checks) and, per miner, the receipt signature, the contribution's parse,
    decompression and sketch, and the forward passes. Not timed: fetching evidence, receipts and the
    checkpoint, scoring.
audit_per_miner_round_s
    audit_round_s / K: the per-round fixed part is shared by the K miners audited that round.

Times are this process's CPU seconds: with one torch thread (``--threads``, default 1, used by both
sides) that is the compute, and other processes on a shared machine do not inflate it the way they
inflate wall time (with more threads it also counts their spin-waiting). The seconds printed are
medians over repeats; ``audit_cost_ratio`` is the median of audit_per_miner_round / miner_round taken
in the same repeat, ``audit_cost_ratio_wall`` the same in wall-clock time (noisier when the machine is
busy). Every audit must pass, or the run fails (a failed check skips work and would understate the
cost).

stdout carries one figure per line, ``name value unit``; progress goes to stderr.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from template.config.cli import ArgumentParser, non_negative_int, positive_int  # noqa: E402
from template.config.presets import PRESETS, RUN_DEFAULTS  # noqa: E402
from utils.procs import Resources, log  # noqa: E402

RUN_ID = "bench-audit"
GENERATION = 0
ROUND = 0
AUDIT_SECRET = bytes(range(32))  # a fixed secret, so every run draws the same gain steps
KEY_URI = "//tensorswarm-bench-audit-{i}"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="audit_cost.py", description=__doc__)
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--inner-steps", type=positive_int, default=None, help="H (default: the preset's run default)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed (miner round, audit) pairs")
    parser.add_argument("--miners", type=positive_int, default=3, help="K: miners audited per round")
    parser.add_argument("--heldout-count", type=positive_int, default=16, help="held-out windows per audit")
    parser.add_argument(
        "--attesters",
        type=non_negative_int,
        default=8,
        help="A: receipts of members outside the sample, for the peer-attestation check",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="run seed")
    return parser


def batcher(cfg, manifest, read, hotkey: str, round_: int):
    from template.data.sampling import batch_offsets, windows_to_tensor

    def batch(step: int):
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


def receipt_for(cfg, key, rank: int, start: str, result):
    from template.wire.receipts import Receipt
    from template.wire.signing import sign_receipt

    receipt = Receipt(
        hotkey=key.ss58_address,
        run_id=RUN_ID,
        generation=GENERATION,
        round=ROUND,
        rank=rank,
        start_state=start,
        end_state=result.state_hash,
        seed=cfg.seed,
        losses=result.losses,
        contribution_sha256=result.contribution_sha256,
        contribution_norm=result.contribution_norm,
        contribution_bytes=len(result.contribution or b""),
        dropped=result.dropped,
        received_sha256=result.received,
        created_at=time.time(),
    )
    return sign_receipt(receipt, key.sign)


def swarm_round(cfg, keys, manifest, read):
    """One rank per key trains round 0 from the seed state. Returns the seed state's bytes and hash,
    the agreed end hash and every rank's (signed receipt, contribution)."""
    from template.engine.exchange import InMemoryExchange
    from template.engine.trainer import Trainer

    peers = [k.ss58_address for k in keys]
    exchange = InMemoryExchange(len(keys), timeout_s=600)
    trainers = []
    for rank, key in enumerate(keys):
        t = Trainer(
            cfg,
            rank=rank,
            world_size=len(keys),
            peers=peers,
            sign=key.sign,
            context=f"{RUN_ID}/{GENERATION}",
            exchange=exchange.bind(rank),
        )
        trainers.append(t)
    start_hash = {t.load(None) for t in trainers}.pop()
    start_bytes = trainers[0].state_bytes()
    results, errors = [None] * len(keys), []

    def work(rank: int) -> None:
        try:
            results[rank] = trainers[rank].run_round(ROUND, batcher(cfg, manifest, read, peers[rank], ROUND))
        except BaseException as error:  # free the others, report below
            errors.append(error)
            exchange.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(keys))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError(f"swarm round failed: {errors[0]!r}")
    if len({r.state_hash for r in results}) != 1 or any(r.dropped for r in results):
        raise RuntimeError("swarm ranks disagree or dropped a contribution")
    served = [(receipt_for(cfg, keys[r], r, start_hash, res), res.contribution) for r, res in enumerate(results)]
    return start_bytes, start_hash, results[0].state_hash, served


def timed(fn):
    """(wall seconds, CPU seconds of this process, result) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    import torch.distributed as dist
    from bittensor.sp_core import Keypair

    from template.config.run import TrainingConfig
    from template.data.corpus import build_dataset, default_corpus
    from template.data.store import shard_reader
    from template.engine.trainer import Trainer
    from template.validator.audit import Evidence, audit_round

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    defaults = dict(RUN_DEFAULTS[args.preset])
    if args.inner_steps is not None:
        defaults["inner_steps"] = args.inner_steps
    cfg = TrainingConfig(preset=args.preset, seq_len=preset.seq_len, seed=args.seed, **defaults)
    from template.validator.draw import AuditDraw

    H, K = cfg.inner_steps, args.miners
    gain_steps = AuditDraw(AUDIT_SECRET, ROUND).gain_steps(H)  # what audit_round draws
    res = Resources(keep=False)
    try:
        name, corpus = default_corpus(max_bytes=2 * 2**20)
        manifest, shards = build_dataset("bench-audit", corpus, shard_size=256 * 1024)
        read = shard_reader(manifest, shards.__getitem__, keep=len(manifest.shards))
        keys = [Keypair.create_from_uri(KEY_URI.format(i=i)) for i in range(K + args.attesters)]
        members = [k.ss58_address for k in keys]
        log(
            f"preset {args.preset} (~{preset.approx_params / 1e6:.2f}M params), H={H}, batch {cfg.batch_size}, "
            f"seq_len {cfg.seq_len}, {cfg.compression}; {K} miners audited, {args.attesters} attesters, "
            f"heldout {args.heldout_count}, gain steps {gain_steps}; corpus {name} {len(corpus)} bytes, "
            f"{args.threads} thread(s)"
        )
        t0 = time.perf_counter()
        start_bytes, start_hash, end_hash, served = swarm_round(cfg, keys, manifest, read)
        evidence = [Evidence(members[r], r, receipt, data) for r, (receipt, data) in enumerate(served[:K])]
        peer_receipts = [receipt for receipt, _ in served[K:]]
        log(f"setup: {len(keys)}-rank swarm round in {time.perf_counter() - t0:.1f} s")

        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        miner_key = keys[0]
        miner_batch = batcher(cfg, manifest, read, miner_key.ss58_address, ROUND)

        def miner_round(trainer):
            result = trainer.run_round(ROUND, miner_batch)
            return receipt_for(cfg, miner_key, 0, start_hash, result)

        def audit():
            audits = audit_round(
                training=cfg,
                manifest=manifest,
                read_shard=read,
                start_state=start_bytes,
                agreed_start=start_hash,
                agreed_end=end_hash,
                run_id=RUN_ID,
                generation=GENERATION,
                round=ROUND,
                evidence=evidence,
                heldout_count=args.heldout_count,
                secret=AUDIT_SECRET,
                seen_contributions={},
                history=[],
                members=members,
                peer_receipts=peer_receipts,
            )
            failed = [(a.hotkey[:8], a.reasons) for a in audits if not a.passed or a.attested is not True]
            if failed:
                raise RuntimeError(f"honest miners failed the audit: {failed}")
            return audits

        samples = []  # (miner cpu, miner wall, audit cpu, audit wall)
        for i in range(args.repeats + 1):  # the first pair warms up (lazy init, allocator) and is dropped
            trainer = Trainer(
                cfg,
                rank=0,
                world_size=1,
                peers=[miner_key.ss58_address],
                sign=miner_key.sign,
                context=f"{RUN_ID}/{GENERATION}",
            )
            trainer.load(start_bytes)
            m_wall, m_cpu, _ = timed(lambda t=trainer: miner_round(t))
            a_wall, a_cpu, _ = timed(audit)
            what = "warm-up" if i == 0 else f"repeat {i}/{args.repeats}"
            log(
                f"{what}: miner round {m_cpu:.3f} s CPU ({m_wall:.3f} s wall), audit of {K} miners {a_cpu:.3f} s "
                f"CPU ({a_wall:.3f} s wall): ratio per miner {a_cpu / K / m_cpu:.3f}"
            )
            if i:
                samples.append((m_cpu, m_wall, a_cpu, a_wall))

        def med(values) -> float:
            return statistics.median(values)

        miner_s = med(s[0] for s in samples)
        audit_s = med(s[2] for s in samples)
        ratio = med(s[2] / K / s[0] for s in samples)
        ratio_wall = med(s[3] / K / s[1] for s in samples)
        print(f"inner_steps {H} steps")
        print(f"batch_size {cfg.batch_size} windows")
        print(f"seq_len {cfg.seq_len} bytes")
        print(f"miners_audited {K} count")
        print(f"attesters {args.attesters} count")
        print(f"heldout_count {args.heldout_count} windows")
        print(f"miner_round_s {miner_s:.3f} s")
        print(f"audit_round_s {audit_s:.3f} s")
        print(f"audit_per_miner_round_s {audit_s / K:.3f} s")
        print(f"audit_cost_ratio {ratio:.3f} ratio")
        print(f"audit_cost_ratio_wall {ratio_wall:.3f} ratio", flush=True)
        log(f"goal (audit <= 10% of the miner's round, per miner-round): {'met' if ratio <= 0.10 else 'not met'}")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, ValueError, OSError) as error:
        log(f"error: {error}")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        res.close()


if __name__ == "__main__":
    raise SystemExit(main())
