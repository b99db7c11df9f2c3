"""The orchestrator's HTTP API (FastAPI).

Public: ``GET /``, ``GET /v1/status``, ``GET /metrics``, the OpenAPI docs.
Everything else is btauth/1-signed and bound to the orchestrator's hotkey,
checked from the headers before a body byte is read (:class:`template.net.gate.SignedGate`):
miners must be registered on the netuid; ``GET /v1/rounds`` needs a validator
permit. 401 = bad/forged/replayed/stale signature, wrong receiver or no
``Content-Digest`` for a body, 403 = not registered / no permit, 413 = body too
large (a checkpoint: not the size its members said), 422 = malformed body,
429 = an upload of this hotkey is already in progress, or its rate on a route that moves large objects
(checkpoints, shards: ``RATE_LIMITS``) is used up (``Retry-After`` says when to come back).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from template import wire as p
from template.net.auth import AuthedCaller
from template.net.gate import SignedGate
from template.net.http import BodySizeLimitMiddleware, RateLimit, install_error_handlers
from template.wire.orchestrator import DECISION_WAIT_MAX_S, ContributionDecision, ContributionReport

from . import dashboard
from .dashboard import PUBLIC_PATHS
from .replays import BUSY, NeverWanted
from .service import OrchestratorService

SHA256 = PathParam(pattern=r"^[0-9a-f]{64}$", description="sha256, lowercase hex")
CONTRIBUTIONS_MAX_BYTES = 1 << 20
PUBLIC = frozenset(
    {"/v1/status", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", *PUBLIC_PATHS}
)
UPLOAD_WRITE_BYTES = 1 << 20  # an upload is written (and hashed) off the event loop in pieces this large
CHECKPOINT_CHUNK = 1 << 20
SHARD_CHUNK = 1 << 18  # a download is read from its open file (off the event loop) in pieces this large
# Per hotkey, on the routes that move large objects: (burst, per second). A miner fetches a checkpoint
# when it (re)joins, the ranks take turns uploading one per round, a validator fetches one per audited round, and shards
# are fetched once each (then cached); these leave all of that alone and stop a loop of downloads from
# taking the orchestrator's disk and network from everyone else.
RATE_LIMITS = {
    "checkpoint download": (16, 1.0),
    "checkpoint upload": (8, 1.0),
    "payload upload": (16, 4.0),  # each rank its own contribution, once per round
    "shard download": (256, 16.0),
    "report": (20, 2.0),  # check-ins, stall and misbehaviour reports: each a SQLite write
    "history request": (60, 10.0),  # public: per client address, each a query under the coordinator's lock
}


# A member asking for a round's contribution decision may wait for it on the server (long poll) rather
# than poll over the network (each poll a signed request, which on a sparse exchange cost more bytes than
# the contributions): up to DECISION_WAIT_MAX_S, checked every DECISION_POLL_S, WAITS_PER_HOTKEY at once.
DECISION_POLL_S = 0.02
WAITS_PER_HOTKEY = 2
_CLOSE = {"Connection": "close"}  # refused before its body was read: do not drain it


def _stream(f, size: int, chunk: int, headers: dict | None = None) -> StreamingResponse:
    """An open file's bytes, ``chunk`` at a time (a sync iterator: starlette reads it in its thread pool)."""

    def chunks():
        with f:
            while piece := f.read(chunk):
                yield piece

    headers = {"Content-Length": str(size), **(headers or {})}
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


def public(method: str, path: str) -> bool:
    """Routes anyone may call without a signature."""
    return method in ("GET", "HEAD") and path in PUBLIC


