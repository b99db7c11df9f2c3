"""Usefulness: does the miner's Δ make the model better?

``own_gain`` is the mean of loss(θ_r) − loss(θ_r − Δ) over some of the miner's own batches;
``heldout_gain`` the same over held-out windows that the validator draws with its own ``audit_seed``
(:func:`template.data.sampling.heldout_offsets`), so miners cannot train on them. A free-rider's zero Δ
gains exactly 0; noise or a sign-flipped Δ of honest norm loses. Gains are not pass/fail: they are
scored, in :mod:`template.validator.scoring`.

:class:`Probe` holds θ_r and one working copy that becomes θ_r − Δ for one miner at a time, so a round
costs one parameter copy however many miners are audited.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import torch

from template.validator.checks.losses import mean_loss

__all__ = ["Probe"]


class Probe:
    """θ_r (``model``, in eval mode) and θ_r − Δ of the miner last :meth:`move`\\ d to, evaluated on
    batches of ``batch_size`` rows on ``device``."""

    def __init__(self, model: torch.nn.Module, heldout: torch.Tensor, batch_size: int, device: torch.device):
        self.base = model.eval()
        self.moved = copy.deepcopy(model).eval()
        self.theta = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.moved_params = dict(self.moved.named_parameters())
        self.heldout, self.batch_size, self.device = heldout, batch_size, device
        self._heldout_base: Optional[float] = None  # loss(θ_r) on the held-out windows, once per round

    def at_start(self, xy: torch.Tensor) -> float:
        return mean_loss(self.base, xy, self.batch_size, self.device)

    def at_moved(self, xy: torch.Tensor) -> float:
        return mean_loss(self.moved, xy, self.batch_size, self.device)

    @torch.no_grad()
    def move(self, delta: Mapping[str, torch.Tensor]) -> None:
        """Make the working copy θ_r − ``delta``."""
        for n, p in self.moved_params.items():
            p.copy_(self.theta[n]).sub_(delta[n].to(self.device))

    def own_gain(
        self, steps: Sequence[int], batch: Callable[[int], torch.Tensor], known: Mapping[int, float]
    ) -> tuple[float, dict[int, float], dict[int, float]]:
        """Mean gain over the miner's batches ``batch(s)`` for ``steps``; ``known`` holds loss(θ_r)
        already computed for some steps (step 0's, from the step-0 replay). Returns (gain, loss(θ_r)
        per step, loss(θ_r − Δ) per step): the last-step check reads both."""
        gains, at_start, at_moved = [], {}, {}
        for s in steps:
            xy = batch(s)
            at_start[s] = known[s] if s in known else self.at_start(xy)
            at_moved[s] = self.at_moved(xy)
            gains.append(at_start[s] - at_moved[s])
        return sum(gains) / len(gains), at_start, at_moved

    def heldout_gain(self) -> float:
        if self._heldout_base is None:
            self._heldout_base = self.at_start(self.heldout)
        return self._heldout_base - self.at_moved(self.heldout)
