"""What a rank tells the orchestrator about others: the ranks its broken group waited for in vain
(:func:`report_stall`) and the contributions it dropped (:func:`report_dropped`). Best effort: a report that
does not arrive changes nothing the group needs (the round timeout is the fallback)."""

from __future__ import annotations

import logging

from template import wire as p
from template.engine.outer_round import NOT_AGREED
from template.engine.strategies import RoundResult

log = logging.getLogger("tensorswarm.miner")


def report_stall(client, a: p.Assignment, round_: int, missing, rendezvous: bool, unnamed_connect=False) -> None:
    """This rank's group broke in ``round_``, waiting in vain for ``missing`` where it knows (the
    orchestrator removes a rank that most of the others name, and re-forms the generation when the group
    cannot go on; the reporter is not blamed for the broken group). ``rendezvous``: before the group formed;
    ``unnamed_connect``: gloo's connect timed out with no peer to name."""
    try:
        client.report_stall(
            p.StallReport(
                generation=a.generation,
                round=round_,
                missing=list(missing),
                rendezvous=rendezvous,
                unnamed_connect=unnamed_connect,
            )
        )
    except Exception as error:
        log.warning("could not report the ranks that stalled: %s", error)


def report_dropped(client, a: p.Assignment, result: RoundResult) -> None:
    """Each contribution this rank dropped, to the orchestrator (it keeps count; validators and the owner
    act on it), except those the agreement left out: the orchestrator holds that evidence itself."""
    for rank, reason in result.dropped.items():
        log.warning("round %d: dropped rank %d's contribution: %s", result.round, rank, reason)
        if reason.startswith(NOT_AGREED):  # e.g. its sender sent the majority garbage, or equivocated
            continue
        try:
            client.report_misbehavior(
                p.MisbehaviorReport(
                    generation=a.generation, round=result.round, accused=a.members[rank].hotkey, reason=reason[:200]
                )
            )
        except Exception as error:
            log.warning("could not report rank %d: %s", rank, error)
