"""The model every tensorswarm miner trains: a GPT-style byte-level decoder (nanoGPT shape).

Token + learned position embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention through
``F.scaled_dot_product_attention``, then a 4× GELU MLP), a final LayerNorm and an LM head tied to the
token embedding. The tie is done by reusing ``wte.weight`` in ``F.linear`` rather than by sharing a
``Parameter`` between two modules, so ``state_dict()`` holds every weight exactly once: checkpoints,
pseudo-gradients and their norms count the embedding once.

Initialisation is a pure function of (preset, seed): :func:`init_model` draws every parameter, in
``named_parameters()`` order, from a private CPU ``torch.Generator``, so two calls (or two machines
with the same torch build) produce the same bytes, and the global RNG is never touched.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from template.config.presets import Preset

__all__ = ["GPT", "init_model", "param_count"]

INIT_STD = 0.02  # GPT-2's embedding / linear init


class CausalSelfAttention(nn.Module):
    def __init__(self, p: Preset):
        super().__init__()
        if p.d_model % p.n_head:
            raise ValueError(f"d_model {p.d_model} is not a multiple of n_head {p.n_head}")
        self.n_head = p.n_head
        self.dropout = p.dropout
        self.c_attn = nn.Linear(p.d_model, 3 * p.d_model)  # q, k, v in one matmul
        self.c_proj = nn.Linear(p.d_model, p.d_model)
        self.resid_dropout = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, p: Preset):
        super().__init__()
        self.c_fc = nn.Linear(p.d_model, 4 * p.d_model)
        self.c_proj = nn.Linear(4 * p.d_model, p.d_model)
        self.dropout = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, p: Preset):
        super().__init__()
        self.ln_1 = nn.LayerNorm(p.d_model)
        self.attn = CausalSelfAttention(p)
        self.ln_2 = nn.LayerNorm(p.d_model)
        self.mlp = MLP(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """A byte-level GPT built from a :class:`~template.config.presets.Preset`, initialised from ``seed``."""

    def __init__(self, preset: Preset, *, seed: int = 0):
        super().__init__()
        self.preset = preset
        # Build on the meta device: no memory, no draws from the global RNG. Real storage comes
        # from to_empty() and every value from init_weights(seed) below.
        with torch.device("meta"):
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(preset.vocab_size, preset.d_model),
                    wpe=nn.Embedding(preset.seq_len, preset.d_model),
                    drop=nn.Dropout(preset.dropout),
                    h=nn.ModuleList([Block(preset) for _ in range(preset.n_layer)]),
                    ln_f=nn.LayerNorm(preset.d_model),
                )
            )
        self.to_empty(device="cpu")
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """GPT-2 init, drawn in ``named_parameters()`` order from a private generator.

        Linear and embedding weights ~ N(0, 0.02²); residual projections (``*.c_proj.weight``) use
        0.02/√(2·n_layer) so the residual stream's variance does not grow with depth; biases 0;
        LayerNorm gains 1. Values are drawn on the CPU and copied, so the device does not change them.
        """
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        resid_std = INIT_STD / math.sqrt(2 * self.preset.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                value = torch.empty(p.shape).normal_(0.0, resid_std, generator=g)
            elif name.endswith(".weight") and (".ln_" in name or name.startswith("transformer.ln_f")):
                value = torch.ones(p.shape)
            elif name.endswith(".bias"):
                value = torch.zeros(p.shape)
            else:  # linear and embedding weights
                value = torch.empty(p.shape).normal_(0.0, INIT_STD, generator=g)
            p.copy_(value)

    def num_params(self) -> int:
        """Number of distinct parameters (the tied LM head is the token embedding, counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` (B, T) byte ids, T ≤ seq_len → logits (B, T, vocab) and, with ``targets`` (B, T),
        the mean next-byte cross-entropy (targets of -1 are ignored)."""
        B, T = idx.shape
        if self.preset.seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the preset's seq_len {self.preset.seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = F.linear(x, self.transformer.wte.weight)  # tied LM head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss


def init_model(preset: Preset, seed: int, device: torch.device | str | None = None) -> GPT:
    """A freshly initialised model; the same (preset, seed) gives the same bytes on every call."""
    model = GPT(preset, seed=seed)
    return model if device is None else model.to(device)


def param_count(preset: Preset) -> int:
    """Exact parameter count of ``GPT(preset)`` without building it.

    Per block: two LayerNorms (4d), qkv (3d² + 3d), attention proj (d² + d), MLP (4d² + 4d and
    4d² + d) = 12d² + 13d; plus token and position embeddings (V + T)·d and the final LayerNorm 2d.
    """
    d = preset.d_model
    return preset.n_layer * (12 * d * d + 13 * d) + (preset.vocab_size + preset.seq_len) * d + 2 * d
