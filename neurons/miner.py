"""One rank of the swarm. Normally spawned by neurons/meta_miner.py with its
assignment; runnable by hand with --rank/--world-size/--tcp-store-address/
--tcp-store-port/--store-prefix/--generation.

    join the group  →  catch up to the global state  →  for each round:
        train H steps on (seed, round, hotkey)'s samples, exchange signed
        compressed contributions, aggregate, outer step → receipt → report
        the new state hash → wait until every member agreed → next round

Exit codes (template/exit_codes.py) tell the meta-miner why it stopped.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

if __package__ in (None, ""):  # run as `python neurons/miner.py`: make the repo importable
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template import wire as p
from template.config import cli as tc
from template.config.logs import setup_logging
from template.miner import exit_codes

log = logging.getLogger("tensorswarm.miner")


def add_args(parser) -> None:
    g = parser.add_argument_group("miner")
    g.add_argument("--orchestrator-url", required=True)
    g.add_argument(
        "--orchestrator-hotkey",
        default=None,
        help="the orchestrator's hotkey (default: the subnet owner's hotkey from the metagraph)",
    )
    g.add_argument(
        "--work-dir",
        type=tc.expanded_path,
        default="./state/miner",
        help="dataset cache, local global states, receipts, progress",
    )
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    g.add_argument(
        "--timeout", type=tc.positive_float, default=60.0, help="seconds before a silent peer fails a collective"
    )
    g.add_argument("--max-rounds", type=tc.non_negative_int, default=0, help="stop after N rounds (0: run on)")
    m = parser.add_argument_group("manual assignment (normally fetched from the orchestrator)")
    m.add_argument("--rank", type=tc.non_negative_int, default=None)
    m.add_argument("--world-size", type=tc.positive_int, default=None)
    m.add_argument("--tcp-store-address", default=None)
    m.add_argument("--tcp-store-port", type=tc.port, default=None)
    m.add_argument("--store-prefix", default=None)
    m.add_argument("--generation", type=tc.non_negative_int, default=None)


def orchestrator_hotkey(cfg) -> str:
    if cfg.orchestrator_hotkey:
        return cfg.orchestrator_hotkey
    import asyncio

    from template.chain.client import client_for

    async def owner() -> str:
        async with client_for(tc.endpoint_of(cfg)) as client:
            graph = await client.subnets.metagraph(cfg.netuid)
            if graph is None:
                raise SystemExit(f"miner: error: subnet {cfg.netuid} does not exist")
            return graph.owner_hotkey

    return asyncio.run(owner())


MANUAL = ("rank", "world_size", "tcp_store_address", "tcp_store_port", "store_prefix")


def manual_flags(cfg) -> bool:
    return any(getattr(cfg, name) is not None for name in MANUAL)


def assignment_from(cfg, client) -> p.Assignment:
    if manual_flags(cfg):
        answer = client.assignment()
        a = answer.assignment
        return p.Assignment(
            generation=cfg.generation if cfg.generation is not None else (a.generation if a else 0),
            rank=cfg.rank,
            world_size=cfg.world_size,
            members=a.members
            if a and a.world_size == cfg.world_size
            else [p.Member(rank=i, hotkey="") for i in range(cfg.world_size)],
            store_host=cfg.tcp_store_address,
            store_port=cfg.tcp_store_port,
            store_prefix=cfg.store_prefix,
            round=a.round if a else 0,
            checkpoint=a.checkpoint if a else None,
            run_id=client.run().run_id,
        )
    answer = client.assignment()
    if answer.status != "assigned" or answer.assignment is None:
        log.info("not assigned (%s): %s", answer.status, answer.detail)
        raise SystemExit(exit_codes.REASSIGN)
    return answer.assignment


def join_group(a: p.Assignment, backend: str, timeout_s: float) -> None:
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(a.store_host, a.store_port, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend, store=dist.PrefixStore(a.store_prefix, store), rank=a.rank, world_size=a.world_size, timeout=timeout
    )


def catch_up(a: p.Assignment, client, states_dir: Path, device: str, max_bytes: int) -> Optional[bytes]:
    """The global state at the start of the round: from this machine, else the
    orchestrator, else broadcast by the lowest rank that has it (hash-checked).
    Whoever holds it locally while the orchestrator lacks it uploads it, so an
    agreed state outlives the rank 0 that died before uploading."""
    if a.checkpoint is None:
        return None
    import hashlib

    local = states_dir / a.checkpoint
    data = local.read_bytes() if local.exists() else None
    if data is not None and hashlib.sha256(data).hexdigest() != a.checkpoint:
        log.warning("local state %s is corrupt; fetching it again", local)
        data = None
    if data is None:
        try:
            data = client.checkpoint(a.checkpoint)
        except Exception as error:  # the broadcast below is the fallback
            log.warning("checkpoint download failed: %s", error)
    elif client.checkpoint_info(a.checkpoint) is None:
        try:
            client.upload_checkpoint(a.checkpoint, data)
            log.info("uploaded agreed state %s the orchestrator was missing", a.checkpoint[:12])
        except Exception as error:
            log.warning("could not upload agreed state %s: %s", a.checkpoint[:12], error)
    # nccl only moves device tensors.
    dev = torch.device(device if dist.get_backend() == "nccl" else "cpu")
    have = torch.tensor([0 if data is None else 1], dtype=torch.int64, device=dev)
    flags = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(a.world_size)]
    dist.all_gather(flags, have)
    holders = [r for r, f in enumerate(flags) if int(f.item())]
    if not holders:
        raise RuntimeError(f"no one holds the agreed state {a.checkpoint}: neither the orchestrator nor any member")
    if len(holders) < a.world_size:
        # Holders are untrusted: sizes are capped, and a holder whose bytes do not hash
        # to the agreed state is skipped (every rank sees the same bytes, so all agree).
        mine = data
        for src in holders:
            size = torch.tensor([len(mine) if a.rank == src else 0], dtype=torch.int64, device=dev)
            dist.broadcast(size, src)
            n = int(size.item())
            if not 0 < n <= max_bytes:
                log.warning("rank %d offered a %d-byte state (cap %d): skipped", src, n, max_bytes)
                continue
            buf = (
                torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(dev)
                if a.rank == src
                else torch.empty(n, dtype=torch.uint8, device=dev)
            )
            dist.broadcast(buf, src)
            got = buf.cpu().numpy().tobytes()
            if hashlib.sha256(got).hexdigest() == a.checkpoint:
                data = got
                break
            log.warning("rank %d's state does not match the agreed hash: trying the next holder", src)
        else:
            raise RuntimeError(f"no member sent the agreed state {a.checkpoint}")
    if hashlib.sha256(data).hexdigest() != a.checkpoint:
        raise RuntimeError(f"received state does not match the agreed hash {a.checkpoint}")
    if not local.exists():
        keep_state(states_dir, a.checkpoint, data, protect={a.checkpoint})
    return data


def keep_state(states_dir: Path, sha: str, data: bytes, keep: int = 3, protect: frozenset | set = frozenset()) -> None:
    """Keep the newest states, never deleting a protected one (the agreed state
    this generation started from: redone rounds must not evict it)."""
    from template.files import atomic_write

    atomic_write(states_dir / sha, data)
    for old in sorted(states_dir.iterdir(), key=lambda f: f.stat().st_mtime)[:-keep]:
        if old.name not in protect and old.name != sha:
            old.unlink(missing_ok=True)


def wait_for_agreement(client, a: p.Assignment, round_: int, answer: p.RoundResponse) -> str:
    """Block until the round is agreed; exit REASSIGN if the generation moves on
    (checked even when our own report completed the round: joiners may be
    entering at this boundary, and our peers are about to be relaunched)."""
    while True:
        if answer.agreed is not None and answer.round > round_:
            now = client.assignment()
            if now.status == "assigned" and now.assignment.generation == a.generation:
                return answer.agreed
        else:
            time.sleep(0.2)
            now = client.assignment()
        if now.status != "assigned" or now.assignment.generation != a.generation:
            log.info("generation %d ended at round %d's boundary", a.generation, round_)
            raise SystemExit(exit_codes.REASSIGN)
        answer = p.RoundResponse(accepted=True, round=now.assignment.round, agreed=now.assignment.checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = tc.build_parser("neurons/miner.py", __doc__, add_args)
    cfg = tc.Config.from_namespace(parser.parse_args(argv))
    if manual_flags(cfg) and not all(getattr(cfg, name) is not None for name in MANUAL):
        parser.error("--rank, --world-size, --tcp-store-address, --tcp-store-port and --store-prefix go together")
    if cfg.rank is not None and cfg.rank >= cfg.world_size:
        parser.error(f"--rank {cfg.rank} must be below --world-size {cfg.world_size}")
    work = Path(cfg.work_dir)
    (work / "states").mkdir(parents=True, exist_ok=True)
    setup_logging(cfg, logfile=str(work / "miner.log"))

    import bittensor as bt

    from template.data.sampling import batch_offsets, windows_to_tensor
    from template.data.store import ShardCache, shard_reader
    from template.engine.trainer import GroupFailure, Trainer
    from template.miner.receipts import ReceiptStore, write_progress
    from template.net.orchestrator_client import OrchestratorClient, OrchestratorError
    from template.wire.signing import sign_receipt

    wallet = bt.Wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path)
    hotkey = wallet.hotkey.ss58_address
    client = OrchestratorClient(cfg.orchestrator_url, wallet, orchestrator_hotkey(cfg))
    run = client.run()
    t = run.training
    a = assignment_from(cfg, client)
    log.info(
        "generation %d: rank %d of %d, round %d, start state %s",
        a.generation,
        a.rank,
        a.world_size,
        a.round,
        a.checkpoint or "seed",
    )
    read = shard_reader(run.dataset, ShardCache(work / "cache", client.shard).get)
    receipts = ReceiptStore(work)
    progress = work / "progress.json"
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    try:
        join_group(a, backend, cfg.timeout)
        trainer = Trainer(
            t,
            rank=a.rank,
            world_size=a.world_size,
            device=cfg.device,
            peers=[m.hotkey for m in a.members],
            sign=wallet.hotkey.sign,
            context=f"{run.run_id}/{a.generation}",
        )
        trainer.load(None)  # the seed state: same tensors as any agreed state, so it sizes the cap
        max_state = len(trainer.state_bytes()) + 64 * 1024
        start = catch_up(a, client, work / "states", cfg.device, max_state)
        trainer.load(start)
        round_, start_state, done, last_loss = a.round, a.checkpoint, 0, None
        while not cfg.max_rounds or done < cfg.max_rounds:

            def batch(step: int, r=round_, shown=last_loss) -> torch.Tensor:
                # `loss` is the last finished round's, so a slow poller still sees one.
                write_progress(
                    progress,
                    generation=a.generation,
                    rank=a.rank,
                    round=r,
                    step=step,
                    loss=shown,
                    world_size=a.world_size,
                )
                offsets = batch_offsets(
                    run.dataset,
                    seed=t.seed,
                    round=r,
                    hotkey=hotkey,
                    step=step,
                    batch_size=t.batch_size,
                    seq_len=t.seq_len,
                )
                return windows_to_tensor(read, offsets, t.seq_len).to(cfg.device)

            result = trainer.run_round(round_, batch)
            state = trainer.state_bytes()
            keep_state(work / "states", result.state_hash, state, protect={a.checkpoint} if a.checkpoint else set())
            loss = sum(result.losses) / len(result.losses)
            receipt = p.Receipt(
                hotkey=hotkey,
                run_id=run.run_id,
                generation=a.generation,
                round=round_,
                rank=a.rank,
                start_state=start_state,
                end_state=result.state_hash,
                seed=t.seed,
                losses=result.losses,
                contribution_sha256=result.contribution_sha256,
                contribution_norm=result.contribution_norm,
                contribution_bytes=len(result.contribution or b""),
                dropped=result.dropped,
                received_sha256=result.received,
                created_at=time.time(),
            )
            receipts.put(sign_receipt(receipt, wallet.hotkey.sign), result.contribution)
            write_progress(
                progress,
                generation=a.generation,
                rank=a.rank,
                round=round_,
                step=t.inner_steps,
                loss=loss,
                world_size=a.world_size,
            )
            for rank, reason in result.dropped.items():
                log.warning("round %d: dropped rank %d's contribution: %s", round_, rank, reason)
                try:  # the orchestrator keeps count; validators and the owner act on it
                    client.report_misbehavior(
                        p.MisbehaviorReport(
                            generation=a.generation, round=round_, accused=a.members[rank].hotkey, reason=reason[:200]
                        )
                    )
                except Exception as error:
                    log.warning("could not report rank %d: %s", rank, error)
            try:
                answer = client.report_round(
                    p.RoundReport(generation=a.generation, round=round_, state=result.state_hash, loss=loss)
                )
            except OrchestratorError as error:
                if error.status == 409:
                    log.info("round %d not accepted (%s): re-assigning", round_, error.detail)
                    return exit_codes.REASSIGN
                raise
            agreed = wait_for_agreement(client, a, round_, answer)
            if agreed != result.state_hash:
                log.error("round %d: my state %s differs from the agreed %s", round_, result.state_hash, agreed)
                return exit_codes.DIVERGED
            if a.rank == 0:  # the orchestrator only stores agreed states
                try:
                    client.upload_checkpoint(result.state_hash, state)
                except OrchestratorError as error:
                    log.warning("checkpoint upload failed: %s", error)
            log.info(
                "round %d agreed: loss %.4f, state %s, %d bytes sent",
                round_,
                loss,
                result.state_hash[:12],
                result.bytes_sent,
            )
            round_, start_state, done, last_loss = round_ + 1, result.state_hash, done + 1, loss
        return exit_codes.OK
    except GroupFailure as error:
        log.warning("process group failed: %s", error)
        return exit_codes.GROUP_FAILURE
    except OrchestratorError as error:  # unreachable for the client's whole retry window
        log.error("%s", error)
        return exit_codes.ERROR
    except (RuntimeError, dist.DistError) as error:
        if "timed out" in str(error).lower() or "connection" in str(error).lower():
            log.warning("process group failed: %s", error)
            return exit_codes.GROUP_FAILURE
        raise
    finally:
        client.close()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
