"""Authenticate before reading: btauth/1 checked from a request's headers alone, so an unauthenticated
request costs a server O(1) memory whatever body it announces.

btauth/1 signs the sha256 of the body, so :func:`bittensor.http_auth.verify` needs the whole body
before it can say whether the sender is who it claims — a server that reads first can be made to
buffer a body of its largest route's size per connection by anyone. Our clients
(:class:`~template.net.auth.BtAuth`) also send the body's digest in a ``Content-Digest`` header
(RFC 9530, ``sha-256=:<base64>:``). The signature covers that same hash, so :func:`verify_digest`
checks the signature, the receiver, freshness and replay from the headers; :class:`SignedGate` does it
for every signed route, and the registration check after it, before the application reads a byte.
The body is then hashed as it streams, and a body that is not the signed one is refused (400) when it
ends. A plain btauth/1 request (a body but no digest, from a client that is not ours) is read first as
the protocol requires, but only when it announces at most ``small_body_bytes``; a larger one without a
digest is refused (401) unread.

The signed payload is btauth/1's normative one (:func:`bittensor.http_auth.build_payload`, spelled
here with the hash instead of the body); ``tests/unit/test_gate.py`` checks that both verify exactly the
same requests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Optional

from bittensor import http_auth
from bittensor.sp_core import verify as sp_core_verify
from bittensor.wallets import CRYPTO_TYPE_NAMES, parse_crypto_type
from fastapi import HTTPException

__all__ = [
    "DIGEST_HEADER",
    "BodyNotSigned",
    "SignedGate",
    "content_digest",
    "parse_digest",
    "scope_target",
    "verify_digest",
]

DIGEST_HEADER = "Content-Digest"
_DIGEST = re.compile(r"^\s*sha-256=:([A-Za-z0-9+/]{43}=):\s*$")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` header value of ``body``: ``sha-256=:<base64 of its sha256>:``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def parse_digest(value: str) -> Optional[str]:
    """The lowercase hex sha256 a ``Content-Digest`` header names, or None if it names none."""
    m = _DIGEST.match(value)
    if not m:
        return None
    try:
        return base64.b64decode(m.group(1), validate=True).hex()
    except binascii.Error:
        return None


def verify_digest(
    headers: Mapping[str, str],
    body_sha256: str,
    *,
    method: str,
    path: str,
    self_hotkey_ss58: str,
    nonce_store: http_auth.NonceStore,
    max_age: float = http_auth.DEFAULT_MAX_AGE,
    allowed_skew: float = http_auth.DEFAULT_ALLOWED_SKEW,
) -> http_auth.Caller:
    """:func:`bittensor.http_auth.verify` for a body known by its sha256 (lowercase hex), with the same
    checks in the same order — header shape, receiver (required), freshness, the signature under the
    declared scheme, replay (stored only once the signature verifies) — and the same
    :class:`bittensor.http_auth.AuthError` subclasses."""
    h = {k.lower(): v for k, v in headers.items()}
    if h.get(http_auth.HEADER_VERSION.lower()) != http_auth.VERSION:
        raise http_auth.MalformedAuth(
            f"missing or unsupported {http_auth.HEADER_VERSION} (expected {http_auth.VERSION!r})"
        )
    sender = h.get(http_auth.HEADER_HOTKEY.lower())
    if not sender:
        raise http_auth.MalformedAuth(f"missing {http_auth.HEADER_HOTKEY}")
    raw_nonce = h.get(http_auth.HEADER_NONCE.lower())
    if raw_nonce is None:
        raise http_auth.MalformedAuth(f"missing {http_auth.HEADER_NONCE}")
    try:
        nonce = int(raw_nonce)
    except ValueError:
        raise http_auth.MalformedAuth(f"{http_auth.HEADER_NONCE} is not a decimal integer") from None
    try:
        crypto_type = parse_crypto_type(h.get(http_auth.HEADER_CRYPTO.lower(), "sr25519"))
    except ValueError:
        raise http_auth.MalformedAuth(f"unsupported {http_auth.HEADER_CRYPTO}") from None
    raw_signature = h.get(http_auth.HEADER_SIGNATURE.lower())
    if raw_signature is None:
        raise http_auth.MalformedAuth(f"missing {http_auth.HEADER_SIGNATURE}")
    try:
        signature = bytes.fromhex(raw_signature.removeprefix("0x"))
    except ValueError:
        raise http_auth.MalformedAuth(f"{http_auth.HEADER_SIGNATURE} is not hex") from None
    receiver = h.get(http_auth.HEADER_RECEIVER.lower())
    if receiver is None:
        raise http_auth.WrongReceiver(
            f"missing {http_auth.HEADER_RECEIVER}: this server requires receiver-bound requests"
        )
    if receiver != self_hotkey_ss58:
        raise http_auth.WrongReceiver("request was signed for a different receiving hotkey")
    now = time.time_ns()
    if now - nonce > max_age * 1e9:
        raise http_auth.StaleRequest(f"nonce is older than the {max_age:g}s freshness window")
    if nonce - now > allowed_skew * 1e9:
        raise http_auth.StaleRequest(f"nonce is more than {allowed_skew:g}s in the future")
    payload = "\n".join(
        (
            http_auth.PROTOCOL,
            CRYPTO_TYPE_NAMES[crypto_type],
            method.upper(),
            path,
            body_sha256,
            str(nonce),
            sender,
            receiver,
        )
    ).encode()
    try:
        valid = sp_core_verify(payload, signature, sender, crypto_type)
    except ValueError:
        raise http_auth.MalformedAuth("invalid hotkey address or signature encoding") from None
    if not valid:
        raise http_auth.BadSignature("signature does not verify against the claimed hotkey")
    if not nonce_store.check_and_store(sender, nonce):
        raise http_auth.ReplayedRequest("this nonce was already accepted from this hotkey")
    return http_auth.Caller(hotkey_ss58=sender, nonce_ns=nonce, crypto_type=crypto_type)


class BodyNotSigned(HTTPException):
    """Raised from ``receive`` when a streamed body ends and is not the one its digest named."""

    def __init__(self):
        super().__init__(
            status_code=400, detail="the request body is not the one its Content-Digest and signature name"
        )


class SignedGate:
    """ASGI middleware: every request to a path ``public(method, path)`` does not name is authenticated
    (and authorized by ``admit``) from its headers before the application sees it.

    ``verify(headers, body_sha256, method, target)`` authenticates (raises
    :class:`bittensor.http_auth.AuthError`; the caller's :class:`~template.net.auth.Authenticator`
    supplies it with its nonce store); ``admit(caller)`` is awaited next and returns what the
    application gets as ``request.state.caller`` (either raises ``HTTPException`` for 403/503). Refusals are
    JSON ``{"detail": ...}`` with their status, sent before a body byte is read; the connection is closed
    after a refusal of a request that announced a body, so the unread body is never drained.
    """

    def __init__(
        self,
        app,
        *,
        verify: Callable[[Mapping[str, str], str, str, str], http_auth.Caller],
        admit: Callable,
        public: Callable[[str, str], bool],
        small_body_bytes: int = 64 * 1024,
    ):
        self.app, self.verify, self.admit, self.public = app, verify, admit, public
        self.small_body_bytes = small_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        lowered = {k.lower(): v for k, v in headers.items()}
        length = lowered.get("content-length")
        has_body = "transfer-encoding" in lowered or (length is not None and length.strip() not in ("", "0"))
        digest = lowered.get(DIGEST_HEADER.lower())
        if digest is not None:
            sha = parse_digest(digest)
            if sha is None:
                await _refuse(send, 401, f"{DIGEST_HEADER} must be sha-256=:<base64>:", has_body)
                return
        elif has_body:
            if not (length is not None and length.strip().isdigit() and int(length) <= self.small_body_bytes):
                await _refuse(
                    send, 401, f"a signed request with a body over {self.small_body_bytes} bytes needs a "
                    f"{DIGEST_HEADER} header", has_body,
                )  # fmt: skip
                return
            body, receive = await _buffered(receive, int(length))
            sha = hashlib.sha256(body).hexdigest()
        else:
            sha = _EMPTY_SHA256
        try:
            caller = self.verify(headers, sha, scope["method"], scope_target(scope))
            authed = await self.admit(caller)
        except http_auth.AuthError as error:
            await _refuse(send, 401, str(error), has_body, {"WWW-Authenticate": http_auth.PROTOCOL})
            return
        except HTTPException as error:
            await _refuse(send, error.status_code, str(error.detail), has_body, error.headers)
            return
        scope.setdefault("state", {})["caller"] = authed
        hasher = hashlib.sha256()

        async def hashed_receive():
            message = await receive()
            if message["type"] == "http.request":
                hasher.update(message.get("body", b""))
                if not message.get("more_body", False) and hasher.hexdigest() != sha:
                    raise BodyNotSigned()
            return message

        await self.app(scope, hashed_receive, send)


async def _buffered(receive, limit: int):
    """Read a body of at most ``limit`` bytes; returns it and a ``receive`` that hands it on."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > limit:
            raise HTTPException(status_code=400, detail="the body is longer than its Content-Length")
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def scope_target(scope) -> str:
    """The request target exactly as the client sent it: raw path plus ``?query`` when non-empty
    (decoded paths would break signatures on any percent-encoded character)."""
    raw = scope.get("raw_path") or scope.get("path", "/").encode("utf-8")
    target = raw.decode("utf-8", "replace")
    query = scope.get("query_string") or b""
    return target + ("?" + query.decode("utf-8", "replace") if query else "")


async def _refuse(send, status: int, detail: str, close: bool, headers: Optional[Mapping[str, str]] = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
