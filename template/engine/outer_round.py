"""The post-exchange step of a diloco round as pure functions — what a rank does once it holds the
contributions it aggregates, and what a validator recomputes to check an agreed transition θ_r → θ_{r+1}:

- :func:`screen_agreed`: the agreed contributions (by rank, with their agreed sha256) screened exactly as
  received ones are (:func:`template.engine.screening.screen`: size, strict parse, finiteness, norm), with
  authenticity coming from the agreed hash instead of a signature (the members and the orchestrator
  checked the signatures before agreeing on the hashes);
- :func:`apply_outer`: the survivors aggregated in rank order with the run's robust aggregator, then the
  Nesterov outer step on θ_r in place;
- :func:`next_state`: both, from θ_r's canonical bytes to θ_{r+1}'s (what the rank's state hash is of).

The diloco strategy (:class:`template.engine.strategies.diloco.DiLoCo`) runs the first two on its live
model, so a validator's :func:`next_state` and the ranks compute the same bits by construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.engine.aggregation import Contribution, aggregate, run_params
from template.engine.compression import payload_bytes
from template.engine.exchange import Entry
from template.engine.outer import OuterOptimizer
from template.engine.screening import screen
from template.wire.signing import SIGNATURE_BYTES, contribution_message

__all__ = ["NOT_AGREED", "apply_outer", "next_state", "screen_agreed"]

NOT_AGREED = "not agreed"  # the prefix of a dropped reason that blames nobody: the agreement excluded it
_CONTEXT = "agreed"  # screen() binds a context into the message it checks; here both sides build it


def screen_agreed(
    contributions: Mapping[int, bytes],
    included: Sequence[Optional[str]],
    *,
    round: int,
    cfg: TrainingConfig,
    spec: Mapping[str, tuple[int, ...]],
    max_bytes: int,
    reasons: Optional[Sequence[Optional[str]]] = None,
    decoded_by_sha: Optional[dict[str, dict[str, torch.Tensor]]] = None,
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, str]]:
    """Screen the included contributions (``contributions[r]`` must hash to ``included[r]``) in rank
    order. Returns the accepted ones decompressed ``{rank: Δ}`` and the refused ones ``{rank: why}``;
    a rank not included (or whose bytes are missing or differ from the agreed hash) is refused with a
    reason starting with :data:`NOT_AGREED` (``reasons[r]`` says why, when given)."""
    n = len(included)
    agreed = {
        r: contributions[r]
        for r, sha in enumerate(included)
        if sha is not None and r in contributions and hashlib.sha256(contributions[r]).hexdigest() == sha
    }
    expected = {contribution_message(_CONTEXT, round, r, included[r]) for r in agreed}

    def verify(_hotkey: str, message: bytes, _signature: bytes) -> bool:
        return message in expected  # the agreed (rank, sha256) stands for the signature

    # The signature slot is a placeholder of the right size: authenticity is the agreed hash.
    entries = [
        Entry(len(agreed[r]), SIGNATURE_BYTES, agreed[r], bytes(SIGNATURE_BYTES))
        if r in agreed
        else Entry(0, 0, b"", b"")
        for r in range(n)
    ]
    decoded, dropped, _ = screen(
        entries,
        round=round,
        context=_CONTEXT,
        peers=[""] * n,
        verify=verify,
        spec=spec,
        scheme=cfg.compression,
        fraction=cfg.topk_fraction,
        max_bytes=max_bytes,
        decoded_by_sha=decoded_by_sha,  # what the exchange's screening decoded (see screen)
    )
    for r, sha in enumerate(included):
        if sha is None:
            why = reasons[r] if reasons is not None and reasons[r] else "excluded"
            dropped[r] = f"{NOT_AGREED}: {why}"
        elif r not in agreed:
            dropped[r] = f"{NOT_AGREED}: the agreed payload is missing"
    return decoded, dict(sorted(dropped.items()))


def apply_outer(
    cfg: TrainingConfig,
    params: Mapping[str, torch.Tensor],
    outer: OuterOptimizer,
    accepted: Mapping[int, Contribution],
) -> bool:
    """Aggregate ``accepted`` in rank order (so every rank passes the same list) with the run's
    aggregator and take one outer step on ``params`` (θ_r, updated in place). Nothing accepted: θ stays
    θ_r and the step count does not move. Returns whether a step was taken."""
    if not accepted:
        return False
    ranks = sorted(accepted)
    agg = aggregate(cfg.aggregator, [accepted[r] for r in ranks], **run_params(cfg))
    outer.step(params, agg)
    return True


def next_state(
    cfg: TrainingConfig,
    state: Optional[bytes],
    contributions: Mapping[int, bytes],
    included: Sequence[Optional[str]],
) -> bytes:
    """θ_{r+1}'s canonical bytes from θ_r's (``state``; None: the run's seed state) and the round's
    included contributions (by rank; each must hash to ``included[r]``), as every honest rank of the
    round computes them: :func:`screen_agreed`, then :func:`apply_outer`, then the counters (round + 1;
    the outer step count if a step was taken; diloco's inner count is rank-local and does not move)."""
    from template.engine.state import StateFormat  # the state format imports the strategies, which import us

    fmt = StateFormat(cfg)
    if cfg.strategy != "diloco":
        raise ValueError(f"only diloco rounds aggregate contributions, this run is {cfg.strategy!r}")
    parsed = fmt.parse(fmt.initial() if state is None else bytes(state))
    params = {n: t.clone() for n, t in parsed.params().items()}
    outer = OuterOptimizer(cfg.outer_lr, cfg.outer_momentum, nesterov=True)
    outer.buffers = {n: parsed.tensors[f"outer/{n}"] for n in fmt.names}
    outer.step_count = parsed.outer_step
    accepted, _ = screen_agreed(
        contributions,
        included,
        round=parsed.round,
        cfg=cfg,
        spec=fmt.spec,
        max_bytes=payload_bytes(fmt.spec, cfg.compression, fraction=cfg.topk_fraction),
    )
    apply_outer(cfg, params, outer, accepted)
    extra = {f"outer/{n}": outer.buffers[n] for n in fmt.names}
    return fmt.dumps(params, extra, round=parsed.round + 1, outer_step=outer.step_count, inner_step=parsed.inner_step)
