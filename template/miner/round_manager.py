"""One rank's round manager, in torchft's sense (its quorum is the orchestrator's assignment):
``RoundManager`` takes this rank's assignment (from the orchestrator, or manual flags), joins the
group and heals to the agreed state (``group.py``), then runs rounds: train through the engine's
``Trainer`` (on gloo over the explicit ring exchange, its contribution set agreed through the
orchestrator: ``group.OrchestratorAgreement``), sign and store the receipt, report dropped peers, report
the new state hash and wait until every member agreed (the commit), and, ranks taking turns, hand the
agreed checkpoint to the background uploader (``uploads.py``). Every way a run ends becomes an exit
code (``exit_codes``) for the meta-miner, in ``RoundManager.run`` alone. Taking an assignment and waiting for
a round's agreement live in ``assignment.py``."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from template import wire as p
from template.chain.client import orchestrator_hotkey
from template.data.sampling import batch_offsets, windows_to_tensor
from template.data.store import ShardCache, shard_reader
from template.engine.exchange import DirectExchange, comm_device
from template.engine.state import StateFormat
from template.engine.strategies import STRATEGIES
from template.engine.trainer import GroupFailure, RoundResult, Trained, Trainer
from template.miner import exit_codes, receipts, reports
from template.miner.assignment import Exit, assignment_from, manual_flags, next_generation, wait_for_agreement
from template.miner.group import OrchestratorAgreement, catch_up, join_group, keep_state
from template.miner.uploads import StateUploader, uploads_round
from template.net.orchestrator_client import OrchestratorClient, OrchestratorError
from template.wire.orchestrator import contribution_context

log = logging.getLogger("tensorswarm.miner")
GENERATION_POLL_S = 1.0  # between inner steps, ask at most this often whether the generation is still on


class Overruled(Exception):
    """The agreement on the previous round overruled the speculative state this round is training from."""


@contextmanager
def _of_round(round_: int):
    """A broken group in a round's outer phase names that round (the miner may be training the next)."""
    try:
        yield
    except GroupFailure as error:
        error.round = round_
        raise


@dataclass
class Carried:
    """A round's inner phase, kept until its outer phase commits: a generation that breaks in between leaves it
    to the next one (``RoundManager.carried``)."""

    run_id: str
    generation: int
    start: Optional[str]  # the agreed state the round started from (None: the seed)
    trained: Trained


@dataclass
class Committed:
    """A round's outer phase, done and agreed: what ``settle`` acts on (overlapped: a round after training it)."""

    result: RoundResult
    state: bytes  # the new global state's canonical bytes (result.state_hash is of them)
    loss: float  # the mean of the round's inner-step losses
    agreed: str  # the state hash the generation agreed on


