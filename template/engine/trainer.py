"""One rank's training for one round, over the default ``torch.distributed`` process group.

The caller (``neurons/miner.py``) joins the group — a ``PrefixStore`` over the orchestrator's
``TCPStore``, gloo on CPU / nccl on GPU, with a timeout — loads the agreed global state θ_r and calls
:meth:`Trainer.run_round` once per round. Three strategies (``TrainingConfig.strategy``):

``diloco`` (default; untrusted swarms)
    Every rank starts from θ_r, takes H inner AdamW steps on its own batches and forms its
    pseudo-gradient Δ_i = θ_r − θ_i. Δ_i is compressed with error feedback, serialized and signed
    with the rank's hotkey, and all contributions are all-gathered *as raw bytes*. Each rank then
    screens every contribution in rank order (signature, size, parse against the parameter spec,
    finiteness, norm outlier), aggregates the survivors with the run's robust aggregator and applies
    the Nesterov outer step to θ_r. All honest ranks see the same bytes and run the same
    deterministic code (``template.aggregation`` and ``template.outer`` are bit-exact), so they all
    end with the same θ_{r+1} — the state hash the orchestrator then votes on.

``ddp`` (trusted swarms)
    H AdamW steps on gradients averaged across ranks every step (one flat all-reduce).

``fsdp`` (trusted, memory-bound swarms)
    FSDP2 (``torch.distributed.fsdp.fully_shard``, which works on CPU with gloo): parameters and
    AdamW moments are sharded along dim 0 across ranks; each rank holds ~1/N of both.

The global state (:meth:`Trainer.state_bytes`) is canonical :mod:`template.checkpoint` bytes:
parameters, plus the outer momentum (diloco) or the AdamW moments (ddp/fsdp), plus meta with the
round. What a diloco rank keeps outside it — the error-feedback residual and its inner AdamW
moments — is local and resets on :meth:`Trainer.load`.

Trust: peers are untrusted. Nothing received is unpickled (``all_gather_object`` would be remote code
execution); received lengths are capped before anything is allocated; every contribution is checked
against the sender's hotkey signature before it is parsed. A peer that dies or stalls makes the
collective fail or time out, which surfaces as :class:`GroupFailure`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.aggregation import aggregate, norm_check, vector_norm
from template.engine.compression import (
    DEFAULT_CHUNK_SIZE,
    Compressed,
    CompressionError,
    ErrorFeedback,
    payload_bytes,
)
from template.engine.outer import OuterOptimizer
from template.engine.state import StateFormat
from template.wire.signing import SIGNATURE_BYTES, contribution_message, verify_signature

__all__ = [
    "GroupFailure",
    "RoundResult",
    "Trainer",
    "contribution_message",
    "SIGNATURE_BYTES",
    "NORM_MAX_RATIO",
]

log = logging.getLogger(__name__)

# Drop a Δ whose norm exceeds 10× the median norm. Like every robust statistic here it needs an
# honest majority: with 2 ranks the median is the mean of both, and trimmed_mean trims nothing.
NORM_MAX_RATIO = 10.0
GRAD_CLIP = 1.0
ADAM_BETAS = (0.9, 0.95)  # nanoGPT's


class GroupFailure(RuntimeError):
    """A collective failed or timed out (a peer died, stalled or broke the protocol). The process
    group is unusable afterwards and the trainer is mid-round: the caller reports it and exits with
    a distinct code; the next generation starts from a load()ed agreed state."""


@dataclass
class RoundResult:
    round: int
    losses: list[float]  # this rank's H inner-step losses, in step order
    state_hash: str  # sha256 of state_bytes() after the round: identical on every honest rank
    contribution: Optional[bytes] = None  # diloco: this rank's signed, compressed Δ (as sent)
    contribution_sha256: Optional[str] = None
    contribution_norm: Optional[float] = None  # L2 norm of the decompressed Δ (what the peers saw)
    dropped: dict[int, str] = field(default_factory=dict)  # rank -> why its contribution was refused
    # diloco: per rank, sha256 of the contribution received from it whose signature verified (None:
    # nothing validly signed arrived). Signed into the receipt, these let validators check that what a
    # miner serves them is what it actually sent, whoever copies whom.
    received: list[Optional[str]] = field(default_factory=list)
    bytes_sent: int = 0  # bytes this rank fed into collectives this round (see Trainer.run_round)


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed collective (peer gone, timeout, size mismatch) into :class:`GroupFailure`."""
    try:
        yield
    except GroupFailure:
        raise
    except RuntimeError as e:  # DistBackendError, DistNetworkError, gloo/nccl errors, timeouts
        raise GroupFailure(f"{what} failed: {e}") from e


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly FSDP-sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def _storage_bytes(tensors) -> int:
    """Bytes of distinct storage behind ``tensors`` (local shards for DTensors; padding included)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = _local(t).untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class InMemoryExchange:
    """Ranks as threads of one process: stands in for :meth:`Trainer._exchange` (same return value),
    so screening, aggregation and the outer step run unchanged without a process group. For tests and
    benchmarks that need many ranks' real contributions cheaply; production always exchanges over
    ``torch.distributed``. ``trainer._exchange = exchange.bind(rank)``."""

    def __init__(self, n: int, timeout_s: float = 120.0):
        self.slots: list = [None] * n
        self.barrier = threading.Barrier(n, timeout=timeout_s)

    def bind(self, rank: int):
        def exchange(payload: bytes, signature: bytes):
            self.slots[rank] = (payload, signature)
            self.barrier.wait()
            entries = [(len(p), len(s), p, s) for p, s in self.slots]
            self.barrier.wait()  # nobody overwrites a slot before everyone has read it
            return entries, len(payload) + len(signature)

        return exchange


class Trainer:
    """Trains one rank of the run. ``load()`` first, then ``run_round(r)`` for r = state round, r+1, …"""

    def __init__(
        self,
        cfg: TrainingConfig,
        *,
        rank: int,
        world_size: int,
        device: str = "cpu",
        peers: list[str],
        sign: Callable[[bytes], bytes],
        context: str,
        verify: Callable[[str, bytes, bytes], bool] | None = None,
    ):
        if not (0 <= rank < world_size):
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if len(peers) != world_size:
            raise ValueError(f"{len(peers)} peer hotkeys for world size {world_size}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.peers = list(peers)
        self.sign, self.context = sign, context
        self.verify = verify or verify_signature
        self.format = StateFormat(cfg)
        self.preset = self.format.preset

        # The parameter spec every contribution must match, and the cap on its size. An honest
        # contribution's size depends only on (spec, scheme, fraction) — never on the values — so the
        # cap is exactly that size: a peer cannot make the others allocate more than one honest
        # contribution's worth per rank.
        self.names, self.spec, self.num_params = self.format.names, self.format.spec, self.format.num_params
        if cfg.strategy == "diloco":
            self.max_contribution_bytes = payload_bytes(self.spec, cfg.compression, fraction=cfg.topk_fraction)
        else:
            self.max_contribution_bytes = 0

        self.model: torch.nn.Module | None = None
        self.round = 0
        self._state_cache: bytes | None = None

    # -- global state ----------------------------------------------------------------------------

    def load(self, state: Optional[bytes]) -> str:
        """Adopt the global state ``state`` (canonical bytes from :meth:`state_bytes`, e.g. the agreed
        checkpoint) or, with ``None``, the deterministic initial state from ``cfg.seed``. Resets the
        rank-local state (diloco: error-feedback residual, inner AdamW). Returns the state's hash.
        Refuses (``ValueError``) a state that does not match this run's preset and strategy. On fsdp
        every rank must call it."""
        cfg = self.cfg
        # The canonical bytes of what is loaded, known before any sharding (so no collective):
        # ``loads`` accepts only canonical bytes, so a given state is its own serialization.
        self._state_cache = self.format.initial() if state is None else bytes(state)
        parsed = self.format.parse(self._state_cache)
        self.round, self.outer_step, self.inner_step = parsed.round, parsed.outer_step, parsed.inner_step
        extra = parsed.extra()
        model = self.format.model(parsed, self.device)

        self.ef = ErrorFeedback(cfg.compression, fraction=cfg.topk_fraction) if cfg.strategy == "diloco" else None
        self.outer = None
        if cfg.strategy == "diloco":
            self.outer = OuterOptimizer(cfg.outer_lr, cfg.outer_momentum, nesterov=True)
            self.outer.buffers = {n: extra[f"outer/{n}"].to(self.device) for n in self.names}
            self.outer.step_count = self.outer_step
            # The inner AdamW state is rank-local and kept across rounds, as in DiLoCo: a fresh
            # AdamW each round starts with sign-like steps of size lr that undo part of the
            # progress (measured: round-mean loss rose in round 2 on the test text). Like the
            # error-feedback residual it is not global state, so it starts fresh on load().
            self.optimizer = self._adamw(model)
        else:
            if cfg.strategy == "fsdp":
                self._shard(model)
            self.optimizer = self._adamw(model)
            # Install the global AdamW moments (zeros at init = what a fresh AdamW would create).
            for n, p in model.named_parameters():
                self.optimizer.state[p] = {
                    "step": torch.tensor(float(self.inner_step)),
                    "exp_avg": self._like(p, extra[f"adam.exp_avg/{n}"]),
                    "exp_avg_sq": self._like(p, extra[f"adam.exp_avg_sq/{n}"]),
                }
        self.model = model
        return checkpoint.state_hash(self._state_cache)

    def state_bytes(self) -> bytes:
        """Canonical bytes of the current global state. On fsdp every rank must call it (it
        all-gathers the shards); the result is cached until the state changes."""
        if self.model is None:
            raise RuntimeError("load() a state first")
        if self._state_cache is None:
            with _collective("gathering the state"):
                params = {n: self._full(p) for n, p in self.model.named_parameters()}
                extra = {}
                if self.outer is not None:
                    extra = {f"outer/{n}": self.outer.buffers[n] for n in self.names}
                else:
                    for n, p in self.model.named_parameters():
                        st = self.optimizer.state[p]
                        extra[f"adam.exp_avg/{n}"] = self._full(st["exp_avg"])
                        extra[f"adam.exp_avg_sq/{n}"] = self._full(st["exp_avg_sq"])
            self._state_cache = self.format.dumps(
                params, extra, round=self.round, outer_step=self.outer_step, inner_step=self.inner_step
            )
        return self._state_cache

    # -- FSDP helpers ------------------------------------------------------------------------------

    def _shard(self, model: torch.nn.Module) -> None:
        # FSDP2 shards each parameter along dim 0 by local chunking (no communication): every rank
        # holds the same full state here, so each keeps its own chunk. One unit per block plus the
        # root (embeddings, final LayerNorm), as in the FSDP2 examples.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if getattr(self, "_mesh", None) is None:
            self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        for block in model.transformer.h:
            fully_shard(block, mesh=self._mesh)
        fully_shard(model, mesh=self._mesh)

    def _like(self, param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """``full`` placed like ``param``: this rank's shard of it when ``param`` is sharded."""
        full = full.to(self.device, torch.float32)
        if hasattr(param, "placements"):
            from torch.distributed.tensor import distribute_tensor

            # src_data_rank=None: every rank already holds the full tensor, slice locally.
            return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        return full.clone()

    @staticmethod
    def _full(t: torch.Tensor) -> torch.Tensor:
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().to("cpu")

    def param_bytes_per_rank(self) -> int:
        """Bytes of parameter storage this rank holds between steps (its FSDP shards on fsdp)."""
        return _storage_bytes(self.model.parameters())

    def optimizer_bytes_per_rank(self) -> int:
        """Bytes of AdamW moments this rank holds (sharded on fsdp; rank-local on diloco, where
        the outer momentum buffers come on top)."""
        return _storage_bytes(t for st in self.optimizer.state.values() for k, t in st.items() if k != "step")

    # -- one round -----------------------------------------------------------------------------

    def run_round(self, round: int, batch: Callable[[int], torch.Tensor]) -> RoundResult:
        """Train round ``round`` (it must be the loaded state's round). ``batch(step)`` gives this
        rank's LongTensor (batch_size, seq_len + 1) for inner step ``step`` = 0..H−1.

        ``bytes_sent`` counts the bytes this rank feeds into collectives: its padded contribution
        and signature plus the length header (diloco), the gradient buffers (ddp), or — FSDP2 issues
        its collectives internally — a count from its schedule (fsdp: per step, all-gather of this
        rank's shards in forward and again in backward for the blocks, whose parameters are freed
        after forward, and reduce-scatter of the full gradients).
        """
        if self.model is None:
            raise RuntimeError("load() a state first")
        if round != self.round:
            raise ValueError(f"the loaded state is at round {self.round}, not {round}")
        strategy = {"diloco": self._round_diloco, "ddp": self._round_ddp, "fsdp": self._round_fsdp}
        result = strategy[self.cfg.strategy](round, batch)
        self.round = round + 1
        self._state_cache = None
        result.state_hash = checkpoint.state_hash(self.state_bytes())
        return result

    def _adamw(self, model: torch.nn.Module) -> torch.optim.AdamW:
        # nanoGPT: decay matrices and embeddings, not biases or LayerNorm gains.
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.cfg.inner_lr, betas=ADAM_BETAS)

    def _batch(self, batch: Callable[[int], torch.Tensor], step: int) -> torch.Tensor:
        xy = batch(step)
        want = (self.cfg.batch_size, self.cfg.seq_len + 1)
        if not isinstance(xy, torch.Tensor) or xy.dtype != torch.long or tuple(xy.shape) != want:
            got = (getattr(xy, "dtype", type(xy)), list(getattr(xy, "shape", [])))
            raise ValueError(f"batch({step}) must be a LongTensor of shape {list(want)}, got {got}")
        return xy.to(self.device)

    def _inner_steps(self, batch, optimizer, sync_grads: Callable[[], None] | None = None) -> list[float]:
        """H AdamW steps on this rank's batches; ``sync_grads`` runs between backward and the step."""
        params = list(self.model.parameters())
        self.model.train()
        losses = []
        for step in range(self.cfg.inner_steps):
            xy = self._batch(batch, step)
            _, loss = self.model(xy[:, :-1], xy[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sync_grads is not None:
                sync_grads()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    # -- ddp -----------------------------------------------------------------------------------

    def _round_ddp(self, round: int, batch) -> RoundResult:
        params = list(self.model.parameters())
        sent = 0

        def all_reduce_grads() -> None:
            # One flat buffer, one all-reduce per step. Every rank ends with the same bits (the
            # backend reduces each element once and distributes the result), so the identical
            # AdamW step keeps θ identical everywhere.
            nonlocal sent
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            with _collective("gradient all-reduce"):
                dist.all_reduce(flat)
            flat /= self.world_size
            sent += flat.numel() * flat.element_size()
            offset = 0
            for p, g in zip(params, grads):
                p.grad = flat[offset : offset + g.numel()].view_as(g)
                offset += g.numel()

        losses = self._inner_steps(batch, self.optimizer, all_reduce_grads)
        self.inner_step += self.cfg.inner_steps
        return RoundResult(round, losses, "", bytes_sent=sent)

    # -- fsdp ----------------------------------------------------------------------------------

    def _round_fsdp(self, round: int, batch) -> RoundResult:
        # Forward, backward and the grad-norm clip all communicate inside FSDP2.
        with _collective("fsdp step"):
            losses = self._inner_steps(batch, self.optimizer)
        self.inner_step += self.cfg.inner_steps
        blocks = self.model.transformer.h
        shard = sum(_local(p).numel() * 4 for p in self.model.parameters())
        shard_blocks = sum(_local(p).numel() * 4 for p in blocks.parameters())  # re-gathered in backward
        # Reduce-scatter input: each full gradient, dim 0 padded to a multiple of the world size.
        full = sum(
            -(-p.shape[0] // self.world_size) * self.world_size * (p.numel() // p.shape[0]) * 4
            for p in self.model.parameters()
        )
        sent = self.cfg.inner_steps * (shard + shard_blocks + full)
        return RoundResult(round, losses, "", bytes_sent=sent)

    # -- diloco --------------------------------------------------------------------------------

    def _round_diloco(self, round: int, batch) -> RoundResult:
        params = dict(self.model.named_parameters())
        start = {n: p.detach().clone() for n, p in params.items()}  # θ_r
        losses = self._inner_steps(batch, self.optimizer)

        with torch.no_grad():
            delta = {n: (start[n] - params[n].detach()).to("cpu", torch.float32) for n in self.names}
        payload = self._encode(round, delta)
        signature = self._sign_contribution(round, payload)
        entries, sent = self._exchange(payload, signature)
        accepted, dropped, received = self._screen(round, entries)
        for r, reason in dropped.items():
            log.warning("round %d: dropped rank %d (%s): %s", round, r, self.peers[r], reason)

        # Back to θ_r, then one outer step with the aggregate of what survived (none: θ stays θ_r).
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        if accepted:
            ranks = sorted(accepted)  # rank order, so every rank passes the same list
            agg = aggregate(self.cfg.aggregator, [accepted[r] for r in ranks], **self._aggregator_params())
            self.outer.step(params, agg)
            self.outer_step = self.outer.step_count

        own = accepted.get(self.rank)
        return RoundResult(
            round,
            losses,
            "",
            contribution=payload,
            contribution_sha256=hashlib.sha256(payload).hexdigest(),
            contribution_norm=vector_norm(own) if own is not None else None,
            dropped=dropped,
            received=received,
            bytes_sent=sent,
        )

    def _aggregator_params(self) -> dict:
        return {
            "mean": {},
            "trimmed_mean": {"trim_fraction": self.cfg.trim_fraction},
            "centered_clip": {"tau": self.cfg.clip_tau},
        }[self.cfg.aggregator]

    def _encode(self, round: int, delta: dict[str, torch.Tensor]) -> bytes:
        """Compress Δ with error feedback and serialize it (the bytes this rank sends)."""
        if not all(bool(torch.isfinite(t).all()) for t in delta.values()):
            # A diverged inner run must not be sent, but the round goes on: an empty payload is
            # dropped by every peer as malformed and θ moves with the others' contributions.
            log.error("round %d: local pseudo-gradient is not finite; sending nothing", round)
            self.ef.reset()
            return b""
        return self.ef.compress(delta).to_bytes()

    def _sign_contribution(self, round: int, payload: bytes) -> bytes:
        message = contribution_message(self.context, round, self.rank, hashlib.sha256(payload).hexdigest())
        signature = bytes(self.sign(message))
        if len(signature) != SIGNATURE_BYTES:
            raise ValueError(f"sign() returned {len(signature)} bytes, expected {SIGNATURE_BYTES}")
        return signature

    def _comm_device(self) -> torch.device:
        # nccl moves only GPU tensors; gloo takes CPU tensors.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _exchange(self, payload: bytes, signature: bytes) -> tuple[list[tuple[int, int, bytes, bytes]], int]:
        """All-gather every rank's (payload, signature) as raw bytes — never pickled objects.

        Step 1 gathers each rank's claimed lengths as int64. Step 2 gathers one uint8 buffer per
        rank: a fixed 64-byte signature slot, then the payload, padded to the longest claimed
        length *after capping it* at ``max_contribution_bytes``, so a peer cannot make the others
        allocate more than world_size × (cap + 64) bytes. Every rank computes the same padded width
        from the same gathered lengths. Returns [(claimed length, signature length, payload,
        signature)] in rank order and the bytes this rank sent.
        """
        n, cap, dev = self.world_size, self.max_contribution_bytes, self._comm_device()
        header = torch.tensor([len(payload), len(signature)], dtype=torch.int64, device=dev)
        headers = [torch.empty(2, dtype=torch.int64, device=dev) for _ in range(n)]
        with _collective("contribution length exchange"):
            dist.all_gather(headers, header)
        claims = [(int(h[0]), int(h[1])) for h in headers]
        width = SIGNATURE_BYTES + max(min(max(length, 0), cap) for length, _ in claims)

        # This rank's slot: signature (zero-padded to 64) + payload (capped, zero-padded to width).
        mine = signature[:SIGNATURE_BYTES].ljust(SIGNATURE_BYTES, b"\0")
        mine += payload[: width - SIGNATURE_BYTES].ljust(width - SIGNATURE_BYTES, b"\0")
        buf = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(dev)
        bufs = [torch.empty(width, dtype=torch.uint8, device=dev) for _ in range(n)]
        with _collective("contribution exchange"):
            dist.all_gather(bufs, buf)

        entries = []
        for (length, sig_len), b in zip(claims, bufs):
            raw = b.cpu().numpy().tobytes()
            body_len = min(max(length, 0), cap)
            sig = raw[: min(max(sig_len, 0), SIGNATURE_BYTES)]
            entries.append((length, sig_len, raw[SIGNATURE_BYTES : SIGNATURE_BYTES + body_len], sig))
        return entries, header.numel() * 8 + width

    def _screen(
        self, round: int, entries
    ) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, str], list[Optional[str]]]:
        """Decide, in rank order, which contributions to aggregate. Pure function of the gathered
        bytes, so every honest rank makes the same decisions. Also returns, per rank, the sha256 of
        the payload received from it if its signature verified (else None)."""
        decoded: dict[int, dict[str, torch.Tensor]] = {}
        dropped: dict[int, str] = {}
        received: list[Optional[str]] = [None] * len(entries)
        for r, (length, sig_len, payload, sig) in enumerate(entries):
            if length < 0:
                dropped[r] = f"malformed: claimed length {length}"
                continue
            if length > self.max_contribution_bytes:
                dropped[r] = f"oversized: claimed {length} bytes, the cap is {self.max_contribution_bytes}"
                continue
            digest = hashlib.sha256(payload).hexdigest()
            message = contribution_message(self.context, round, r, digest)
            if sig_len != SIGNATURE_BYTES or not self._verify(self.peers[r], message, sig):
                dropped[r] = "bad signature"
                continue
            received[r] = digest
            try:
                c = Compressed.from_bytes(
                    payload,
                    self.spec,
                    scheme=self.cfg.compression,
                    fraction=self.cfg.topk_fraction,
                    chunk_size=DEFAULT_CHUNK_SIZE,
                    max_bytes=self.max_contribution_bytes,
                )
            except CompressionError as e:
                dropped[r] = f"malformed: {e}"
                continue
            decoded[r] = c.decompress()

        ranks = sorted(decoded)
        for i in norm_check([decoded[r] for r in ranks], NORM_MAX_RATIO):
            r = ranks[i]
            finite = all(bool(torch.isfinite(t).all()) for t in decoded[r].values())
            dropped[r] = f"norm outlier (> {NORM_MAX_RATIO:g}x the median)" if finite else "non-finite"
            del decoded[r]
        return decoded, dict(sorted(dropped.items())), received

    def _verify(self, ss58: str, message: bytes, signature: bytes) -> bool:
        try:
            return bool(self.verify(ss58, message, signature))
        except Exception:  # a verifier that chokes on garbage has said "no"
            return False
