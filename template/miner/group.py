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
import os
import re
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from template import wire as p
from template.engine.agreement import AgreedSet, AgreementFailure
from template.engine.exchange import GroupFailure, collective
from template.files import atomic_write
from template.net.orchestrator_client import OrchestratorError
from template.net.store_tunnel import StoreForwarder, hello_signer
from template.wire.orchestrator import (
    AGREEMENT_GRACE_S,
    ContributionReport,
    SignedHash,
    contribution_deadline_s,
)
from template.wire.orchestrator import presence_message as wire_presence_message
from template.wire.signing import verify_signature

log = logging.getLogger("tensorswarm.miner")


# gloo tries a pair's connect this many times, each for the group's timeout, before it gives up (torch
# 2.13, measured: a peer that accepts and never answers held init_process_group 5 x the timeout).
GLOO_CONNECT_ATTEMPTS = 5
MIN_CONNECT_ATTEMPT_S = 3.0  # gloo's wait for the peers' addresses in the store runs on it too


def connect_timeout_s(timeout_s: float) -> float:
    """What gloo's rendezvous is given so that its connect, attempts included, ends within about the group's
    timeout (the collectives get the whole timeout once the group stands): a peer whose address accepts and
    never answers then costs one timeout per broken rendezvous, not five."""
    return min(timeout_s, max(timeout_s / GLOO_CONNECT_ATTEMPTS, MIN_CONNECT_ATTEMPT_S))


_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def route_interface(host: str, port: int) -> Optional[str]:
    """The name of this machine's network interface whose address routes to ``host`` (what gloo must
    bind to so its peers reach it: the address the host name resolves to is often 127.0.1.1), or None
    when it cannot be told (not Linux, IPv6 only, no route)."""
    import fcntl
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))  # UDP: picks the route, sends nothing
            local = probe.getsockname()[0]
        for _, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue  # no IPv4 address on it
            if socket.inet_ntoa(packed[20:24]) == local:
                return name
    except OSError:
        return None
    return None


def presence_message(a: p.Assignment, rank: int) -> bytes:
    """What ``rank`` signs to say it reached ``a``'s rendezvous (:func:`template.wire.orchestrator.presence_message`)."""
    return wire_presence_message(a.run_id, a.generation, rank)


def join_group(
    a: p.Assignment,
    backend: str,
    timeout_s: float,
    sign=None,
    orchestrator: Optional[str] = None,
    presence_deadline: Optional[float] = None,
):
    """Join the assignment's group; the orchestrator hosts the store, each generation under its own prefix.

    With ``orchestrator`` (its hotkey) and ``sign``, the store is reached through the orchestrator's
    members-only tunnel (a :class:`~template.net.store_tunnel.StoreForwarder` on this machine's
    loopback, returned: it must live as long as the group). A refusal is a broken group, named in
    the orchestrator's words.

    With ``sign`` (this rank's hotkey signer) every rank first posts a signed presence key and waits
    for everyone's, so the log says which ranks never arrived (a peer cannot post presence for another:
    signatures are checked), until ``presence_deadline`` (``time.monotonic``; from the assignment's
    ``presence_left_s``: the same moment for every rank) or else ``timeout_s`` after its own. The failure (a :class:`~template.engine.exchange.GroupFailure`) names
    nobody to the orchestrator, though: every member can write to the store (a hostile one could
    delete honest ranks' keys), so nothing read from it is evidence against a member (the orchestrator
    removes members that never checked in over signed HTTP). A broken rendezvous is a broken group,
    not this rank's crash; a peer gloo cannot connect to is named with its address
    (:func:`unreachable_peer`)."""
    forwarder, host, port = None, a.store_host, a.store_port
    if (
        backend == "gloo"
        and _chosen_interface is not None
        and os.environ.get("GLOO_SOCKET_IFNAME") == _chosen_interface
    ):
        os.environ.pop("GLOO_SOCKET_IFNAME")  # chosen for an earlier generation: the route may have changed
    if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
        # Bind gloo to the interface that leads to the orchestrator: its peers reach it the same way.
        interface = route_interface(a.store_host, a.store_port)
        if interface:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
            _remember_interface(interface)
            log.info("gloo binds to %s (the interface that routes to %s)", interface, a.store_host)
    if orchestrator is not None and sign is not None:
        answer = hello_signer(a.members[a.rank].hotkey, a.generation, a.run_id, orchestrator, sign)
        try:
            forwarder = StoreForwarder(a.store_host, a.store_port, answer, timeout_s=min(timeout_s, 30.0))
        except OSError as error:  # TunnelRefused is one
            raise GroupFailure(
                f"the store at {a.store_host}:{a.store_port} did not let this rank in: {error}"
            ) from None
        host, port = "127.0.0.1", forwarder.port
    try:
        _rendezvous(a, backend, timeout_s, sign, host, port, presence_deadline)
    except BaseException:
        if forwarder is not None:  # the caller gets no forwarder to close when joining fails
            forwarder.close()
        raise
    return forwarder


