"""Typed, signed client for a meta-miner's API (:mod:`template.miner.api`), used by validators: the
counterpart of :mod:`template.net.orchestrator_client`. Requests are btauth/1-signed for the miner's
hotkey; answers are parsed into the wire models (``p.SignedReceipt``, ``p.MinerStatus``), contributions
come back as bytes.

A meta-miner is an untrusted peer, so the client reads defensively: every answer body is streamed and
refused past a size cap (receipts :data:`RECEIPTS_MAX_BYTES`, status :data:`STATUS_MAX_BYTES`, a
contribution the caller's ``max_bytes``), before anything is parsed; JSON of any other shape than the
API's is refused. Refusals, transport errors and timeouts (``timeout``: httpx's, per connect/read/write)
all raise :class:`MinerError`; an answer other than 200 (404: the miner has nothing for that round) is
"not served": ``[]`` or ``None``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import httpx

from template import wire as p
from template.net.auth import BtAuth

__all__ = ["RECEIPTS_MAX_BYTES", "STATUS_MAX_BYTES", "MinerClient", "MinerError"]

# One receipt is ~20 bytes per inner-step loss and ~70 per rank of the world (received_sha256): ~3 KiB
# for H = 100 and 16 ranks, and under 1 MiB for any H ≤ 10_000 on ≤ 4096 ranks.
RECEIPTS_MAX_BYTES = 1 << 20
STATUS_MAX_BYTES = 64 << 10


class MinerError(RuntimeError):
    """The meta-miner could not be reached, or answered what its API never does (too large, malformed)."""


def _parse_json(path: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly nested JSON
        raise MinerError(f"{path}: not JSON ({type(error).__name__})") from None


class MinerClient:
    def __init__(self, url: str, wallet, miner_hotkey: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.hotkey = miner_hotkey
        try:
            self.http = httpx.Client(base_url=self.url, auth=BtAuth(wallet, miner_hotkey), timeout=timeout)
        except httpx.InvalidURL as error:  # an axon published on chain is whatever its owner wrote
            raise MinerError(f"bad meta-miner address {url!r}: {error}") from None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> MinerClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _get(self, path: str, max_bytes: int, params: Optional[dict] = None) -> Optional[bytes]:
        """The body of a 200 answer to ``GET path`` (at most ``max_bytes``), or None for any other status."""
        try:
            with self.http.stream("GET", path, params=params) as response:
                if response.status_code != 200:
                    return None
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise MinerError(f"{path}: answer of {declared} bytes exceeds {max_bytes}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:  # a chunked or lying body: stop reading here
                        raise MinerError(f"{path}: answer exceeds {max_bytes} bytes")
                return bytes(body)
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise MinerError(f"{path}: {type(error).__name__}: {error}") from None

    def receipts(
        self, round: Optional[int] = None, since: int = 0, limit: int = 50, *, max_bytes: int = RECEIPTS_MAX_BYTES
    ) -> list[p.SignedReceipt]:
        """The miner's signed receipts: the one of ``round``, or up to ``limit`` from round ``since`` on
        (``max_bytes`` bounds the whole answer: raise it for long listings)."""
        params = {"round": round} if round is not None else {"since": since, "limit": limit}
        body = self._get("/v1/receipts", max_bytes, params)
        if body is None:
            return []
        data = _parse_json("/v1/receipts", body)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise MinerError(f"/v1/receipts: expected a list of receipts, got {type(data).__name__}")
        try:
            return [p.SignedReceipt.model_validate(item) for item in data]
        except ValueError as error:  # pydantic's ValidationError
            raise MinerError(f"/v1/receipts: invalid receipt: {error}") from None

    def receipt(self, round: int) -> Optional[p.SignedReceipt]:
        """The miner's signed receipt for ``round`` (the first one served), or None."""
        found = self.receipts(round=round)
        return found[0] if found else None

    def contribution(self, round: int, max_bytes: int) -> Optional[bytes]:
        """The miner's compressed contribution for ``round`` as served (not checked here: the audit
        compares it with the receipt), or None. ``max_bytes``: the most the caller will read."""
        return self._get(f"/v1/contribution/{round}", max_bytes)

    def status(self) -> Optional[p.MinerStatus]:
        body = self._get("/v1/status", STATUS_MAX_BYTES)
        if body is None:
            return None
        data = _parse_json("/v1/status", body)
        if not isinstance(data, dict):
            raise MinerError(f"/v1/status: expected an object, got {type(data).__name__}")
        try:
            return p.MinerStatus.model_validate(data)
        except ValueError as error:
            raise MinerError(f"/v1/status: invalid status: {error}") from None
