"""Typed, signed client for the orchestrator's API (used by meta-miners, miners
and validators). Requests are btauth/1-signed for the orchestrator's hotkey;
responses are parsed into the same pydantic models the server declares."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Optional

import httpx

from template import wire as p
from template.net.auth import BtAuth
from template.wire.orchestrator import DECISION_WAIT_MAX_S, ContributionDecision, ContributionReport

log = logging.getLogger(__name__)
RETRY_STATUS = (502, 503, 504)
UNREACHABLE_RETRY_S = 1.0  # the longest wait between attempts while nothing answers at the address


class OrchestratorError(RuntimeError):
    def __init__(self, status: int, detail: str):
        super().__init__(f"orchestrator answered {status}: {detail}")
        self.status = status
        self.detail = detail


class OrchestratorClient:
    def __init__(self, url: str, wallet, orchestrator_hotkey: str, timeout: float = 30.0, retry_s: float = 60.0):
        self.url = url.rstrip("/")
        self.hotkey = orchestrator_hotkey
        # Ride out an orchestrator restart: idempotent calls retry transport errors
        # and 502/503/504 for this long (each attempt is re-signed: fresh nonce).
        self.timeout = timeout
        self.retry_s = retry_s
        self.cancelled = False
        self.http = httpx.Client(base_url=self.url, auth=BtAuth(wallet, orchestrator_hotkey), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise OrchestratorError(response.status_code, str(detail))
        return response

    def cancel(self) -> None:
        """Stop retrying (from a signal handler): a call in its retry loop gives up at its next
        attempt, so shutting down never waits out an unreachable orchestrator."""
        self.cancelled = True

    def _send(self, method: str, path: str, retry: bool = True, **kw) -> httpx.Response:
        deadline = time.monotonic() + (self.retry_s if retry else 0)
        delay = 0.25
        while True:
            try:
                response = self.http.request(method, path, **kw)
                throttled = response.status_code == 429 and path != "/v1/join"  # join's 429 is a cool-down
                if (
                    (response.status_code not in RETRY_STATUS and not throttled)
                    or time.monotonic() >= deadline
                    or self.cancelled
                ):
                    return response
                problem = f"HTTP {response.status_code}"
                if throttled:  # a rate limit: wait what the orchestrator says (bounded by the deadline)
                    delay = max(delay, min(_retry_after(response), 30.0, max(0.0, deadline - time.monotonic())))
            except httpx.TransportError as error:
                if time.monotonic() >= deadline or self.cancelled:
                    raise OrchestratorError(503, f"orchestrator unreachable at {self.url}: {error}") from None
                problem = str(error) or type(error).__name__
                if isinstance(error, httpx.ConnectError):
                    # Nothing listening costs a restarting orchestrator nothing: ask every second, so a round
                    # waits for its start-up, not for the rest of a long backoff (5 s) after it.
                    delay = min(delay, UNREACHABLE_RETRY_S)
            log.warning("orchestrator %s %s: %s; retrying in %.1fs", method, path, problem, delay)
            for _ in range(int(delay / 0.05)):  # sleep, but notice cancel() soon
                if self.cancelled:
                    break
                time.sleep(0.05)
            delay = min(delay * 2, 5.0)

    def _json(self, method: str, path: str, model=None, retry: bool = True, **kw):
        response = self._check(self._send(method, path, retry=retry, **kw))
        return response.json() if model is None else model.model_validate(response.json())

    # membership
    def join(self, device: str = "cpu") -> p.AssignmentResponse:
        # Not retried: a duplicate join from a member reads as "my miner restarted".
        return self._json(
            "POST", "/v1/join", p.AssignmentResponse, retry=False, json=p.JoinRequest(device=device).model_dump()
        )

    def heartbeat(self, beat: p.HeartbeatRequest) -> p.HeartbeatResponse:
        return self._json("POST", "/v1/heartbeat", p.HeartbeatResponse, json=beat.model_dump())

    def leave(self, reason: str = "", *, retry: bool = True, timeout: Optional[float] = None) -> p.Ack:
        """Leave the run. ``retry=False`` and a short ``timeout`` when shutting down: the heartbeat
        timeout removes the slot anyway, and a stop must not wait out an unreachable orchestrator."""
        kw = {} if timeout is None else {"timeout": timeout}
        return self._json(
            "POST", "/v1/leave", p.Ack, retry=retry, json=p.LeaveRequest(reason=reason).model_dump(), **kw
        )

    def assignment(
        self,
        *,
        retry: bool = True,
        timeout: Optional[float] = None,
        after_round: Optional[int] = None,
        wait_s: float = 0,
    ) -> p.AssignmentResponse:
        """This hotkey's assignment. ``retry=False`` and a short ``timeout`` for a glance that must not hold
        up training (a rank checking between inner steps whether its generation is still on). With
        ``wait_s`` (5 s at most) the orchestrator holds the answer until the round is past ``after_round``
        or the assignment changes: a member waiting for its round's agreement asks once, not every 0.2 s."""
        path = "/v1/assignment"
        kw = {} if timeout is None else {"timeout": timeout}
        if wait_s > 0:
            wait_s = min(wait_s, DECISION_WAIT_MAX_S)
            path += f"?after_round={-1 if after_round is None else int(after_round)}&wait={wait_s:.3f}"
            kw["timeout"] = (timeout or self.timeout) + wait_s
        return self._json("GET", path, p.AssignmentResponse, retry=retry, **kw)

    def report_round(self, report: p.RoundReport) -> p.RoundResponse:
        return self._json("POST", "/v1/round", p.RoundResponse, json=report.model_dump())

    def report_evaluation(self, evaluation: p.Evaluation) -> p.Ack:
        """A validator's held-out loss of an agreed state and its last weights, for the dashboard."""
        return self._json("POST", "/v1/evaluation", p.Ack, retry=False, json=evaluation.model_dump(mode="json"))

    def history(self, since: int = 0, limit: int = 200) -> p.History:
        return self._json("GET", f"/v1/history?since={int(since)}&limit={int(limit)}", p.History)

    def report_misbehavior(self, report: p.MisbehaviorReport) -> p.Ack:
        return self._json("POST", "/v1/report", p.Ack, json=report.model_dump())

    def checkin(self, generation: int) -> p.Ack:
        """This member's miner started for ``generation`` (a member that never does is removed)."""
        return self._json("POST", "/v1/checkin", p.Ack, json=p.CheckIn(generation=generation).model_dump())

    def report_stall(self, report: p.StallReport) -> p.Ack:
        """This member's exchange timed out waiting for ``report.missing``."""
        return self._json("POST", "/v1/stall", p.Ack, json=report.model_dump())

    # the agreed contribution set of a diloco round
    def report_contributions(self, report: ContributionReport) -> ContributionDecision:
        """What this member received (idempotent: retried like any other call); answers with the
        decision so far."""
        return self._json("POST", "/v1/contributions", ContributionDecision, json=report.model_dump(mode="json"))

    def contribution_decision(self, generation: int, round: int, wait_s: float = 0.0) -> ContributionDecision:
        """The decision so far; with ``wait_s``, the orchestrator holds the answer up to that long (5 s at
        most) until the decision is made."""
        path = f"/v1/contributions/{int(generation)}/{int(round)}"
        if wait_s > 0:
            path += f"?wait={min(wait_s, DECISION_WAIT_MAX_S):.3f}"
        return self._json("GET", path, ContributionDecision, timeout=self.timeout + DECISION_WAIT_MAX_S)

    def agree_contributions(self, report: ContributionReport, timeout_s: float) -> ContributionDecision:
        """Report, then wait for the decision on the orchestrator (long polls of up to 5 s: a request
        or two per round instead of one every 0.1 s); :class:`OrchestratorError` (504) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        decision = self.report_contributions(report)
        while not decision.decided:
            left = deadline - time.monotonic()
            if left <= 0 or self.cancelled:
                raise OrchestratorError(
                    504, f"no contribution decision for round {report.round} within {timeout_s:.0f}s"
                )
            decision = self.contribution_decision(report.generation, report.round, wait_s=left)
        return decision

    # run, data, checkpoints
    def run(self) -> p.RunInfo:
        return self._json("GET", "/v1/run", p.RunInfo)

    def shard(self, sha256: str) -> bytes:
        return self._check(self._send("GET", f"/v1/data/{sha256}")).content

    def checkpoint(self, sha256: str) -> Optional[bytes]:
        """The checkpoint's bytes (hash-verified), or None if the orchestrator lacks it."""
        response = self._send("GET", f"/v1/checkpoint/{sha256}")
        if response.status_code == 404:
            return None
        data = self._check(response).content
        if hashlib.sha256(data).hexdigest() != sha256:
            raise OrchestratorError(502, f"checkpoint {sha256} from the orchestrator does not match its hash")
        return data

    def checkpoint_info(self, sha256: str) -> Optional[p.CheckpointInfo]:
        """Whether the orchestrator holds a checkpoint, without downloading it."""
        return next((info for info in self.checkpoints() if info.sha256 == sha256), None)

    def checkpoints(self) -> list[p.CheckpointInfo]:
        """The checkpoints the orchestrator holds, newest round first."""
        return [p.CheckpointInfo.model_validate(info) for info in self._json("GET", "/v1/checkpoints")]

    def upload_checkpoint(self, sha256: str, data: bytes) -> p.CheckpointInfo:
        return self._json(
            "PUT",
            f"/v1/checkpoint/{sha256}",
            p.CheckpointInfo,
            content=data,
            headers={"content-type": "application/octet-stream"},
        )

    def upload_payload(self, round: int, rank: int, payload: bytes) -> p.Ack:
        """This rank's agreed contribution of ``round``, for the orchestrator's replays (orchestrator.replays)."""
        return self._json(
            "PUT",
            f"/v1/payload/{round}/{rank}",
            p.Ack,  # retried through an orchestrator restart: a replay needs every round's payloads
            content=payload,
            headers={"content-type": "application/octet-stream"},
        )

    def rounds(self, since: int = 0, limit: int = 100) -> list[p.RoundRecord]:
        data = self._json("GET", f"/v1/rounds?since={since}&limit={limit}")
        return [p.RoundRecord.model_validate(r) for r in data]


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0
