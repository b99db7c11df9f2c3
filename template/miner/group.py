"""Joining the process group and healing into it: one rank connects to its generation's TCPStore
(``join_group``), then gets the agreed global state the generation starts from (``catch_up``) from
this machine's disk, else the orchestrator, else a broadcast from the lowest rank that holds it
(hash-checked and size-capped, since holders are untrusted); ``keep_state`` is the local store of
global states those come from. Each diloco round the group settles one view of the contributions
through the orchestrator (``OrchestratorAgreement``, the engine's ``Agreement``), since a process group
whose members may lie about what they sent and received cannot agree with itself."""

from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from template import wire as p
from template.engine.agreement import AgreedSet, AgreementFailure
from template.files import atomic_write
from template.net.orchestrator_client import OrchestratorError
from template.wire.orchestrator import (
    AGREEMENT_GRACE_S,
    ContributionReport,
    SignedHash,
    contribution_deadline_s,
)

log = logging.getLogger("tensorswarm.miner")


def join_group(a: p.Assignment, backend: str, timeout_s: float) -> None:
    """Join the assignment's group; the orchestrator hosts the store, each generation under its own prefix."""
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
        data = _from_holders(a, holders, data, dev, max_bytes)
    if hashlib.sha256(data).hexdigest() != a.checkpoint:
        raise RuntimeError(f"received state does not match the agreed hash {a.checkpoint}")
    if not local.exists():
        keep_state(states_dir, a.checkpoint, data, protect={a.checkpoint})
    return data


def _from_holders(a: p.Assignment, holders: list[int], mine: Optional[bytes], dev, max_bytes: int) -> bytes:
    """Every rank takes the first holder's broadcast that hashes to the agreed state.

    Holders are untrusted: sizes are capped, and a holder whose bytes do not hash
    to the agreed state is skipped (every rank sees the same bytes, so all agree)."""
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
            return got
        log.warning("rank %d's state does not match the agreed hash: trying the next holder", src)
    raise RuntimeError(f"no member sent the agreed state {a.checkpoint}")


def keep_state(states_dir: Path, sha: str, data: bytes, keep: int = 3, protect: frozenset | set = frozenset()) -> None:
    """Keep the newest states, never deleting a protected one (the agreed state
    this generation started from: redone rounds must not evict it)."""
    atomic_write(states_dir / sha, data)
    for old in sorted(states_dir.iterdir(), key=lambda f: f.stat().st_mtime)[:-keep]:
        if old.name not in protect and old.name != sha:
            old.unlink(missing_ok=True)


class OrchestratorAgreement:
    """The engine's :class:`~template.engine.agreement.Agreement` through the orchestrator: report what
    this rank received (``POST /v1/contributions``), poll until the decision is made, follow it. The
    wait is bounded by the orchestrator's deadline for the round timeout plus a grace period; no
    decision in time, or an orchestrator that refuses (the generation moved on), is an
    :class:`~template.engine.agreement.AgreementFailure`: the group is broken, the generation re-forms."""

    def __init__(self, client, generation: int, round_timeout_s: float):
        self.client, self.generation = client, generation
        self.timeout_s = contribution_deadline_s(round_timeout_s) + AGREEMENT_GRACE_S

    def decide(self, round: int, received) -> AgreedSet:
        report = ContributionReport(
            generation=self.generation,
            round=round,
            received=[None if e is None else SignedHash(sha256=e[0], signature=bytes(e[1]).hex()) for e in received],
        )
        try:
            decision = self.client.agree_contributions(report, self.timeout_s)
        except OrchestratorError as error:
            raise AgreementFailure(f"round {round}: no contribution decision: {error}") from error
        return AgreedSet(list(decision.included), [list(x) for x in decision.lacking], list(decision.reasons))
