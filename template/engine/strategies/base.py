"""The :class:`Strategy` base every training strategy extends, and :class:`RoundResult`, what a round reports.

A strategy is built once per :class:`~template.engine.trainer.Trainer` and reads the trainer's model,
optimizer and counters (``trainer.outer_step``, ``trainer.inner_step``), which it advances. Its hooks:
what its global optimizer state is (:meth:`Strategy.zero_state`, :meth:`load`, :meth:`state`), how the
model is laid out before the optimizer is built (:meth:`prepare`, e.g. FSDP sharding) and one round
(:meth:`run_round`). The defaults are those of a synchronous data-parallel strategy: the global optimizer
state is the inner AdamW's moments, replicated on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch

from template.config.run import TrainingConfig

if TYPE_CHECKING:
    from template.engine.trainer import Trainer

__all__ = ["RoundResult", "Speculation", "Strategy", "Trained"]

_MOMENTS = ("exp_avg", "exp_avg_sq")


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
    # The round whose agreed start state the inner steps began from: ``round`` itself, or ``round - 1`` on an
    # overlapped diloco round (TrainingConfig.overlap) after the first of its generation.
    start_round: Optional[int] = None
    # overlap = "speculative": the agreement overruled the set this rank stepped on, θ was recomputed, and the
    # round that trained from the speculative θ must be trained again from the recomputed one.
    overruled: bool = False


@dataclass
class Trained:
    """A diloco round's inner phase, done: what this rank sends and what its receipt claims of it. The outer
    phase (:meth:`template.engine.trainer.Trainer.finish_round`) exchanges it; on an overlapped run it does so
    while the next round's inner steps run."""

    round: int
    start_round: int  # the round whose agreed state (θ before that round's outer step) the inner steps began at
    losses: list[float]
    payload: bytes  # the compressed Δ as sent
    signature: bytes  # this rank's over (context, round, rank, sha256 of payload)
    inner_s: float = 0.0  # how long the inner steps took
    residual: Optional[dict] = None  # the error feedback's residual after compressing Δ (Trainer.adopt restores it)


@dataclass
class Speculation:
    """A diloco round's outer step taken on the contributions this rank received, before the agreement
    (``overlap = "speculative"``): what confirming it, or redoing it with the agreed set, needs."""

    trained: Trained
    entries: list  # the exchange's entries, by sender rank
    received: list[Optional[str]]  # sha256 of the validly signed contribution received from each rank
    accepted: dict  # rank -> the decompressed Δ that passed screening (what the step aggregated)
    dropped: dict[int, str]
    sent: int  # bytes fed into the exchange
    before: tuple  # (θ_r, the outer momentum buffers, the outer step count) before the step
    decoded: dict = field(default_factory=dict)  # sha256 -> the payload decompressed (screen's cache)


class Strategy:
    """One way to train a round. Subclass it, register the class in ``STRATEGIES``, and override
    :meth:`run_round` (and the state hooks if the global optimizer state is not AdamW's moments)."""

    # True: a round is two phases the trainer calls, ``train(round, batch) -> Trained`` (inner steps, this
    # rank's contribution), ``restart()`` (the model to θ) and ``finish(trained) -> RoundResult`` (exchange
    # and outer step on θ), so the outer phase can overlap the next inner phase; else :meth:`run_round`.
    phased = False

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.cfg = trainer.cfg

    # -- sizes and the state format (class-level: the state format needs them without a trainer) ----

    @classmethod
    def contribution_bytes(cls, cfg: TrainingConfig, spec: Mapping[str, tuple[int, ...]]) -> int:
        """The cap on a peer's contribution (0: this strategy exchanges no contributions)."""
        return 0

    @classmethod
    def zero_state(cls, spec: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """The global optimizer tensors of a fresh run, by state key (zeros: what a fresh optimizer has)."""
        return {f"adam.{m}/{n}": torch.zeros(s) for n, s in spec.items() for m in _MOMENTS}

    # -- global state ---------------------------------------------------------------------------------

    def prepare(self, model: torch.nn.Module) -> None:
        """Lay ``model`` out for this strategy, before its optimizer is built."""

    def load(self, extra: dict[str, torch.Tensor]) -> None:
        """Adopt the global optimizer state ``extra`` (keys as :meth:`zero_state`) into the trainer's
        freshly built model and optimizer, and reset anything rank-local."""
        t = self.trainer
        for n, p in t.model.named_parameters():
            t.optimizer.state[p] = {
                "step": torch.tensor(float(t.inner_step)),
                "exp_avg": self.like(p, extra[f"adam.exp_avg/{n}"]),
                "exp_avg_sq": self.like(p, extra[f"adam.exp_avg_sq/{n}"]),
            }

    def state(self) -> dict[str, torch.Tensor]:
        """The global optimizer state now, full tensors by state key (on fsdp: a collective)."""
        t = self.trainer
        out = {}
        for n, p in t.model.named_parameters():
            st = t.optimizer.state[p]
            out[f"adam.exp_avg/{n}"] = self.full(st["exp_avg"])
            out[f"adam.exp_avg_sq/{n}"] = self.full(st["exp_avg_sq"])
        return out

    # -- tensor placement (overridden where tensors are sharded) -----------------------------------------

    def full(self, t: torch.Tensor) -> torch.Tensor:
        """The whole of ``t`` on the CPU."""
        return t.detach().to("cpu")

    def like(self, param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """``full`` placed like ``param`` (float32, on the training device)."""
        return full.to(self.trainer.device, torch.float32).clone()

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``t``."""
        return t

    def global_params(self) -> dict[str, torch.Tensor]:
        """The global parameters, full tensors by name (what the state hash is of): the model's own here."""
        return {n: self.full(p) for n, p in self.trainer.model.named_parameters()}

    # -- one round --------------------------------------------------------------------------------------

    def run_round(self, round: int, batch: Callable[[int], torch.Tensor]) -> RoundResult:
        """Train round ``round`` from the loaded state; ``state_hash`` is filled in by the trainer."""
        raise NotImplementedError