class RoundManager:
    """Runs this rank through its generations: ``run()`` returns the exit code. ``assign()`` sets the
    run, the assignment ``a`` and the round being trained; ``start()`` the trainer.

    When a generation ends (the orchestrator moved on, or the group broke) the process stays: it
    leaves the process group, waits for its next assignment and joins the new group (as torchft
    re-forms its quorum in place). A relaunch would cost every member the interpreter's, torch's and
    bittensor's start-up (seconds on a loaded CPU) on every membership change. Where re-forming in
    place is not possible (manual flags, not assigned, no new generation in ``REFORM_WAIT_S``, a rank
    stuck in a collective) the exit code tells the meta-miner to relaunch, as before."""

    def __init__(self, cfg, wallet, client: OrchestratorClient, work: Path):
        self.cfg, self.client, self.work = cfg, client, Path(work)
        self.hotkey = wallet.hotkey.ss58_address
        self.sign = wallet.hotkey.sign
        self.progress = self.work / "progress.json"
        self.trainer: Optional[Trainer] = None
        self.forwarder = None
        self.done = 0  # rounds trained by this process (--max-rounds), across generations
        self.uploader = StateUploader(client)
        self.checked = 0.0  # when the generation was last checked between inner steps
        # Overlapped runs (TrainingConfig.overlap): round r's outer phase and commit run here while round
        # r+1's inner steps run in the foreground; ``pending`` is that round's future. Its torch ops use one
        # thread (a per-thread setting), on a core the inner steps leave free (start()): OpenMP teams of both threads
        # on the same cores stall each other; the round took twice as long on a 16-core host (wan.py, small).
        self.outer_phase = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="outer-phase", initializer=torch.set_num_threads, initargs=(1,)
        )
        self.pending: Optional[Future] = None
        self.outer_core = False  # whether start() has set the inner steps' threads (CPU, overlapped)
        self.stuck = False  # an outer phase outlived the group's timeout: only a relaunch frees its thread
        self.agreed: dict[int, Optional[str]] = {}
        self.carry: Optional[Carried] = None  # the round in its outer phase (overlap none), for the next generation

    def run(self) -> int:
        while True:
            code = self.run_generation()
            if self.stuck:
                return exit_codes.GROUP_FAILURE
            if code not in (exit_codes.REASSIGN, exit_codes.GROUP_FAILURE) or manual_flags(self.cfg):
                return code
            if not next_generation(self.client, self.a.generation if hasattr(self, "a") else None):
                return code

    def run_generation(self) -> int:
        self.forming = True  # until the group formed and caught up: a failure is a failed rendezvous
        try:
            self.assign()
            self.start()
            self.forming = False
            while not self.cfg.max_rounds or self.done < self.cfg.max_rounds:
                began, self.inner_s = time.monotonic(), 0.0
                self.round_step()  # the inner steps' share of a round (scripts/bench/wan.py reads it):
                took = time.monotonic() - began
                log.info("round %d: inner steps %.3f s of %.3f s", self.round - 1, self.inner_s, took)
                self.done += 1
            self.drain()
            return exit_codes.OK
        except Exit as stop:
            return stop.code
        except GroupFailure as error:
            log.warning("process group failed: %s", error)
            self.report_stall(error.missing, getattr(error, "round", None), error.unnamed_connect)
            return exit_codes.GROUP_FAILURE
        except OrchestratorError as error:  # unreachable for the client's whole retry window
            log.error("%s", error)
            return exit_codes.ERROR
        except (RuntimeError, dist.DistError) as error:
            text = str(error).lower()
            if isinstance(error, dist.DistNetworkError) or "timed out" in text or "connection" in text:
                log.warning("process group failed: %s", error)
                store_link = isinstance(error, dist.DistNetworkError)  # not the group's fault: no rendezvous test
                self.report_stall((), None, self.forming and "timed out" in text and not store_link)
                return exit_codes.GROUP_FAILURE
            raise
        finally:
            self.leave_group()

    def leave_group(self) -> None:
        """Drop this generation's process group, store tunnel and trainer (a new generation builds its own)."""
        if self.pending is not None:
            # An outer phase still running holds the group: it ends within the group's timeout (its
            # collective fails, or its wait for the agreement sees the generation gone).
            try:
                self.pending.result(timeout=self.cfg.timeout + 10)
            except TimeoutError:
                log.error("round %d's outer phase is stuck: leaving the process to the meta-miner", self.round - 1)
                self.stuck = True
                return
            except BaseException as error:  # the generation ended either way
                log.info("round %d's outer phase ended with the generation: %s", self.round - 1, error)
            self.pending = None
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        self.trainer = None

    def check_generation(self) -> None:
        """Between inner steps (at most every ``GENERATION_POLL_S``): raise Exit(REASSIGN) if this
        rank's generation has ended, instead of training out a round nobody will exchange. A failed
        glance changes nothing (the orchestrator may be restarting; the ranks train on)."""
        now = time.monotonic()
        if manual_flags(self.cfg) or now - self.checked < GENERATION_POLL_S:
            return
        self.checked = now
        try:
            answer = self.client.assignment(retry=False, timeout=2.0)
        except OrchestratorError:
            return
        if answer.status != "assigned" or answer.assignment.generation != self.a.generation:
            log.info("generation %d ended during round %d's inner steps", self.a.generation, self.round)
            raise Exit(exit_codes.REASSIGN)

    def report_stall(self, missing: tuple[int, ...], round_: Optional[int] = None, unnamed: bool = False) -> None:
        if (a := getattr(self, "a", None)) is not None:
            r = self.round if round_ is None else round_
            reports.report_stall(self.client, a, r, missing, self.forming, unnamed)

    def assign(self) -> None:
        """The run, this rank's assignment, and the dataset to draw its samples from; then check in
        (a member that never does is removed, so a silent one cannot hold the others)."""
        self.run_info = self.client.run()
        a = self.a = assignment_from(self.cfg, self.client)
        left, self.checked = a.presence_left_s, time.monotonic()
        self.presence_by = None if left is None else self.checked + left  # every rank's presence deadline, as its own
        try:
            self.client.checkin(a.generation)
        except Exception as error:  # by-hand assignments have no generation to check in to
            log.warning("check-in for generation %d failed: %s", a.generation, error)
        start = a.checkpoint or "seed"
        log.info(
            "generation %d: rank %d of %d, round %d, start state %s", a.generation, a.rank, a.world_size, a.round, start
        )
        self.read = shard_reader(self.run_info.dataset, ShardCache(self.work / "cache", self.client.shard).get)
        self.receipts = receipts.ReceiptStore(self.work)
        self.round, self.last_loss = a.round, None  # the next round to train
        self.agreed = {a.round: a.checkpoint}  # round -> the agreed state it starts from (None: the seed)
        self.write_progress(0, None)  # the meta-miner sees this rank in its new generation at once

    def start(self) -> None:
        """Join the group, then heal: load the agreed state this generation starts from."""
        a, cfg, training = self.a, self.cfg, self.run_info.training
        if training.overlap != "none" and cfg.device == "cpu" and not self.outer_core:
            # The outer phase's thread needs a core of its own (see outer_phase): where the inner steps would
            # take every core of this process's, they leave it one.
            self.outer_core, threads = True, torch.get_num_threads()
            torch.set_num_threads(max(1, threads - 1) if threads >= len(os.sched_getaffinity(0)) else threads)
        backend = "nccl" if cfg.device == "cuda" else "gloo"
        self.forwarder = join_group(a, backend, cfg.timeout, self.sign, self.client.hotkey, self.presence_by)
        # Every rank sends its own block to every other (no relays: what arrives is its sender's), over
        # gloo on CPU and nccl on GPU alike.
        cap = STRATEGIES[training.strategy].contribution_bytes(training, StateFormat(training).spec)
        m, device = self.run_info.membership, comm_device(torch.device(cfg.device))  # stragglers: the run's grace
        exchange = self.exchange = DirectExchange(a.world_size, cap, device, (m.straggler_grace_s, m.straggler_factor))
        self.trainer = Trainer(
            training,
            rank=a.rank,
            world_size=a.world_size,
            device=cfg.device,
            peers=[m.hotkey for m in a.members],
            sign=self.sign,
            context=contribution_context(self.run_info.run_id, a.generation),
            exchange=exchange,
            # The contribution set every member aggregates, decided by the orchestrator (diloco asks).
            agreement=OrchestratorAgreement(self.client, a.generation, self.run_info.membership.round_timeout_s),
        )
        self.trainer.load(None)  # the seed state: same tensors as any agreed state, so it sizes the cap
        max_state = len(self.trainer.state_bytes()) + 64 * 1024
        self.trainer.load(catch_up(a, self.client, self.work / "states", cfg.device, max_state))

    def batch(self, step: int) -> torch.Tensor:
        """This rank's inputs for ``step`` of the current round: (seed, round, hotkey, step)'s samples."""
        t = self.run_info.training
        # The previous round's outer phase failed: raise it now, not after H steps (result() raises). Or it
        # overruled the speculative state this round trains from: stop training from it.
        if self.pending is not None and self.pending.done() and self.pending.result().result.overruled:
            raise Overruled()
        if step:
            self.check_generation()
        # `loss` is the last finished round's, so a slow poller still sees one.
        self.write_progress(step, self.last_loss)
        offsets = batch_offsets(
            self.run_info.dataset,
            seed=t.seed,
            round=self.round,
            hotkey=self.hotkey,
            step=step,
            batch_size=t.batch_size,
            seq_len=t.seq_len,
        )
        data = self.run_info.dataset
        return windows_to_tensor(self.read, offsets, t.seq_len, data.token_bytes, data.vocab_size).to(self.cfg.device)

    def write_progress(self, step: int, loss: Optional[float]) -> None:
        a = self.a
        receipts.write_progress(
            self.progress,
            generation=a.generation,
            rank=a.rank,
            round=self.round,
            step=step,
            loss=loss,
            world_size=a.world_size,
        )

    def round_step(self) -> None:
        """One round: train it, then its outer phase (exchange, outer step, receipt, reports, commit), then
        settle it (the state check, the upload, the log). With ``overlap`` the outer phase of this round runs
        in the background while the next round trains, and the previous round is settled here: all of it
        (delayed: the next round starts from θ_r), or all but the exchange and the outer step on what this
        rank received (speculative: the next round starts from that θ_{r+1}; retrained if overruled)."""
        t, round_ = self.trainer, self.round
        overlap = self.run_info.training.overlap
        if not t.strategy.phased:  # ddp/fsdp: collectives every step, nothing to overlap
            committed = self.commit_round(round_, t.run_round(round_, self.batch))
            self.round = round_ + 1
            self.settle(committed)
            return
        began = time.monotonic()
        if overlap == "speculative":
            trained = self.train_speculating(round_)
        else:
            trained = self.carried(round_) or t.train_round(round_, self.batch)
        self.inner_s = time.monotonic() - began
        if overlap == "none":
            self.carry = Carried(self.run_info.run_id, self.a.generation, self.agreed.get(round_), trained)
            committed = self.finish(trained)
            self.carry = None
            t.restart()
            self.round = round_ + 1
            self.settle(committed)
            return
        self.round = round_ + 1
        if overlap == "delayed":
            self.drain()  # round r − 1 agreed: θ_r is the global state now
            t.restart()  # round r + 1 starts from θ_r while round r's outer phase moves θ to θ_{r+1}
            self.pending = self.outer_phase.submit(self.finish, trained)
        else:
            spec = t.speculate_round(trained)
            t.restart()  # round r + 1 starts from θ_{r+1} as this rank computed it
            self.pending = self.outer_phase.submit(self.confirm, spec)

    def train_speculating(self, round_: int) -> Trained:
        """Train ``round_`` from the speculative θ_r; if the agreement on round r − 1 (in the background)
        overrules it, train the round again from the recomputed θ_r."""
        t = self.trainer
        while True:
            try:
                trained = t.train_round(round_, self.batch)
                overruled = self.drain()
            except Overruled:
                overruled = self.drain()
            if not overruled:
                return trained
            log.warning("round %d: its start state was overruled by the agreement: training it again", round_)
            t.restart()
            t.retrain(round_)

    def carried(self, round_: int) -> Optional[Trained]:
        """``round_``'s inner phase, when this rank did it in the generation that broke in the round's outer phase
        and this one starts the round from the same agreed state: signed again, not trained again (the samples
        are the hotkey's, not the rank's). A member that died or stalled costs the others the re-form alone."""
        carry, self.carry = self.carry, None
        if carry is None or (carry.run_id, carry.start, carry.trained.round) != (
            self.run_info.run_id,
            self.agreed.get(round_),
            round_,
        ):
            return None
        log.info("round %d: inner steps carried over from generation %d (same start state)", round_, carry.generation)
        self.exchange.allowance_s = carry.trained.inner_s  # a member without the round trains it meanwhile
        return self.trainer.adopt(carry.trained)

    def drain(self) -> bool:
        """Wait for the pending outer phase, if any, and settle it (raising what it raised). Returns whether
        it overruled this rank's speculative θ."""
        if self.pending is None:
            return False
        pending, self.pending = self.pending, None
        committed = pending.result()
        self.settle(committed)
        return committed.result.overruled

    def confirm(self, spec) -> Committed:
        """A speculative round's agreement, receipt, reports and commit (in the background)."""
        with _of_round(spec.trained.round):
            return self.commit_round(spec.trained.round, self.trainer.confirm_round(spec))

    def finish(self, trained: Trained) -> Committed:
        """Round ``trained.round``'s outer phase: exchange and outer step, then the receipt, the reports and
        the commit. Touches θ, the group, the receipt store and the client only (see Trainer.train_round)."""
        with _of_round(trained.round):
            return self.commit_round(trained.round, self.trainer.finish_round(trained))

    def commit_round(self, round_: int, result: RoundResult) -> Committed:
        a = self.a
        state = self.trainer.state_bytes()
        keep_state(self.work / "states", result.state_hash, state, protect={a.checkpoint} if a.checkpoint else set())
        loss = sum(result.losses) / len(result.losses)
        self.store_receipt(result)
        reports.report_dropped(self.client, self.a, result)
        agreed = self.commit(result, loss, len(state))
        self.agreed[round_ + 1] = agreed
        for old in [r for r in self.agreed if r < round_]:
            del self.agreed[old]
        return Committed(result, state, loss, agreed)

    def settle(self, done: Committed) -> None:
        """Act on an agreed round: exit DIVERGED if the swarm agreed on a state other than mine, offer the
        state for upload when it is this rank's turn, and log it."""
        a, result, round_ = self.a, done.result, done.result.round
        if done.agreed != result.state_hash:
            log.error("round %d: my state %s differs from the agreed %s", round_, result.state_hash, done.agreed)
            raise Exit(exit_codes.DIVERGED)
        every = self.run_info.training.checkpoint_every
        if every > 1 and result.contribution:  # the orchestrator replays the rounds between checkpoints
            self.uploader.offer_payload(round_, a.rank, result.contribution)
        if uploads_round(round_, a.rank, a.world_size, every):
            self.uploader.offer(result.state_hash, done.state)  # in the background: the next round starts now
        log.info(
            "round %d agreed: loss %.4f, state %s, %d bytes sent",
            round_,
            done.loss,
            result.state_hash[:12],
            result.bytes_sent,
        )
        self.last_loss = done.loss
        self.write_progress(0, done.loss)

    def store_receipt(self, result: RoundResult) -> None:
        """Sign what this rank did this round and keep it, with its contribution, for validators."""
        receipt = receipts.receipt_of(result, self.a, self.run_info, self.hotkey, self.agreed[result.start_round])
        # Through the module at call time: see template/miner/receipts.py.
        self.receipts.put(receipts.sign_receipt(receipt, self.sign), result.contribution)

    def commit(self, result: RoundResult, loss: float, state_bytes: int) -> str:
        """Report my new state hash (and its size: the orchestrator takes only uploads of that size) and
        wait until the round is agreed; returns the agreed hash."""
        a = self.a
        try:
            answer = self.client.report_round(
                p.RoundReport(
                    generation=a.generation,
                    round=result.round,
                    state=result.state_hash,
                    loss=loss,
                    state_bytes=state_bytes,
                    bytes_sent=result.bytes_sent,
                )
            )
        except OrchestratorError as error:
            if error.status == 409:
                log.info("round %d not accepted (%s): re-assigning", result.round, error.detail)
                raise Exit(exit_codes.REASSIGN) from error
            raise
        return wait_for_agreement(self.client, a, result.round, answer)


def run_miner(cfg, wallet, work: Path) -> int:
    """The miner process's body after flags and logging: returns its exit code."""
    client = OrchestratorClient(cfg.orchestrator_url, wallet, orchestrator_hotkey(cfg))
    manager = RoundManager(cfg, wallet, client, work)
    try:
        return manager.run()
    finally:
        manager.uploader.close()  # a pending upload is dropped: every member keeps the agreed states
        manager.outer_phase.shutdown(wait=False, cancel_futures=True)
        client.close()
