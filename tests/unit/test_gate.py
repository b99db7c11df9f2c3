"""template.net.gate: header-first btauth/1 verification accepts and refuses exactly what the SDK's
``bt.http_auth.verify`` does, given the body's hash instead of the body."""

from __future__ import annotations

import hashlib
import time

import bittensor as bt
import pytest
from bittensor.sp_core import Keypair

from template.net.gate import content_digest, parse_digest, verify_digest

SENDER = Keypair.create_from_uri("//tensorswarm-gate-sender")
OTHER = Keypair.create_from_uri("//tensorswarm-gate-other")
SERVER = Keypair.create_from_uri("//tensorswarm-gate-server").ss58_address


def _both(headers: dict, body: bytes, *, path="/v1/x?y=1", method="POST", sha=None):
    """(SDK's outcome, ours) for one request: the Caller's hotkey or the error class."""
    outcomes = []
    for verify in ("sdk", "gate"):
        store = bt.http_auth.InMemoryNonceStore()
        try:
            if verify == "sdk":
                caller = bt.http_auth.verify(
                    headers, body, method=method, path=path, self_hotkey_ss58=SERVER, nonce_store=store
                )
            else:
                caller = verify_digest(
                    headers,
                    sha or hashlib.sha256(body).hexdigest(),
                    method=method,
                    path=path,
                    self_hotkey_ss58=SERVER,
                    nonce_store=store,
                )
            outcomes.append(caller.hotkey_ss58)
        except bt.http_auth.AuthError as error:
            outcomes.append(type(error))
    return outcomes


def _sign(body=b'{"a": 1}', *, signer=SENDER, receiver=SERVER, path="/v1/x?y=1", nonce_ns=None):
    return bt.http_auth.sign(signer, method="POST", path=path, body=body, receiver_ss58=receiver, nonce_ns=nonce_ns)


def test_the_gate_verifies_what_the_sdk_verifies():
    body = b'{"a": 1}'
    good = _sign(body)
    assert _both(good, body) == [SENDER.ss58_address] * 2
    cases = {
        "tampered body": (good, b'{"a": 2}'),
        "forged signature": (
            {**good, "X-Bittensor-Signature": _sign(body, signer=OTHER)["X-Bittensor-Signature"]},
            body,
        ),
        "other receiver": (_sign(body, receiver=OTHER.ss58_address), body),
        "no receiver": ({k: v for k, v in good.items() if k != "X-Bittensor-Receiver"}, body),
        "stale": (_sign(body, nonce_ns=time.time_ns() - 60 * 10**9), body),
        "future": (_sign(body, nonce_ns=time.time_ns() + 60 * 10**9), body),
        "other path": (_sign(body, path="/v1/z"), body),
        "no version": ({k: v for k, v in good.items() if k != "X-Bittensor-Version"}, body),
        "bad nonce": ({**good, "X-Bittensor-Nonce": "soon"}, body),
        "bad hex": ({**good, "X-Bittensor-Signature": "0xzz"}, body),
        "bad scheme": ({**good, "X-Bittensor-Crypto": "rot13"}, body),
        "bad hotkey": ({**good, "X-Bittensor-Hotkey": "5notanaddress"}, body),
    }
    for name, (headers, sent) in cases.items():
        sdk, gate = _both(headers, sent)
        assert sdk == gate and isinstance(sdk, type) and issubclass(sdk, bt.http_auth.AuthError), (name, sdk, gate)


def test_a_replay_is_refused_after_the_signature_verifies():
    body = b"x"
    headers, store = _sign(body), bt.http_auth.InMemoryNonceStore()
    sha = hashlib.sha256(body).hexdigest()
    kw = dict(method="POST", path="/v1/x?y=1", self_hotkey_ss58=SERVER, nonce_store=store)
    assert verify_digest(headers, sha, **kw).hotkey_ss58 == SENDER.ss58_address
    with pytest.raises(bt.http_auth.ReplayedRequest):
        verify_digest(headers, sha, **kw)
    # A forged request never writes the nonce store, so it cannot lock the sender out.
    fresh = _sign(body)
    forged = {**fresh, "X-Bittensor-Signature": _sign(body, signer=OTHER)["X-Bittensor-Signature"]}
    with pytest.raises(bt.http_auth.BadSignature):
        verify_digest(forged, sha, **kw)
    assert verify_digest(fresh, sha, **kw).hotkey_ss58 == SENDER.ss58_address


def test_content_digest_round_trip():
    for body in (b"", b"x", bytes(range(256)) * 100):
        assert parse_digest(content_digest(body)) == hashlib.sha256(body).hexdigest()
    for bad in ("", "sha-256=abc", "sha-512=:AAAA:", "sha-256=:" + "A" * 44 + ":", "md5=:x:"):
        assert parse_digest(bad) is None, bad


def test_rate_limit_allows_a_burst_then_the_rate():
    from template.net.http import RateLimit

    limit = RateLimit(burst=3, per_s=2.0)
    assert [limit.wait("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.wait("a", 0.0) == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert limit.wait("b", 0.0) == 0.0  # keys are independent
    assert limit.wait("a", 0.5) == 0.0 and limit.wait("a", 0.5) > 0
    assert [limit.wait("a", 100.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # full again, never more
    with pytest.raises(ValueError):
        RateLimit(burst=0, per_s=1)