def _rendezvous(
    a: p.Assignment, backend: str, timeout_s: float, sign, host: str, port: int, presence_deadline: Optional[float]
) -> None:
    timeout = datetime.timedelta(seconds=timeout_s)
    with collective("joining the process group"):
        store = dist.PrefixStore(a.store_prefix, dist.TCPStore(host, port, is_master=False, timeout=timeout))
    if sign is not None:
        keys = [f"present/{r}" for r in range(a.world_size)]
        with collective("announcing this rank"):
            store.set(keys[a.rank], bytes(sign(presence_message(a, a.rank))).hex())
        # One blocking wait per peer (the store answers when the key is set): O(n) requests per rank,
        # where polling every key would cost the store O(n²) per poll.
        # The orchestrator's deadline is every rank's: a rank giving up on its own clock while the others go on
        # would leave them to name it for the address it never posts.
        deadline = presence_deadline if presence_deadline is not None else time.monotonic() + timeout_s
        with collective("waiting for the other ranks to arrive"):  # a store link that breaks is a broken group
            absent = [r for r in range(a.world_size) if r != a.rank and not _await_presence(a, store, r, deadline)]
        if absent:
            raise GroupFailure(f"rendezvous: rank(s) {absent} had not arrived by the generation's deadline")
    # Under TORCH_DISTRIBUTED_DEBUG=DETAIL torch wraps gloo, and the group's timeout can no longer be restored
    # after a short connect (_set_pg_timeout only warns): every collective would keep the short one.
    short = backend == "gloo" and os.environ.get("TORCH_DISTRIBUTED_DEBUG", "").upper() != "DETAIL"
    connect = datetime.timedelta(seconds=connect_timeout_s(timeout_s)) if short else timeout
    try:
        dist.init_process_group(backend, store=store, rank=a.rank, world_size=a.world_size, timeout=connect)
        if connect != timeout:
            from torch.distributed.distributed_c10d import _set_pg_timeout

            _set_pg_timeout(timeout)  # the collectives' (point-to-point waits pass it: exchange.group_timeout)
    except RuntimeError as error:
        _reset_group_names()
        text = str(error)
        culprits = rendezvous_culprits(text, _address_blobs(store, a), a.rank)
        # gloo's connect timed out and nobody can be named: the orchestrator tests members one at a time.
        unnamed = not culprits and "connect" in text.lower() and "timeout" in text.lower()
        raise GroupFailure(
            unreachable_peer(text) or f"joining the process group failed: {error}", culprits, unnamed
        ) from error


_chosen_interface: Optional[str] = None  # the GLOO_SOCKET_IFNAME join_group set (not the user's)


def _remember_interface(name: str) -> None:
    global _chosen_interface
    _chosen_interface = name


def _reset_group_names() -> None:
    """torch names the default group by a counter that only ``destroy_process_group`` resets, and a
    failed ``init_process_group`` leaves it raised: this process's next group would post its gloo
    address under another key than its fresh peers wait for (and be named for not posting it)."""
    world = getattr(dist.distributed_c10d, "_world", None)
    if world is not None and not dist.is_initialized() and hasattr(world, "group_count"):
        world.group_count = 0


