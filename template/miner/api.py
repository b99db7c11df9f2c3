"""The meta-miner's HTTP API: its miner's signed receipts and compressed
contributions, for validators (btauth/1, validator permit required), and a
public progress view."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Response
from fastapi import Path as PathParam

from template import wire as p
from template.miner.receipts import ReceiptStore
from template.net.auth import AuthedCaller, Authenticator
from template.net.http import BodySizeLimitMiddleware, RateLimit, install_error_handlers
from template.wire.miner import MinerStatus

# Requests one validator hotkey may make for receipts and contributions: an audit reads a miner's receipt and
# contribution, and its receipt as an attester, a few times per round; a permit holder looping them would
# take the disk and the event loop from every other validator (who then finds nothing served and pays 0).
VALIDATOR_BURST, VALIDATOR_PER_S = 30, 5.0


def create_miner_app(
    auth: Authenticator, receipts: ReceiptStore, status: Callable[[], MinerStatus], lifespan=None
) -> FastAPI:
    app = FastAPI(title="tensorswarm meta-miner", version="1", lifespan=lifespan)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=16 * 1024)
    install_error_handlers(app)
    limit = RateLimit(VALIDATOR_BURST, VALIDATOR_PER_S)

    async def validator_within_rate(caller: AuthedCaller = Depends(auth.validator)) -> AuthedCaller:
        wait = limit.wait(caller.hotkey, time.monotonic())
        if wait:
            raise HTTPException(
                429, f"more than {VALIDATOR_PER_S:g} requests a second", headers={"Retry-After": str(math.ceil(wait))}
            )
        return caller

    validator = Depends(validator_within_rate)

    @app.get("/v1/status", response_model=MinerStatus)
    async def get_status() -> MinerStatus:
        return status()

    @app.get("/v1/receipts", response_model=list[p.SignedReceipt])
    def get_receipts(
        round: Optional[int] = Query(None, ge=0, le=2**40),
        since: int = Query(0, ge=0, le=2**40),
        limit: int = Query(50, ge=1, le=500),
        _caller: AuthedCaller = validator,
    ) -> list[p.SignedReceipt]:
        rounds = [round] if round is not None else [r for r in receipts.rounds() if r >= since][:limit]
        return [rec for r in rounds if (rec := receipts.get(r)) is not None]

    @app.get("/v1/contribution/{round}", response_class=Response)
    def get_contribution(round: int = PathParam(ge=0, le=2**40), _caller: AuthedCaller = validator) -> Response:
        data = receipts.contribution(round)
        receipt = receipts.get(round)
        if data is None or receipt is None:
            raise HTTPException(404, f"no contribution for round {round}")
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"X-Contribution-Sha256": receipt.receipt.contribution_sha256 or ""},
        )

    return app
