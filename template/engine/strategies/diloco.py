"""``diloco`` (the default; untrusted swarms): every rank starts from θ_r, takes H inner AdamW steps on its
own batches and forms its pseudo-gradient Δ_i = θ_r − θ_i. Δ_i is compressed with error feedback,
serialized and signed with the rank's hotkey, and all contributions are exchanged *as raw bytes* (the
trainer's :class:`~template.engine.exchange.Exchange`). Each rank then screens every contribution in rank
order (:func:`~template.engine.screening.screen`), which also tells it whose validly signed payload it
received.

With an agreement (the trainer's ``agreement``, :mod:`template.engine.agreement`; a miner's asks the
orchestrator) the ranks then settle one view: each reports what it received, every rank follows the one
decision, fetches the included payloads it lacks point to point (a sender that sent some ranks garbage
changes nothing) and screens exactly the included set
(:func:`~template.engine.outer_round.screen_agreed`). Without one (unit tests, benchmarks) a rank keeps
what it received itself. Either way the survivors are aggregated in rank order with the run's robust
aggregator and the Nesterov outer step is applied to θ_r (:func:`~template.engine.outer_round.apply_outer`,
the same code a validator's :func:`~template.engine.outer_round.next_state` runs). Aggregation and the
outer step are bit-exact, so every honest rank ends with the same θ_{r+1} — the state hash the
orchestrator then votes on.

The global optimizer state is the outer momentum. The error-feedback residual and the inner AdamW moments
are rank-local: kept across rounds, reset on load.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Optional

import torch

from template.config.run import TrainingConfig
from template.engine.aggregation import vector_norm
from template.engine.agreement import AgreedSet, Agreement, checked, repair, repair_plan
from template.engine.compression import ErrorFeedback, payload_bytes
from template.engine.exchange import Entry
from template.engine.outer import OuterOptimizer
from template.engine.outer_round import apply_outer, screen_agreed
from template.engine.screening import screen
from template.engine.strategies.base import RoundResult, Speculation, Strategy, Trained
from template.wire.signing import SIGNATURE_BYTES, contribution_message

__all__ = ["DiLoCo"]

log = logging.getLogger(__name__)


class DiLoCo(Strategy):
    phased = True  # a round is train() then finish(): the trainer composes them (Trainer.run_round)

    @classmethod
    def contribution_bytes(cls, cfg: TrainingConfig, spec: Mapping[str, tuple[int, ...]]) -> int:
        # An honest contribution's size depends only on (spec, scheme, fraction) — never on the
        # values — so the cap is exactly that size: a peer cannot make the others allocate more
        # than one honest contribution's worth per rank.
        return payload_bytes(spec, cfg.compression, fraction=cfg.topk_fraction)

    @classmethod
    def zero_state(cls, spec: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        return {f"outer/{n}": torch.zeros(s) for n, s in spec.items()}

    def load(self, extra: dict[str, torch.Tensor]) -> None:
        t, cfg = self.trainer, self.cfg
        self.ef = ErrorFeedback(cfg.compression, fraction=cfg.topk_fraction, decay=cfg.feedback_decay)
        self.outer = OuterOptimizer(cfg.outer_lr, cfg.outer_momentum, nesterov=True)
        self.outer.buffers = {n: extra[f"outer/{n}"].to(t.device) for n in t.names}
        self.outer.step_count = t.outer_step
        # θ, the global parameters, apart from the model's: the outer step updates θ while (overlap) the
        # model already trains the next round's inner steps.
        self.theta = {n: p.detach().clone() for n, p in t.model.named_parameters()}
        self.theta_round = t.round  # the round θ is the start state of
        self.start_round = t.round  # the round whose θ the model's parameters were last set to
        # The trainer's AdamW stays fresh: the inner state is rank-local and kept across rounds, as in
        # DiLoCo. A fresh AdamW each round starts with sign-like steps of size lr that undo part of the
        # progress (measured: round-mean loss rose in round 2 on the test text).

    def state(self) -> dict[str, torch.Tensor]:
        return {f"outer/{n}": self.outer.buffers[n] for n in self.trainer.names}

    def global_params(self) -> dict[str, torch.Tensor]:
        return {n: self.full(p) for n, p in self.theta.items()}

    def train(self, round: int, batch: Callable[[int], torch.Tensor]) -> Trained:
        """The inner phase: H inner steps from where the model's parameters are (θ of ``start_round``),
        Δ = start − end, compressed with error feedback and signed. Touches the model, the inner AdamW and
        the error feedback only, never θ: on an overlapped run it runs beside :meth:`finish`."""
        t = self.trainer
        params = dict(t.model.named_parameters())
        start = {n: p.detach().clone() for n, p in params.items()}
        began = time.monotonic()
        losses = t.inner_steps(batch)
        inner_s = time.monotonic() - began
        with torch.no_grad():
            delta = {n: (start[n] - params[n].detach()).to("cpu", torch.float32) for n in t.names}
        payload = self.encode(round, delta)
        return Trained(round, self.start_round, losses, payload, self.sign(round, payload), inner_s, self.ef.residual)

    def restart(self) -> None:
        """Set the model's parameters to θ: the next inner phase starts from the global state as it is now."""
        with torch.no_grad():
            for n, p in self.trainer.model.named_parameters():
                p.copy_(self.theta[n])
        self.start_round = self.theta_round

    def finish(self, trained: Trained) -> RoundResult:
        """The outer phase of round ``trained.round``: exchange the contributions, settle the agreed set,
        and take the outer step on θ_r (θ stays θ_r when nothing survived). Touches θ, the outer momentum
        and the process group only."""
        t, round = self.trainer, trained.round
        entries, sent, accepted, dropped, received, decoded = self._exchange(trained)
        if t.agreement is not None:
            accepted, dropped, received, more, _ = self.agree(round, t.agreement, entries, received, decoded)
            sent += more
        self._step(accepted)
        self.theta_round = round + 1
        return self._result(trained, accepted, dropped, received, sent)

    def speculate(self, trained: Trained) -> Speculation:
        """The outer phase up to the agreement (``overlap = "speculative"``): exchange, screen, and the outer
        step on what this rank received, keeping θ_r aside. :meth:`confirm` settles it (in the background,
        while the next round trains from the speculative θ)."""
        entries, sent, accepted, dropped, received, decoded = self._exchange(trained)
        before = (
            {n: v.clone() for n, v in self.theta.items()},
            {n: b.clone() for n, b in self.outer.buffers.items()},
            self.outer.step_count,
        )
        self._step(accepted)
        self.theta_round = trained.round + 1
        return Speculation(trained, entries, received, accepted, dropped, sent, before, decoded)

    def confirm(self, spec: Speculation) -> RoundResult:
        """Settle a speculative round with the others. When the agreed set is what this rank aggregated
        (the same senders, the same bytes) θ stands; otherwise θ is rebuilt from θ_r with the agreed set and
        the result says ``overruled`` (the round trained from the speculative θ must be trained again). The
        result is then exactly :meth:`finish`'s."""
        t, round = self.trainer, spec.trained.round
        accepted, dropped, received, sent = spec.accepted, spec.dropped, spec.received, spec.sent
        overruled = False
        if t.agreement is not None:
            accepted, dropped, received, more, included = self.agree(
                round, t.agreement, spec.entries, spec.received, spec.decoded
            )
            sent += more
            same = set(accepted) == set(spec.accepted) and all(included[r] == spec.received[r] for r in accepted)
            if not same:
                log.warning("round %d: the agreed contribution set overrules this rank's: recomputing θ", round)
                theta, buffers, steps = spec.before
                with torch.no_grad():
                    for n, v in self.theta.items():
                        v.copy_(theta[n])
                self.outer.buffers, self.outer.step_count = buffers, steps
                t.outer_step = steps
                self._step(accepted)
                overruled = True
        result = self._result(spec.trained, accepted, dropped, received, sent)
        result.overruled = overruled
        return result

    def _exchange(self, trained: Trained):
        t, cfg = self.trainer, self.cfg
        entries, sent = t.exchange.all_gather(trained.payload, trained.signature)
        decoded: dict = {}  # this round's payloads by sha256: the agreed set's screening reuses them
        accepted, dropped, received = screen(
            entries,
            round=trained.round,
            context=t.context,
            peers=t.peers,
            verify=t.verify,
            spec=t.spec,
            scheme=cfg.compression,
            fraction=cfg.topk_fraction,
            max_bytes=t.max_contribution_bytes,
            decoded_by_sha=decoded,
        )
        return entries, sent, accepted, dropped, received, decoded

    def _step(self, accepted: Mapping[int, dict[str, torch.Tensor]]) -> None:
        if apply_outer(self.cfg, self.theta, self.outer, accepted):
            self.trainer.outer_step = self.outer.step_count

    def _result(self, trained: Trained, accepted, dropped, received, sent: int) -> RoundResult:
        t = self.trainer
        for r, reason in dropped.items():
            log.warning("round %d: dropped rank %d (%s): %s", trained.round, r, t.peers[r], reason)
        own = accepted.get(t.rank)
        return RoundResult(
            trained.round,
            trained.losses,
            "",
            contribution=trained.payload,
            contribution_sha256=hashlib.sha256(trained.payload).hexdigest(),
            contribution_norm=vector_norm(own) if own is not None else None,
            dropped=dropped,
            received=received,
            bytes_sent=sent,
            start_round=trained.start_round,
        )

    def agree(
        self, round: int, agreement: Agreement, entries: list[Entry], received: list[Optional[str]], decoded: dict
    ) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, str], list[Optional[str]], int, list[Optional[str]]]:
        """Settle the round's contribution set with the other ranks: report what this rank received,
        follow the decision, fetch the included payloads it lacks point to point, and screen exactly
        the included set. Returns (accepted, dropped, what this rank now holds by sender, bytes sent, the
        agreed sha256 by sender)."""
        t = self.trainer
        attested = [None if sha is None else (sha, entries[r].signature) for r, sha in enumerate(received)]
        agreed: AgreedSet = checked(agreement.decide(round, attested), t.world_size)
        have = {r: entries[r].payload for r, sha in enumerate(received) if sha is not None}
        got, sent = repair(t.exchange, t.rank, repair_plan(agreed), have, agreed.included, t.max_contribution_bytes)
        if got:
            log.info("round %d: fetched the agreed contribution(s) of rank(s) %s point to point", round, sorted(got))
        contributions = {**have, **got}
        accepted, dropped = screen_agreed(
            contributions,
            agreed.included,
            round=round,
            cfg=self.cfg,
            spec=t.spec,
            max_bytes=t.max_contribution_bytes,
            reasons=agreed.reasons,
            decoded_by_sha=decoded,
        )
        # What this rank attests in its receipt: the agreed payloads it now holds (hash-checked),
        # and for the senders left out, what it received itself.
        holds = [
            sha if sha is not None and (sha == received[r] or r in got) else received[r]
            for r, sha in enumerate(agreed.included)
        ]
        return accepted, dropped, holds, sent, list(agreed.included)

    def encode(self, round: int, delta: dict[str, torch.Tensor]) -> bytes:
        """Compress Δ with error feedback and serialize it (the bytes this rank sends)."""
        if not all(bool(torch.isfinite(t).all()) for t in delta.values()):
            # A diverged inner run must not be sent, but the round goes on: an empty payload is
            # dropped by every peer as malformed and θ moves with the others' contributions.
            log.error("round %d: local pseudo-gradient is not finite; sending nothing", round)
            self.ef.reset()
            return b""
        return self.ef.compress(delta).to_bytes()

    def sign(self, round: int, payload: bytes) -> bytes:
        """This rank's hotkey signature over (context, round, rank, sha256 of the payload)."""
        t = self.trainer
        message = contribution_message(t.context, round, t.rank, hashlib.sha256(payload).hexdigest())
        signature = bytes(t.sign(message))
        if len(signature) != SIGNATURE_BYTES:
            raise ValueError(f"sign() returned {len(signature)} bytes, expected {SIGNATURE_BYTES}")
        return signature