# torch's default process group on CPU posts rank r's gloo address under this key (within the
# generation's prefix); the orchestrator's store lets only rank r write it.
GLOO_ADDRESS_KEY = "0//cpu//0/{rank}"
# Where gloo's serialized address holds the listening sockaddr (family, port, IPv4 address): compared at
# that place only, so bytes a rank hides elsewhere in its blob (a colluder's address, say) match nothing.
GLOO_SOCKADDR_AT = 18
_MISSING_ADDRESS = re.compile(r"\d+//\w+//\d+/(\d+)")


def rendezvous_culprits(error: str, addresses: dict[int, bytes], me: int) -> tuple[int, ...]:
    """The ranks a failed gloo rendezvous can blame, from torch's error text and the address each
    rank posted (``addresses``: rank -> the bytes under its address key; only that rank can write
    them). Two cases: a rank that never posted its address (torch waits for its key in vain: "wait
    timeout after ...ms, keys: .../0//cpu//0/2"), and a rank whose posted address refuses or drops the
    connection (gloo: "SO_ERROR: ..., remote=[host]:port"), found by that address (IPv4) in what it
    posted. An address two ranks posted names nobody: a rank could post an honest peer's address as
    its own to get it blamed. Never names ``me``."""
    import socket
    import struct

    if "wait timeout" in error and "keys:" in error:
        ranks = {int(r) for r in _MISSING_ADDRESS.findall(error.split("keys:", 1)[1])}
        return tuple(sorted(r for r in ranks if r != me))
    found = _GLOO_REMOTE.search(error)
    if not found:
        return ()
    _, host, printed = found.groups()
    try:
        port = _gloo_port(printed)
        sockaddr = struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host)
    except (OSError, ValueError, struct.error):  # IPv6, or not an address
        return ()
    at = GLOO_SOCKADDR_AT
    posted = [r for r, blob in addresses.items() if blob[at : at + len(sockaddr)] == sockaddr and r != me]
    return tuple(posted) if len(posted) == 1 else ()


def _address_blobs(store, a: p.Assignment) -> dict[int, bytes]:
    """Every other rank's posted gloo address, as far as the store still holds it (best effort: the
    group is broken; nothing here may raise)."""
    blobs = {}
    for r in range(a.world_size):
        key = GLOO_ADDRESS_KEY.format(rank=r)
        try:
            if r != a.rank and store.check([key]):
                blobs[r] = store.get(key)
        except Exception:  # the store went away with the generation
            break
    return blobs


_GLOO_REMOTE = re.compile(r"SO_ERROR: ([^,]+), remote=\[([^\]]+)\]:(\d+)")


def _gloo_port(printed: str) -> int:
    """The port gloo's connect error names, as a number: it prints the sockaddr's port field without
    converting it from network byte order (a peer listening on 45879 reads "14259" on this machine)."""
    import socket

    return socket.ntohs(int(printed) & 0xFFFF)


def unreachable_peer(error: str) -> Optional[str]:
    """A plain-words account of gloo's failure to connect to a peer (its address and why, and what the
    peer's owner can do), or None when ``error`` is not one."""
    found = _GLOO_REMOTE.search(error)
    if not found:
        return None
    why, host, printed = found.groups()
    port = _gloo_port(printed)
    return (
        f"could not connect to a peer rank at {host}:{port} ({why.strip()}): that peer advertised an address "
        "this machine cannot reach. Its owner must accept connections from the other miners on that address "
        "(firewall, NAT), or bind gloo to an interface its peers can reach (GLOO_SOCKET_IFNAME)"
    )


def _await_presence(a: p.Assignment, store, rank: int, deadline: float) -> bool:
    """Wait until ``rank``'s validly signed presence key is in the store, or ``deadline``."""
    key = f"present/{rank}"
    while True:
        left = deadline - time.monotonic()
        if left > 0:
            try:
                store.wait([key], datetime.timedelta(seconds=left))
            except dist.DistNetworkError:  # the link to the store broke: not a wait to go on with
                raise
            except RuntimeError:  # DistStoreError: not there in time
                pass
        if store.check([key]) and _present(a, rank, store.get(key)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)  # there, but not its signature (a forger's): its owner may still write it


def _present(a: p.Assignment, rank: int, value: bytes) -> bool:
    try:
        signature = bytes.fromhex(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return verify_signature(a.members[rank].hotkey, presence_message(a, rank), signature)


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
