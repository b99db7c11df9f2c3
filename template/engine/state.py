"""The run's global state θ_r as canonical :mod:`template.engine.checkpoint` bytes — what every honest rank
holds after a round, what the orchestrator votes on by hash and stores, and what validators audit from.

Tensors: ``param/<name>`` for every model parameter, plus the strategy's global optimizer state as the
strategy names it (``Strategy.zero_state``: ``outer/<name>``, diloco's outer momentum, or
``adam.exp_avg/<name>`` and ``adam.exp_avg_sq/<name>``, ddp/fsdp's AdamW moments), all float32. Meta:
format, version, preset, strategy, round, outer and inner step counts. :meth:`StateFormat.parse` accepts
exactly that and nothing else (finite values, this run's shapes), so a state from an untrusted holder is
either this run's state or refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from template.config.presets import get as get_preset
from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.compression import param_spec
from template.engine.model import GPT, init_model
from template.engine.strategies import STRATEGIES

__all__ = ["STATE_FORMAT", "STATE_VERSION", "GlobalState", "StateFormat", "load_model"]

STATE_FORMAT = "tensorswarm.global"
STATE_VERSION = 1
_META_KEYS = frozenset({"format", "version", "preset", "strategy", "round", "outer_step", "inner_step"})


@dataclass
class GlobalState:
    """A parsed global state: its tensors by name and its counters."""

    tensors: dict[str, torch.Tensor]
    round: int
    outer_step: int
    inner_step: int

    def params(self) -> dict[str, torch.Tensor]:
        return {k[len("param/") :]: v for k, v in self.tensors.items() if k.startswith("param/")}

    def extra(self) -> dict[str, torch.Tensor]:
        """The optimizer part (everything but the parameters)."""
        return {k: v for k, v in self.tensors.items() if not k.startswith("param/")}


class StateFormat:
    """The global-state format of one run config: parameter names and shapes (from the seed model),
    which optimizer tensors the strategy keeps, and strict (de)serialization."""

    def __init__(self, cfg: TrainingConfig):
        self.cfg = cfg
        preset = get_preset(cfg.preset)
        # A tokenized dataset sizes the embedding (and the tied LM head) to its vocabulary.
        self.preset = replace(preset, vocab_size=cfg.vocab_size) if cfg.vocab_size else preset
        if cfg.seq_len > self.preset.seq_len:
            raise ValueError(f"seq_len {cfg.seq_len} exceeds preset {cfg.preset!r}'s {self.preset.seq_len}")
        model = init_model(self.preset, cfg.seed)
        self.names = [n for n, _ in model.named_parameters()]
        self.spec = param_spec(dict(model.named_parameters()))
        self.num_params = model.num_params()

    def zero_extra(self) -> dict[str, torch.Tensor]:
        """The optimizer tensors of a fresh run (zeros: what a fresh optimizer would create)."""
        return STRATEGIES[self.cfg.strategy].zero_state(self.spec)

    def meta(self, round: int, outer_step: int, inner_step: int) -> dict:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "preset": self.cfg.preset,
            "strategy": self.cfg.strategy,
            "round": round,
            "outer_step": outer_step,
            "inner_step": inner_step,
        }

    def dumps(
        self,
        params: dict[str, torch.Tensor],
        extra: dict[str, torch.Tensor],
        *,
        round: int,
        outer_step: int,
        inner_step: int,
    ) -> bytes:
        tensors = {f"param/{n}": t for n, t in params.items()}
        tensors.update(extra)
        return checkpoint.dumps(tensors, self.meta(round, outer_step, inner_step))

    def initial(self) -> bytes:
        """The deterministic state a run starts from (parameters from ``cfg.seed``, zero optimizer state)."""
        model = init_model(self.preset, self.cfg.seed)
        params = {n: p.detach() for n, p in model.named_parameters()}
        return self.dumps(params, self.zero_extra(), round=0, outer_step=0, inner_step=0)

    def parse(self, data: bytes) -> GlobalState:
        """Strictly validate a global state: exactly this run's tensors, shapes, dtypes and meta
        (``ValueError`` with the reason otherwise)."""
        try:
            tensors, meta = checkpoint.loads(data, require_finite=True)
        except checkpoint.CheckpointError as e:
            raise ValueError(f"invalid global state: {e}") from None
        if set(meta) != _META_KEYS:
            raise ValueError(f"global state meta has fields {sorted(meta)}, expected {sorted(_META_KEYS)}")
        if (meta["format"], meta["version"]) != (STATE_FORMAT, STATE_VERSION):
            raise ValueError(f"not a global state of version {STATE_VERSION}")
        if (meta["preset"], meta["strategy"]) != (self.cfg.preset, self.cfg.strategy):
            raise ValueError(
                f"state is for preset {meta['preset']!r} / strategy {meta['strategy']!r}, "
                f"this run is {self.cfg.preset!r} / {self.cfg.strategy!r}"
            )
        for k in ("round", "outer_step", "inner_step"):
            if not (type(meta[k]) is int and meta[k] >= 0):
                raise ValueError(f"meta.{k} must be a non-negative int, got {meta[k]!r}")
        want = {f"param/{n}": s for n, s in self.spec.items()}
        want.update({k: tuple(v.shape) for k, v in self.zero_extra().items()})
        if set(tensors) != set(want):
            missing, extra = sorted(set(want) - set(tensors))[:5], sorted(set(tensors) - set(want))[:5]
            raise ValueError(f"global state tensors differ (missing {missing}, unexpected {extra})")
        for k, t in tensors.items():
            if t.dtype != torch.float32 or tuple(t.shape) != want[k]:
                raise ValueError(f"{k}: {t.dtype} {list(t.shape)}, expected float32 {list(want[k])}")
        return GlobalState(tensors, meta["round"], meta["outer_step"], meta["inner_step"])

    def model(self, state: Optional[GlobalState], device: str | torch.device = "cpu") -> GPT:
        """The model with ``state``'s parameters (None: the seed init), on ``device``."""
        model = init_model(self.preset, self.cfg.seed)
        if state is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(state.tensors[f"param/{n}"])
        return model.to(device)


def load_model(cfg: TrainingConfig, data: Optional[bytes], device: str | torch.device = "cpu") -> tuple[GPT, int, str]:
    """θ_r for a reader that only evaluates it (a validator): the model built from the state bytes
    ``data`` (None: the seed init), the state's round and its hash. Nothing is signed or exchanged."""
    fmt = StateFormat(cfg)
    if data is None:
        data = fmt.initial()
        state = None
        round_ = 0
    else:
        state = fmt.parse(data)
        round_ = state.round
    return fmt.model(state, device), round_, checkpoint.state_hash(data)
