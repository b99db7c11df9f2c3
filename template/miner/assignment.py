"""A rank's assignment and the end of its rounds: the orchestrator's assignment or one built from manual flags
(:func:`assignment_from`), the wait for a round's agreement that also notices a generation ending
(:func:`wait_for_agreement`), and :class:`Exit`, how the round manager stops with an exit code for the
meta-miner."""

from __future__ import annotations

import logging

from template import wire as p
from template.miner import exit_codes

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
