"""The run's history for the dashboard (`GET /v1/history`) and the validators' evaluations of agreed states
(`POST /v1/evaluation`), mixed into the coordinator (uses its ``db`` and ``_txn``). Rows come from the ledger's ``rounds``, ``round_stats`` and ``generations`` tables,
written when a round is agreed (:meth:`orchestrator.ledger.Ledger._commit_round`)."""

from __future__ import annotations

import json
import sqlite3
import statistics
from typing import Optional

from template import wire as p


class RunHistory:
    db: sqlite3.Connection
    round: int

    def history(self, since: int, limit: int, tokens_per_contribution: int) -> p.History:
        """Agreed rounds ``since``.. (at most ``limit``, oldest first) with their statistics, the validators'
        median held-out loss of each round's state, and every validator's latest evaluation."""
        rows = self.db.execute(
            """SELECT r.round, r.generation, g.members, r.state, r.loss, r.completed_at,
                      s.loss_min, s.loss_max, s.started_at, s.members, s.bytes_sent, s.included, s.dropped
               FROM rounds r JOIN generations g ON g.id = r.generation LEFT JOIN round_stats s ON s.round = r.round
               WHERE r.round >= ? ORDER BY r.round LIMIT ?""",
            (since, limit),
        ).fetchall()
        heldout: dict[tuple[int, str], list[float]] = {}
        if rows:
            for r, state, loss in self.db.execute(
                """SELECT round, state, heldout_loss FROM evaluations
                   WHERE round BETWEEN ? AND ? AND heldout_loss IS NOT NULL""",
                (rows[0][0], rows[-1][0]),
            ):
                heldout.setdefault((r, state), []).append(loss)
        points = []
        # One query, whatever the page: this route is public (the figures were counted when each round was agreed).
        for r, g, members_json, state, loss, done, lo, hi, started, members, sent, included, dropped in rows:
            members = members if members is not None else len(json.loads(members_json))
            contributions = members if included is None else included
            scores = heldout.get((r, state))
            points.append(
                p.HistoryPoint(
                    round=r,
                    generation=g,
                    members=members,
                    loss=loss,
                    loss_min=lo,
                    loss_max=hi,
                    completed_at=done,
                    wall_s=None if started is None else max(0.0, done - started),
                    tokens=contributions * tokens_per_contribution,
                    dropped=0 if included is None else members - contributions,
                    bytes_sent=sent,
                    dropped_members=json.loads(dropped) if dropped else [],
                    heldout_loss=statistics.median(scores) if scores else None,
                )
            )
        return p.History(
            points=points, validators=self.validator_views(), next_since=points[-1].round + 1 if points else since
        )

    def validator_views(self) -> list[p.ValidatorView]:
        rows = self.db.execute(
            """SELECT e.validator, e.round, e.heldout_loss, e.weights, e.at FROM evaluations e
               WHERE e.at = (SELECT MAX(at) FROM evaluations WHERE validator = e.validator) ORDER BY e.validator"""
        )
        views = {}
        for hotkey, r, loss, weights, at in rows:
            views[hotkey] = p.ValidatorView(
                hotkey=hotkey,
                round=r,
                heldout_loss=loss,
                weights={int(k): v for k, v in json.loads(weights).items()},
                at=at,
            )
        return list(views.values())

    def record_evaluation(self, validator: str, ev: p.Evaluation, now: float) -> Optional[str]:
        """Keep a validator's evaluation of an agreed state; returns why not, or None. One row per (validator,
        round); only the validator's newest row keeps its weights, so the table grows by a few numbers per
        validator and round."""
        row = self.db.execute("SELECT state FROM rounds WHERE round=?", (ev.round,)).fetchone()
        if row is None:
            return f"round {ev.round} is not an agreed round"
        if row[0] != ev.state:
            return f"round {ev.round} agreed on another state than {ev.state[:12]}"
        with self._txn():  # the ledger's
            self.db.execute("UPDATE evaluations SET weights='{}' WHERE validator=?", (validator,))
            self.db.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?,?,?,?,?,?)",
                (validator, ev.round, ev.state, ev.heldout_loss, json.dumps(ev.weights), now),
            )
        return None
