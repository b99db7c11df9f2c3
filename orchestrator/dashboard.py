"""The owner's view of the run: the page at ``/`` (``dashboard.html``, with uPlot vendored under
``static/``: no CDN, it works offline), the history it plots (``GET /v1/history``, public) and the
validators' evaluations that feed it (``POST /v1/evaluation``, validators with a permit)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse

from template import wire as p
from template.net.auth import AuthedCaller
from template.wire.history import MAX_HISTORY_POINTS

HERE = Path(__file__).parent
PAGE = (HERE / "dashboard.html").read_text()
# name -> (bytes, media type): the only files served, read once
STATIC = {
    name: ((HERE / "static" / name).read_bytes(), media)
    for name, media in (("uPlot.iife.min.js", "text/javascript"), ("uPlot.min.css", "text/css"))
}
PUBLIC_PATHS = frozenset({"/", "/v1/history", *(f"/static/{name}" for name in STATIC)})


def add_routes(app: FastAPI, svc, validator, throttle) -> None:
    """The dashboard's routes on the orchestrator's app (``validator``: the permit dependency;
    ``throttle(kind, hotkey)``: the app's per-hotkey rate limit)."""
    c = svc.coordinator
    training = svc.run.training
    tokens_per_contribution = training.inner_steps * training.batch_size * training.seq_len

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> str:
        return PAGE

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        body, media = STATIC[name]
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/history", response_model=p.History)
    async def history(
        request: Request,
        since: int = Query(0, ge=0, le=2**40),
        limit: int = Query(200, ge=1, le=MAX_HISTORY_POINTS),
    ) -> p.History:
        throttle("history request", request.client.host if request.client else "?")  # no hotkey: by address
        with svc.lock:
            return c.history(since, limit, tokens_per_contribution)

    @app.post("/v1/evaluation", response_model=p.Ack)
    async def evaluation(ev: p.Evaluation, caller: AuthedCaller = validator) -> p.Ack:
        throttle("report", caller.hotkey)
        with svc.lock:
            refused = c.record_evaluation(caller.hotkey, ev, time.time())
            if not refused:
                svc.tracker.log(ev.round, {f"heldout_loss/{caller.hotkey[:8]}": ev.heldout_loss})
        if refused:
            raise HTTPException(409, refused)
        return p.Ack()
