"""One rank's training for one round, over the default ``torch.distributed`` process group.

The caller (``neurons/miner.py``) joins the group — a ``PrefixStore`` over the orchestrator's
``TCPStore``, gloo on CPU / nccl on GPU, with a timeout — loads the agreed global state θ_r and calls
:meth:`Trainer.run_round` once per round.

The :class:`Trainer` owns the model, the inner AdamW, the global state (:mod:`template.engine.state`:
parameters, the strategy's global optimizer state, the round and step counters) and the inner-step loop.
What a round does is the run's strategy (``TrainingConfig.strategy``, a component from
:data:`template.engine.strategies.STRATEGIES`: ``diloco``, ``ddp``, ``fsdp``). diloco swaps signed
contributions through an :class:`~template.engine.exchange.Exchange`: by default the all-gather of raw
bytes over the process group; tests pass an :class:`~template.engine.exchange.InMemoryExchange`.

Trust: peers are untrusted (see :mod:`template.engine.exchange` and :mod:`template.engine.screening`). A
peer that dies or stalls makes a collective fail or time out, which surfaces as :class:`GroupFailure`.
A round whose new global state is not finite (parameters or the strategy's optimizer state) raises
:class:`NonFiniteState` instead of returning a hash: such a state is never hashed, reported or uploaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.agreement import Agreement
from template.engine.exchange import (
    AllGatherExchange,
    Exchange,
    GroupFailure,
    InMemoryExchange,
    collective,
    comm_device,
)
from template.engine.screening import NORM_MAX_RATIO
from template.engine.state import StateFormat
from template.engine.strategies import STRATEGIES, RoundResult, Speculation, Trained
from template.wire.signing import SIGNATURE_BYTES, contribution_message, verify_signature

__all__ = [
    "GroupFailure",
    "InMemoryExchange",
    "NonFiniteState",
    "RoundResult",
    "Trainer",
    "contribution_message",
    "SIGNATURE_BYTES",
    "NORM_MAX_RATIO",
    "Speculation",
    "Trained",
    "WARM_UP_CONTEXT",
    "warm_up",
]

GRAD_CLIP = 1.0
ADAM_BETAS = (0.9, 0.95)  # nanoGPT's


class NonFiniteState(RuntimeError):
    """The global state after a round holds NaN or ±Inf. The rank must stop without reporting it: an
    honest rank never votes for, keeps or uploads a state that cannot be trained from."""


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names (sorted) of the floating-point tensors holding NaN or ±Inf."""
    return sorted(n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storage behind ``tensors`` (padding included)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


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
        exchange: Exchange | None = None,
        agreement: Agreement | None = None,
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
        self.names, self.spec, self.num_params = self.format.names, self.format.spec, self.format.num_params

        strategy = STRATEGIES[cfg.strategy]
        # The parameter spec every contribution must match, and the cap on its size (0: none exchanged).
        self.max_contribution_bytes = strategy.contribution_bytes(cfg, self.spec)
        self.strategy = strategy(self)
        self._exchange = exchange  # None: the all-gather one, built on first use (it needs the group)
        # None: each rank aggregates what it validly received (single process, trusted groups); a miner
        # passes the orchestrator-backed one so every honest rank aggregates the same agreed set.
        self.agreement = agreement

        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.AdamW | None = None
        self.round = self.outer_step = self.inner_step = 0
        self._next_train = 0  # the round train_round() trains next (one ahead of self.round while overlapped)
        self._state_cache: bytes | None = None

    @property
    def exchange(self) -> Exchange:
        """How this rank swaps contributions with its peers (diloco)."""
        if self._exchange is None:
            self._exchange = AllGatherExchange(self.world_size, self.max_contribution_bytes, comm_device(self.device))
        return self._exchange

    # -- global state ----------------------------------------------------------------------------

    def load(self, state: Optional[bytes]) -> str:
        """Adopt the global state ``state`` (canonical bytes from :meth:`state_bytes`, e.g. the agreed
        checkpoint) or, with ``None``, the deterministic initial state from ``cfg.seed``. Resets the
        rank-local state (diloco: error-feedback residual, inner AdamW). Returns the state's hash.
        Refuses (``ValueError``) a state that does not match this run's preset and strategy. On fsdp
        every rank must call it."""
        # The canonical bytes of what is loaded, known before any sharding (so no collective):
        # ``parse`` accepts only canonical bytes, so a given state is its own serialization.
        data = self.format.initial() if state is None else bytes(state)
        parsed = self.format.parse(data)
        model = self.format.model(parsed, self.device)
        self.strategy.prepare(model)
        self.model, self.optimizer = model, self._adamw(model)
        self.round, self.outer_step, self.inner_step = parsed.round, parsed.outer_step, parsed.inner_step
        self._next_train = parsed.round
        self.strategy.load(parsed.extra())
        self._state_cache = data
        return checkpoint.state_hash(data)

    def state_bytes(self) -> bytes:
        """Canonical bytes of the current global state. On fsdp every rank must call it (it
        all-gathers the shards); the result is cached until the state changes."""
        if self.model is None:
            raise RuntimeError("load() a state first")
        if self._state_cache is None:
            with collective("gathering the state"):
                params = self.strategy.global_params()
                extra = self.strategy.state()
            # Every rank checks the full state it would hash (on fsdp, after the gather), so all honest
            # ranks refuse the same state. A loaded state was already checked by StateFormat.parse.
            bad = _non_finite({**{f"param/{n}": t for n, t in params.items()}, **extra})
            if bad:
                shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                raise NonFiniteState(
                    f"the global state after round {self.round - 1} is not finite (NaN or Inf in {shown}); "
                    "not hashing or reporting it"
                )
            self._state_cache = self.format.dumps(
                params, extra, round=self.round, outer_step=self.outer_step, inner_step=self.inner_step
            )
        return self._state_cache

    def param_bytes_per_rank(self) -> int:
        """Bytes of parameter storage this rank holds between steps (its FSDP shards on fsdp)."""
        return _storage_bytes(self.strategy.local(p) for p in self.model.parameters())

    def optimizer_bytes_per_rank(self) -> int:
        """Bytes of AdamW moments this rank holds (sharded on fsdp; rank-local on diloco, where
        the outer momentum buffers come on top)."""
        moments = (t for st in self.optimizer.state.values() for k, t in st.items() if k != "step")
        return _storage_bytes(self.strategy.local(t) for t in moments)

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
        if self.strategy.phased:
            trained = self.train_round(round, batch)
            if self.cfg.overlap == "speculative":  # the same bits as finish_round, in two steps
                result = self.confirm_round(self.speculate_round(trained))
                self.restart()
                return result
            if self.cfg.overlap == "delayed":  # the next round starts from θ_r, as the pipelined miner's does
                self.restart()
            result = self.finish_round(trained)
            if self.cfg.overlap != "delayed":
                self.restart()
            return result
        result = self.strategy.run_round(round, batch)
        self._next_train = round + 1
        return self._finished(round, result)

    def train_round(self, round: int, batch: Callable[[int], torch.Tensor]) -> Trained:
        """A phased strategy's inner phase of ``round`` (the round after the last one trained), from where
        the model's parameters are. It leaves θ alone: :meth:`finish_round` of the previous round may run in
        another thread meanwhile (the pipelined miner), but nothing else may."""
        if self.model is None:
            raise RuntimeError("load() a state first")
        if round != self._next_train:
            raise ValueError(f"the next round to train is {self._next_train}, not {round}")
        trained = self.strategy.train(round, batch)
        self._next_train = round + 1
        return trained

    def adopt(self, trained: Trained) -> Trained:
        """A round's inner phase this rank already did in an earlier generation, from the same start state
        (that generation broke in the round's outer phase): its payload, signed again for this trainer's
        context and rank, instead of training the round again. It leaves θ and the model alone."""
        if self.model is None:
            raise RuntimeError("load() a state first")
        if trained.round != self._next_train or trained.start_round != self.round:
            raise ValueError(
                f"round {trained.round} from round {trained.start_round}'s state is not this trainer's next"
            )
        self._next_train = trained.round + 1
        if trained.residual is not None:  # what compression held back of it is sent later, as if trained here
            self.strategy.ef.residual = dict(trained.residual)
        return replace(trained, signature=self.strategy.sign(trained.round, trained.payload))

    def retrain(self, round: int) -> None:
        """Train ``round`` again (its start state was recomputed: an overruled speculation)."""
        if round not in (self._next_train, self._next_train - 1):
            raise ValueError(f"round {round} is not the one being trained ({self._next_train - 1})")
        self._next_train = round

    def speculate_round(self, trained: Trained) -> Speculation:
        """``overlap = "speculative"``: the exchange and the outer step on what this rank received; θ is then
        the next round's speculative start. :meth:`confirm_round` settles it."""
        if trained.round != self.round:
            raise ValueError(f"the global state is at round {self.round}, not {trained.round}")
        return self.strategy.speculate(trained)

    def confirm_round(self, spec: Speculation) -> RoundResult:
        """Settle a speculative round with the agreement (``result.overruled``: θ was recomputed); the
        result's ``state_hash`` is of the new global state."""
        return self._finished(spec.trained.round, self.strategy.confirm(spec))

    def restart(self) -> None:
        """Set the model's parameters to θ as it is now (the start of the next inner phase)."""
        self.strategy.restart()

    def finish_round(self, trained: Trained) -> RoundResult:
        """A phased strategy's outer phase: exchange ``trained`` and step θ from round ``trained.round`` to
        the next; the result's ``state_hash`` is of the new global state."""
        if trained.round != self.round:
            raise ValueError(f"the global state is at round {self.round}, not {trained.round}")
        return self._finished(trained.round, self.strategy.finish(trained))

    def _finished(self, round: int, result: RoundResult) -> RoundResult:
        self.round = round + 1
        self._state_cache = None
        result.state_hash = checkpoint.state_hash(self.state_bytes())
        if result.start_round is None:
            result.start_round = round
        return result

    def inner_steps(
        self, batch: Callable[[int], torch.Tensor], sync_grads: Callable[[], None] | None = None
    ) -> list[float]:
        """H AdamW steps on this rank's batches; ``sync_grads`` runs between backward and the step."""
        params = list(self.model.parameters())
        self.model.train()
        losses = []
        for step in range(self.cfg.inner_steps):
            xy = self._batch(batch, step)
            _, loss = self.model(xy[:, :-1], xy[:, 1:])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sync_grads is not None:
                sync_grads()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    def _adamw(self, model: torch.nn.Module) -> torch.optim.AdamW:
        # nanoGPT: decay matrices and embeddings, not biases or LayerNorm gains.
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # The fused kernel: one elementwise pass per tensor, so the same bits on any thread count; on CPU the
        # default per-tensor loop took a third of a small-preset inner step at batch 1.
        fused = params[0].device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=self.cfg.inner_lr, betas=ADAM_BETAS, fused=fused)

    def _batch(self, batch: Callable[[int], torch.Tensor], step: int) -> torch.Tensor:
        xy = batch(step)
        want = (self.cfg.batch_size, self.cfg.seq_len + 1)
        if not isinstance(xy, torch.Tensor) or xy.dtype != torch.long or tuple(xy.shape) != want:
            got = (getattr(xy, "dtype", type(xy)), list(getattr(xy, "shape", [])))
            raise ValueError(f"batch({step}) must be a LongTensor of shape {list(want)}, got {got}")
        return xy.to(self.device)


WARM_UP_CONTEXT = "warm-up"  # the throwaway round's signing context: no run's (those are "<run id>/<generation>")


def warm_up() -> None:
    """One throwaway diloco round on a one-rank tiny model. torch loads parts of itself on first use (the
    meta device's init path alone: over a second on a loaded CPU); a warm spare (``neurons/miner.py
    --standby``) pays that while it waits, not while a new generation waits for its first collective."""
    cfg = TrainingConfig(preset="tiny", inner_steps=1, batch_size=1, seq_len=8)
    trainer = Trainer(
        cfg,
        rank=0,
        world_size=1,
        peers=[WARM_UP_CONTEXT],
        sign=lambda message: bytes(SIGNATURE_BYTES),
        context=WARM_UP_CONTEXT,
        verify=lambda hotkey, message, signature: True,
        exchange=InMemoryExchange(1).bind(0),
    )
    trainer.load(None)
    batch = torch.zeros(cfg.batch_size, cfg.seq_len + 1, dtype=torch.long)
    trainer.finish_round(trainer.train_round(0, lambda step: batch))
    trainer.state_bytes()
