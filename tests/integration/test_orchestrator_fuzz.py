"""Schema-driven fuzz of every orchestrator endpoint (schemathesis 4.x + Hypothesis).

The live orchestrator's ``/openapi.json`` drives generation, for every operation:

1. schemathesis' *coverage* cases: deterministic boundary and invalid values
   for each path/query parameter and body field, missing and unknown fields,
   and unexpected HTTP methods;
2. *fuzzing*: ``MAX_EXAMPLES`` Hypothesis examples per operation in each of the
   positive (schema-valid) and negative (schema-violating) modes.

Each request goes out three times, concurrently: unsigned, btauth/1-signed by
a registered miner, and signed by the subnet's validator (it holds a permit, so
``GET /v1/rounds`` reaches its handler too). Signing happens in a ``requests``
auth hook on the prepared request: the raw path+query and the exact body bytes
that go on the wire, with a fresh nonce each time.

Properties checked on every response:

* never a 5xx;
* a body that is, or is documented as, JSON parses as JSON; a 2xx answer
  conforms to its response schema; any other JSON answer carries ``detail``;
* an unsigned request to a protected endpoint never succeeds;
* signing works: for each operation some signed request gets past auth.

To reach deeper into the handlers, a fuzzed case sometimes has values swapped
for live ones (a real shard/state/checkpoint hash in the path, the current
generation and round in a body) or for integers that stress storage (2**63,
-2**63-1, 10**30 …); ``PUT /v1/checkpoint/{sha256}`` (whose raw body the schema
does not describe) gets random bytes, sometimes matching the hash in its path.
A keep-alive thread keeps the miner's and validator's slots from timing out.

Hypothesis runs derandomized, so a run is reproducible; set
``TENSORSWARM_FUZZ_SEED=<int>`` to explore other inputs and
``TENSORSWARM_FUZZ_EXAMPLES=<n>`` for more examples. Failures are collected for
all operations (Hypothesis shrinks each) and reported with the exact method,
URL, body and signer.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from bittensor import http_auth
from bittensor.signing import resolve_signer
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis", minversion="4.0")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from tests.conftest import run  # noqa: E402

pytestmark = pytest.mark.timeout(300)

MAX_EXAMPLES = int(os.environ.get("TENSORSWARM_FUZZ_EXAMPLES", "25"))  # per operation and mode
SEED = os.environ.get("TENSORSWARM_FUZZ_SEED")
PUBLIC = {("GET", "/v1/status"), ("GET", "/v1/history")}
# Every operation the orchestrator exposes today; new ones are fuzzed automatically.
EXPECTED = {
    ("GET", "/v1/status"),
    ("GET", "/v1/history"),
    ("POST", "/v1/evaluation"),
    ("POST", "/v1/join"),
    ("POST", "/v1/heartbeat"),
    ("POST", "/v1/leave"),
    ("GET", "/v1/assignment"),
    ("POST", "/v1/round"),
    ("GET", "/v1/run"),
    ("GET", "/v1/data/{sha256}"),
    ("PUT", "/v1/checkpoint/{sha256}"),
    ("GET", "/v1/checkpoint/{sha256}"),
    ("GET", "/v1/checkpoint/latest"),
    ("GET", "/v1/checkpoints"),
    ("GET", "/v1/rounds"),
}
SEED_STATE = b"fuzz seed state"  # agreed as round 0's result before the fuzz starts
# Integers that overflow int32/int64/float precision: SQLite, numpy, JSON round-trips.
STRESS_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]


class SignedAuth(requests.auth.AuthBase):
    """btauth/1 for ``requests``: signs the prepared request as it goes on the wire."""

    def __init__(self, wallet, receiver_ss58: str):
        self.signer = resolve_signer(wallet, role="hotkey")
        self.receiver_ss58 = receiver_ss58

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):  # http.client sends str bodies as latin-1
            body = body.encode("latin-1")
        request.headers.update(
            http_auth.sign(
                self.signer, method=request.method, path=request.path_url, body=body, receiver_ss58=self.receiver_ss58
            )
        )
        return request


def _documents_json(operation, status: int) -> bool:
    responses = operation.definition.raw.get("responses", {})
    for key in (str(status), f"{str(status)[0]}XX", "default"):
        if key in responses:
            return any("json" in media for media in responses[key].get("content", {}))
    return False


def _describe(response: requests.Response, signer: str) -> str:
    request = response.request
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode("latin-1", "replace")
    return (
        f"{request.method} {request.url} as {signer}: body {body[:300]!r}"
        f"{'…' if len(body) > 300 else ''} -> {response.status_code} {response.content[:300]!r}"
    )


def _leaves(error: BaseException) -> list[BaseException]:
    if hasattr(error, "exceptions"):  # Hypothesis raises a group for several distinct failures
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def _wait_for_permit(orchestrator, validator) -> None:
    subnet = orchestrator.chain.subnet

    async def epoch():
        async with orchestrator.chain.client() as client:
            await client.wait_for_epoch(subnet.netuid, timeout=30)

    run(epoch())
    with orchestrator.client(validator) as http:
        deadline = time.time() + 20
        while http.get("/v1/rounds").status_code != 200:
            assert time.time() < deadline, "validator never got a permit"
            time.sleep(0.3)


def _seed_a_checkpoint(orchestrator, miner) -> None:
    """Join, agree round 0 and upload its state, so checkpoint reads have something to find."""
    state = SEED_STATE
    sha = hashlib.sha256(state).hexdigest()
    with orchestrator.client(miner) as http:
        gen = http.post("/v1/join", json={}).json()["assignment"]["generation"]
        report = http.post("/v1/round", json={"generation": gen, "round": 0, "state": sha, "loss": 1.0})
        assert report.status_code == 200, report.text
        assert http.put(f"/v1/checkpoint/{sha}", content=state).status_code == 200


def _keep_alive(orchestrator, wallets, stop: threading.Event) -> None:
    """Heartbeat every second (joining when the slot is gone), so the fixture's
    5 s heartbeat timeout does not drop the fuzzing hotkeys mid-run."""
    clients = [orchestrator.client(w) for w in wallets]
    try:
        while not stop.wait(1.0):
            for http in clients:
                try:
                    if http.post("/v1/heartbeat", json={}).status_code == 404:
                        http.post("/v1/join", json={})
                except Exception:  # the fuzz reports server problems; this only keeps slots
                    pass
    finally:
        for http in clients:
            http.close()


def _order(operation) -> tuple:
    # Leaving (and the rejoin cooldowns it escalates) goes last, so the miner
    # stays a member while the member-only operations are fuzzed.
    return (operation.path == "/v1/leave", operation.path, operation.method)


def test_fuzz_every_operation_signed_and_unsigned(orchestrator):
    subnet = orchestrator.chain.subnet
    miner, validator = subnet.miners[0], subnet.validators[0]
    svc = orchestrator.service
    _wait_for_permit(orchestrator, validator)
    _seed_a_checkpoint(orchestrator, miner)

    schema = schemathesis.openapi.from_url(orchestrator.url + "/openapi.json", config=schemathesis.Config())
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=_order)
    found = {(op.method.upper(), op.path) for op in operations}
    assert found >= EXPECTED, f"operations missing from the schema: {EXPECTED - found}"

    signers = {
        "miner": SignedAuth(miner, orchestrator.hotkey),
        "validator": SignedAuth(validator, orchestrator.hotkey),
        "unsigned": None,
    }
    sessions = {name: requests.Session() for name in signers}  # one per signer, one request at a time
    pool = ThreadPoolExecutor(len(signers))
    statuses: dict[str, Counter] = defaultdict(Counter)
    failures: list[str] = []

    def known_hashes() -> list[str]:
        shas = [s.sha256 for s in svc.manifest.shards]
        shas += [c.sha256 for c in svc.checkpoints()]
        if svc.coordinator.state:
            shas.append(svc.coordinator.state)
        return shas

    def mutate(case, data) -> bytes | None:
        """Sometimes swap generated values for live or stressful ones; returns a raw body to send."""
        if case.path_parameters and "sha256" in case.path_parameters and data.draw(st.booleans(), "known hash"):
            case.path_parameters["sha256"] = data.draw(st.sampled_from(known_hashes()), "hash")
        if isinstance(case.body, dict) and data.draw(st.booleans(), "live ids"):
            gen = svc.coordinator.generation
            for key, value in {"generation": gen.id if gen else 0, "round": svc.coordinator.round}.items():
                if key in case.body:
                    case.body[key] = value
        for container in (case.query, case.body):
            if isinstance(container, dict) and data.draw(st.booleans(), "stress ints"):
                for key, value in container.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        container[key] = data.draw(st.sampled_from(STRESS_INTS), f"stress {key}")
        wait = case.query.get("wait") if isinstance(case.query, dict) else None
        if isinstance(wait, (int, float)) and 0.05 < wait <= 5:
            # A valid long poll would hold the answer up to 5 s for nothing here (holding is tested in
            # test_contribution_endpoints.py); what the server accepts is what the fuzz explores.
            case.query["wait"] = 0.05
        if case.method.upper() == "PUT" and case.path.startswith("/v1/checkpoint/"):
            blob = data.draw(st.binary(max_size=2048), "checkpoint body")
            if data.draw(st.booleans(), "hash matches body"):
                if data.draw(st.booleans(), "an agreed state"):
                    blob = SEED_STATE  # a member uploading it gets 200
                case.path_parameters["sha256"] = hashlib.sha256(blob).hexdigest()
            return blob
        return None

    def send(signer: str, kwargs: dict) -> requests.Response:
        kwargs = {
            **kwargs,
            "headers": dict(kwargs["headers"]),
            "auth": signers[signer],
            "timeout": 30,
            "allow_redirects": False,
        }
        try:
            return sessions[signer].request(**kwargs)
        except requests.ConnectionError:
            # uvicorn drops a keep-alive connection (no "Connection: close") after an unhandled
            # exception, and the next request on it fails: resend once on a fresh connection
            # (signed anew). The 5xx that caused the drop is reported by itself.
            return sessions[signer].request(**kwargs)

    def check(operation, case, response: requests.Response, signer: str) -> None:
        # Keyed by the method sent: coverage cases also try methods the operation does not have.
        statuses[f"{case.method.upper()} {operation.path}"][f"{signer}:{response.status_code}"] += 1
        what = _describe(response, signer)
        assert response.status_code < 500, f"server error: {what}"
        content_type = response.headers.get("content-type", "")
        if "json" in content_type or _documents_json(operation, response.status_code):
            assert "json" in content_type, f"documented as JSON, sent {content_type!r}: {what}"
            try:
                payload = json.loads(response.content)
            except ValueError:
                raise AssertionError(f"invalid JSON: {what}") from None
            if 200 <= response.status_code < 300 and case.method.upper() == operation.method.upper():
                try:
                    case.validate_response(response, checks=[response_schema_conformance])
                except Exception as error:  # schemathesis raises a FailureGroup
                    raise AssertionError(f"response does not match the schema: {what}\n{error}") from None
            elif response.status_code >= 400:
                # One error shape (ours, FastAPI's, the body-size middleware's). Not checked against
                # the schema: PUT /v1/checkpoint/{sha256}'s own 422 carries a string detail.
                assert isinstance(payload, dict) and "detail" in payload, f"error without detail: {what}"
        if signer == "unsigned" and (operation.method.upper(), operation.path) not in PUBLIC:
            assert not 200 <= response.status_code < 300, f"unsigned request succeeded: {what}"

    def send_all(operation, case, body: bytes | None = None) -> None:
        kwargs = case.as_transport_kwargs(base_url=orchestrator.url)
        if body is not None:
            kwargs.pop("json", None)
            kwargs["data"] = body
            kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/octet-stream"}
        futures = {signer: pool.submit(send, signer, kwargs) for signer in signers}
        for signer, future in futures.items():
            check(operation, case, future.result(), signer)

    def fuzz(operation, mode) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=SEED is None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def one(case, data):
            send_all(operation, case, mutate(case, data))

        (seed(int(SEED))(one) if SEED is not None else one)()

    stop = threading.Event()
    keeper = threading.Thread(target=_keep_alive, args=(orchestrator, [miner, validator], stop), daemon=True)
    keeper.start()
    started = time.monotonic()
    try:
        for operation in operations:
            label = f"{operation.method.upper()} {operation.path}"
            config = schema.config.generation_for(operation=operation)
            for case in schema.iter_coverage_cases(
                operation, generation_modes=list(GenerationMode), generation_config=config
            ):
                try:
                    send_all(operation, case)
                except AssertionError as error:
                    failures.append(f"[coverage] {label}: {error}")
            modes = [GenerationMode.POSITIVE]
            if operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                try:
                    fuzz(operation, mode)
                except Exception as error:  # an AssertionError, or a group of distinct ones
                    failures += [f"[fuzz {mode.value}] {label}: {leaf}" for leaf in _leaves(error)]
    finally:
        stop.set()
        keeper.join(10)
        pool.shutdown()
        for session in sessions.values():
            session.close()

    summary = "\n".join(f"  {op}: {dict(sorted(c.items()))}" for op, c in sorted(statuses.items()))
    print(
        f"\nfuzzed {sum(sum(c.values()) for c in statuses.values())} requests in "
        f"{time.monotonic() - started:.1f}s; signer:status -> count, per operation\n{summary}"
    )
    assert not failures, f"{len(failures)} failure(s):\n\n" + "\n\n".join(failures)
    # Signing works: every protected operation was reached past auth by some signed request.
    for operation in operations:
        key = f"{operation.method.upper()} {operation.path}"
        past_auth = [s for s in statuses[key] if not s.startswith("unsigned") and s.split(":")[1] not in ("401", "403")]
        assert past_auth, f"{key}: no signed request got past auth: {dict(statuses[key])}"