def create_app(svc: OrchestratorService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="tensorswarm orchestrator", version="1", lifespan=lifespan)
    # Added first, so it runs inside the size limit: a request is authenticated and its hotkey's
    # registration checked from the headers before the application reads a body byte.
    app.add_middleware(SignedGate, verify=svc.auth.verify_headers, admit=svc.auth.admit_registered, public=public)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=svc.settings.max_body_bytes,
        # A contribution report names every member (~210 bytes each), up to MAX_MEMBERS of them.
        overrides={
            "/v1/checkpoint/": svc.settings.max_checkpoint_bytes,
            "/v1/payload/": svc.settings.max_checkpoint_bytes,
            "/v1/contributions": CONTRIBUTIONS_MAX_BYTES,
        },
    )
    install_error_handlers(app)
    registered = Depends(svc.auth.registered)
    uploading: set[str] = set()  # hotkeys with a checkpoint upload in progress (one at a time each)
    limits = {kind: RateLimit(*rate) for kind, rate in RATE_LIMITS.items()}

    def throttle(kind: str, hotkey: str, headers: dict | None = None) -> None:
        wait = limits[kind].wait(hotkey, time.monotonic())
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise HTTPException(
                429, f"too many {kind}s from this hotkey: retry in {retry}s", {"Retry-After": retry, **(headers or {})}
            )

    validator = Depends(svc.auth.validator)
    c = svc.coordinator
    all_shards = frozenset(s.sha256 for s in svc.manifest.shards)  # once: a big dataset has many thousands
    heldout_shards = frozenset(s.sha256 for s in svc.manifest.heldout_shards)

    @app.exception_handler(HTTPException)
    async def _count_denials(request: Request, exc: HTTPException):
        if exc.status_code in (401, 403, 404, 409, 410, 413, 429):
            svc.metrics.denied.labels(str(exc.status_code)).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    # -- public ------------------------------------------------------------------------

    dashboard.add_routes(app, svc, validator, throttle)

    @app.get("/v1/status", response_model=p.Status)
    async def status() -> p.Status:
        return svc.status(time.time())

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- membership (registered hotkeys) ---------------------------------------------------

    @app.post("/v1/join", response_model=p.AssignmentResponse)
    async def join(req: p.JoinRequest, caller: AuthedCaller = registered) -> p.AssignmentResponse:
        svc.metrics.joins.inc()
        with svc.lock:
            answer = c.join(caller.hotkey, req.device, time.time())
            svc._update_gauges()
        if answer.status == "cooldown":
            raise HTTPException(429, answer.detail, headers={"Retry-After": str(int(answer.retry_after_s) + 1)})
        return answer

    @app.post("/v1/heartbeat", response_model=p.HeartbeatResponse)
    async def heartbeat(beat: p.HeartbeatRequest, caller: AuthedCaller = registered) -> p.HeartbeatResponse:
        svc.metrics.heartbeats.inc()
        with svc.lock:
            answer = c.heartbeat(caller.hotkey, beat, time.time())
        if answer is None:
            raise HTTPException(404, "no slot for this hotkey: POST /v1/join first")
        return answer

    @app.post("/v1/leave", response_model=p.Ack)
    async def leave(req: p.LeaveRequest, caller: AuthedCaller = registered) -> p.Ack:
        with svc.lock:
            left = c.leave(caller.hotkey, time.time(), reason=req.reason or "left")
            svc._update_gauges()
        return p.Ack(ok=left, detail="" if left else "no slot for this hotkey")

    waiting: dict[str, int] = {}  # hotkey -> long polls waiting on the server (assignments, decisions)

    def _wait_slot(hotkey: str, wait: float) -> None:
        if wait > 0 and waiting.get(hotkey, 0) >= WAITS_PER_HOTKEY:
            raise HTTPException(429, "this hotkey already waits on the orchestrator", {"Retry-After": "1"})
        waiting[hotkey] = waiting.get(hotkey, 0) + (wait > 0)

    def _free_slot(hotkey: str, wait: float) -> None:
        waiting[hotkey] -= wait > 0
        if not waiting[hotkey]:
            del waiting[hotkey]

    @app.get("/v1/assignment", response_model=p.AssignmentResponse)
    async def assignment(
        after_round: int = Query(-1, ge=-1, le=2**40, description="with wait: answer once the round is past this"),
        wait: float = Query(0.0, ge=0, le=DECISION_WAIT_MAX_S, description="seconds to wait for a change"),
        caller: AuthedCaller = registered,
    ) -> p.AssignmentResponse:
        """This hotkey's assignment; with ``wait``, held until the round is past ``after_round`` or the
        assignment's generation or status changes (a member waiting for its round's agreement)."""
        hotkey = caller.hotkey
        _wait_slot(hotkey, wait)
        try:
            deadline = time.monotonic() + wait
            with svc.lock:
                first = c.assignment(hotkey, time.time())
            answer = first
            while time.monotonic() < deadline:
                a = answer.assignment
                if answer.status != first.status or (a is not None and a.round > after_round):
                    break
                if a is not None and first.assignment is not None and a.generation != first.assignment.generation:
                    break
                await asyncio.sleep(DECISION_POLL_S)
                with svc.lock:
                    answer = c.assignment(hotkey, time.time())
            return answer
        finally:
            _free_slot(hotkey, wait)

    @app.post("/v1/round", response_model=p.RoundResponse)
    async def report_round(report: p.RoundReport, caller: AuthedCaller = registered) -> p.RoundResponse:
        with svc.lock:
            before = c.round
            answer = c.report_round(caller.hotkey, report, time.time())
            if c.round > before:
                svc.metrics.rounds.inc()
                svc.track_rounds(before)
                history = c.loss_history(1)
                if history:
                    svc.metrics.loss.set(history[-1][1])
            svc._update_gauges()
        if not answer.accepted:
            raise HTTPException(409, answer.detail)
        return answer

    @app.post("/v1/checkin", response_model=p.Ack)
    async def checkin(req: p.CheckIn, caller: AuthedCaller = registered) -> p.Ack:
        throttle("report", caller.hotkey)
        with svc.lock:
            refused = c.checkin(caller.hotkey, req, time.time())
        if refused:
            raise HTTPException(409, refused)
        return p.Ack()

    @app.post("/v1/stall", response_model=p.Ack)
    async def stall(report: p.StallReport, caller: AuthedCaller = registered) -> p.Ack:
        throttle("report", caller.hotkey)
        with svc.lock:
            refused = c.report_stall(caller.hotkey, report, time.time())
            svc._update_gauges()
        if refused:
            raise HTTPException(409, refused)
        return p.Ack()

    @app.post("/v1/report", response_model=p.Ack)
    async def report(report: p.MisbehaviorReport, caller: AuthedCaller = registered) -> p.Ack:
        throttle("report", caller.hotkey)
        with svc.lock:
            refused = c.report_misbehavior(caller.hotkey, report, time.time())
        if refused:
            raise HTTPException(409, refused)
        svc.metrics.misbehavior.inc()
        return p.Ack()

    # -- run, data, checkpoints (registered hotkeys: miners and validators) -------------------

    @app.get("/v1/run", response_model=p.RunInfo)
    async def run(_caller: AuthedCaller = registered) -> p.RunInfo:
        return svc.run

    @app.get("/v1/data/{sha256}", response_class=Response)
    async def data(sha256: str = SHA256, caller: AuthedCaller = registered) -> Response:
        throttle("shard download", caller.hotkey)
        if sha256 not in all_shards:
            raise HTTPException(404, "no shard with that hash in this run's dataset")
        # Held-out shards measure a contribution on data no miner trained on: validators only (miners
        # never need them — their batches come from training shards). A permit miss refreshes the
        # metagraph (rate-limited), so a validator whose permit just arrived gets in within seconds.
        if sha256 in heldout_shards and not caller.validator_permit:
            neuron = await svc.auth.metagraph.ensure(caller.hotkey, require_permit=True)
            if neuron is None or not neuron.validator_permit:
                raise HTTPException(
                    403, f"held-out shards are served to validators only: {caller.hotkey} has no permit"
                )
        # Streamed from disk off the event loop (every shard was verified when the run was loaded; miners
        # check the hash of what they get): no shard-sized buffer per request.
        f = await run_in_threadpool(open, svc.shards.path(sha256), "rb")
        return _stream(f, os.fstat(f.fileno()).st_size, SHARD_CHUNK)

    @app.put("/v1/checkpoint/{sha256}", response_model=p.CheckpointInfo)
    async def put_checkpoint(
        request: Request, sha256: str = SHA256, caller: AuthedCaller = registered
    ) -> p.CheckpointInfo:
        # Everything that can refuse the upload is decided before its body is read.
        gen = c.generation
        if gen is None or gen.rank_of(caller.hotkey) is None:
            raise HTTPException(403, "only members of the current generation upload checkpoints", _CLOSE)
        with svc.lock:
            if (round_ := c.is_known_state(sha256)) is None:
                raise HTTPException(409, "no round of this run produced that state", _CLOSE)
            refused, expected = svc.checkpoint_refusal(sha256, round_), c.state_size(sha256)
        stored = svc.checkpoint_info(sha256)
        if stored is not None and svc.has_checkpoint(sha256):
            return stored  # already here: the body is not read
        if refused is not None:
            raise HTTPException(409, refused, _CLOSE)
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            raise HTTPException(411, "a checkpoint upload needs a Content-Length", _CLOSE)
        if expected is not None and int(declared) != expected:
            raise HTTPException(
                413, f"the members said this state is {expected} bytes; the body announces {declared}", _CLOSE
            )
        throttle("checkpoint upload", caller.hotkey, _CLOSE)
        if caller.hotkey in uploading:
            raise HTTPException(429, "an upload of this hotkey is in progress", {"Retry-After": "1", **_CLOSE})
        uploading.add(caller.hotkey)
        upload = None
        try:
            upload = await run_in_threadpool(svc.new_upload)
            piece = bytearray()
            async for chunk in request.stream():
                piece += chunk
                if len(piece) >= UPLOAD_WRITE_BYTES:
                    await run_in_threadpool(upload.write, bytes(piece))
                    piece.clear()
            await run_in_threadpool(upload.write, bytes(piece))
            return await run_in_threadpool(svc.store_upload, sha256, upload, time.time())
        except ValueError as error:  # body does not hash to the path's sha256
            raise HTTPException(400, str(error)) from None
        except LookupError as error:
            raise HTTPException(409, str(error)) from None
        finally:
            uploading.discard(caller.hotkey)
            if upload is not None:
                await run_in_threadpool(upload.discard)

    async def _checkpoint_response(sha: str) -> Response:
        found = await run_in_threadpool(svc.open_checkpoint, sha)
        if found is None:  # an agreed state between checkpoints: replayed from the agreed contributions
            why = await run_in_threadpool(svc.payloads.rebuild, sha)
            if why == BUSY:
                raise HTTPException(503, why, {"Retry-After": "1"})
            found = None if why else await run_in_threadpool(svc.payloads.open_rebuilt, sha)
            if found is None:
                raise HTTPException(404, f"no checkpoint with that hash ({why or 'gone'})")
        info, f = found
        headers = {"X-Checkpoint-Sha256": info.sha256, "X-Checkpoint-Round": str(info.round)}
        return _stream(f, info.size, CHECKPOINT_CHUNK, headers)

    @app.get("/v1/checkpoint/latest", response_class=Response)
    async def latest_checkpoint(caller: AuthedCaller = registered) -> Response:
        throttle("checkpoint download", caller.hotkey)
        info = svc.checkpoint_info()
        if info is None:
            raise HTTPException(404, "no checkpoint yet: the run starts from its seed")
        return await _checkpoint_response(info.sha256)

    @app.get("/v1/checkpoint/{sha256}", response_class=Response)
    async def checkpoint(sha256: str = SHA256, caller: AuthedCaller = registered) -> Response:
        throttle("checkpoint download", caller.hotkey)
        return await _checkpoint_response(sha256)

    @app.get("/v1/checkpoints", response_model=list[p.CheckpointInfo])
    async def checkpoints(_caller: AuthedCaller = registered) -> list[p.CheckpointInfo]:
        return svc.checkpoints()

    # -- validators ----------------------------------------------------------------------------

    @app.get("/v1/rounds", response_model=list[p.RoundRecord])
    async def rounds(
        since: int = Query(0, ge=0, le=2**40), limit: int = Query(100, ge=1, le=1000), _caller: AuthedCaller = validator
    ) -> list[p.RoundRecord]:
        return c.round_records(since, limit)

    # -- the agreed contribution set of a diloco round (members of the generation) ------------------

    @app.post("/v1/contributions", response_model=ContributionDecision)
    async def report_contributions(
        report: ContributionReport, caller: AuthedCaller = registered
    ) -> ContributionDecision:
        # Signature checks (cached) run under the lock: one per (sender, hash) and round, not per report.
        with svc.lock:
            decision, refused = c.report_contributions(caller.hotkey, report, time.time())
        if refused:
            raise HTTPException(*refused)
        return decision

    @app.get("/v1/contributions/{generation}/{round}", response_model=ContributionDecision)
    async def contribution_decision(
        generation: int = PathParam(ge=0, le=2**40),
        round: int = PathParam(ge=0, le=2**40),
        wait: float = Query(0.0, ge=0, le=DECISION_WAIT_MAX_S, description="seconds to wait for the decision"),
        caller: AuthedCaller = registered,
    ) -> ContributionDecision:
        hotkey = caller.hotkey
        _wait_slot(hotkey, wait)
        deadline = time.monotonic() + wait
        try:
            while True:
                with svc.lock:
                    decision, refused = c.contribution_decision(hotkey, generation, round, time.time())
                if refused:
                    raise HTTPException(*refused)
                if decision.decided or time.monotonic() >= deadline:
                    return decision
                await asyncio.sleep(DECISION_POLL_S)
        finally:
            _free_slot(hotkey, wait)

    # -- agreed contributions, for replays (orchestrator.replays) ----------------------------------

    @app.put("/v1/payload/{round}/{rank}", response_model=p.Ack)
    async def put_payload(
        request: Request,
        round: int = PathParam(ge=0, le=2**40),
        rank: int = PathParam(ge=0, le=4096),
        caller: AuthedCaller = registered,
    ) -> p.Ack:
        # Decided before the body is read: the sender itself, an agreed round that included it, the size.
        with svc.lock:
            records = c.round_records(round, 1)
        if not records or records[0].round != round:
            raise HTTPException(409, f"round {round} is not agreed", _CLOSE)
        members = records[0].members
        if not 0 <= rank < len(members) or members[rank] != caller.hotkey:
            raise HTTPException(403, f"only rank {rank}'s own hotkey uploads its contribution", _CLOSE)
        try:
            sha, most = await run_in_threadpool(svc.payloads.expected, round, rank)
        except NeverWanted as error:
            raise HTTPException(410, str(error), _CLOSE) from None
        except LookupError as error:
            raise HTTPException(409, str(error), _CLOSE) from None
        if await run_in_threadpool(svc.payloads.has, sha):
            return p.Ack()  # already here: the body is not read
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            raise HTTPException(411, "a contribution upload needs a Content-Length", _CLOSE)
        if int(declared) > most:
            raise HTTPException(413, f"a contribution is at most {most} bytes; the body announces {declared}", _CLOSE)
        throttle("payload upload", caller.hotkey, _CLOSE)
        upload = await run_in_threadpool(svc.new_upload)
        try:
            async for chunk in request.stream():
                await run_in_threadpool(upload.write, chunk)
            await run_in_threadpool(svc.payloads.store, round, rank, upload)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        except LookupError as error:
            raise HTTPException(409, str(error)) from None
        finally:
            await run_in_threadpool(upload.discard)
        return p.Ack()

    return app
