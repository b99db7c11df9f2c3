"""A rank's assignment and the end of its rounds: the orchestrator's assignment or one built from manual flags
(:func:`assignment_from`), the wait for a round's agreement that also notices a generation ending
(:func:`wait_for_agreement`), the wait for the next generation after one ended (:func:`next_generation`), and
:class:`Exit`, how the round manager stops with an exit code for the meta-miner."""

from __future__ import annotations

import logging
import time
from typing import Optional

from template import wire as p
from template.miner import exit_codes
from template.miner.exit_codes import REFORM_WAIT_S
from template.net.orchestrator_client import OrchestratorError

log = logging.getLogger("tensorswarm.miner")

MANUAL = ("rank", "world_size", "tcp_store_address", "tcp_store_port", "store_prefix")


class Exit(Exception):
    """Stop this miner now with ``code`` (an ``exit_codes`` value) for its meta-miner to act on."""

    def __init__(self, code: int):
        super().__init__(exit_codes.NAMES.get(code, str(code)))
        self.code = code


def manual_flags(cfg) -> bool:
    return any(getattr(cfg, name) is not None for name in MANUAL)


def assignment_from(cfg, client) -> p.Assignment:
    """The orchestrator's assignment, or one built from the manual flags (the orchestrator still
    supplies what they do not name: generation, round, start state, members' hotkeys)."""
    if manual_flags(cfg):
        answer = client.assignment()
        a = answer.assignment
        return p.Assignment(
            generation=cfg.generation if cfg.generation is not None else (a.generation if a else 0),
            rank=cfg.rank,
            world_size=cfg.world_size,
            members=a.members
            if a and a.world_size == cfg.world_size
            else [p.Member(rank=i, hotkey="") for i in range(cfg.world_size)],
            store_host=cfg.tcp_store_address,
            store_port=cfg.tcp_store_port,
            store_prefix=cfg.store_prefix,
            round=a.round if a else 0,
            checkpoint=a.checkpoint if a else None,
            run_id=client.run().run_id,
        )
    answer = client.assignment()
    if answer.status != "assigned" or answer.assignment is None:
        log.info("not assigned (%s): %s", answer.status, answer.detail)
        raise Exit(exit_codes.REASSIGN)
    return answer.assignment


def wait_for_agreement(client, a: p.Assignment, round_: int, answer: p.RoundResponse) -> str:
    """Block until the round is agreed; exit REASSIGN if the generation moves on
    (checked even when our own report completed the round: joiners may be
    entering at this boundary, and our peers are about to be relaunched)."""
    while True:
        if answer.agreed is not None and answer.round > round_:
            now = client.assignment()
            if now.status == "assigned" and now.assignment.generation == a.generation:
                return answer.agreed
        else:  # held on the orchestrator until the round is agreed or the generation moves
            now = client.assignment(after_round=round_, wait_s=5.0)
        if now.status != "assigned" or now.assignment.generation != a.generation:
            log.info("generation %d ended at round %d's boundary", a.generation, round_)
            raise Exit(exit_codes.REASSIGN)
        answer = p.RoundResponse(accepted=True, round=now.assignment.round, agreed=now.assignment.checkpoint)


def next_generation(client, old: Optional[int]) -> bool:
    """Wait for a generation after the one that just ended, in which this hotkey is a member: True when
    it is there. While this hotkey waits (too few members for a generation, a round boundary) it keeps
    asking. False (the meta-miner takes over: it relaunches, or waits out a cool-down) when this
    hotkey is cooling down or gone, or nothing changed for ``REFORM_WAIT_S`` (the orchestrator gathers
    stall reports before it re-forms), or the orchestrator cannot be reached."""
    deadline = time.monotonic() + REFORM_WAIT_S
    while time.monotonic() < deadline:
        try:
            answer = client.assignment(retry=False, timeout=5.0)
        except OrchestratorError as error:
            log.info("waiting for the next generation: %s", error)
            return False
        if answer.status == "waiting":  # for joiners or a round boundary: a generation is near
            time.sleep(min(1.0, max(0.2, answer.retry_after_s or 0.2)))
            continue
        if answer.status != "assigned" or answer.assignment is None:
            log.info("not assigned (%s): %s", answer.status, answer.detail)
            return False
        if answer.assignment.generation != old:
            log.info("generation %s ended: joining generation %d in place", old, answer.assignment.generation)
            return True
        time.sleep(0.2)
    log.info("generation %s still stands after %.0fs: leaving it to the meta-miner", old, REFORM_WAIT_S)
    return False
