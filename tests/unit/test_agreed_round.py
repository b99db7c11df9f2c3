"""One view for every honest rank, in process: diloco ranks as threads over ``InMemoryExchange`` with an
in-memory agreement that applies the orchestrator's pure decision (``tests/adversaries/splits.py``).

A sender that sends some ranks a corrupted block splits the ranks' views without an agreement (shown
first); with one, every rank aggregates the same included set and ends bit-identical, the lacking ranks
fetch the payload point to point from a holder, and nobody blames anyone. Then a lying
reporter, an equivocating sender, and the validator's transition check
(``template.validator.checks.transition``) recomputing θ_{r+1} from θ_r and the included contributions.
Tiny preset, H = 2, batch 4, seq_len 32, int8: the mechanics, not the learning.
"""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.agreement import AgreedSet, repair_plan
from template.engine.exchange import InMemoryExchange
from template.engine.outer_round import NOT_AGREED, next_state
from template.engine.trainer import Trainer
from template.validator.checks.transition import transition_check
from template.wire.orchestrator import RoundRecord
from template.wire.signing import contribution_message
from tests.adversaries.splits import HubAgreement, LyingAgreement, SplitView

CFG = TrainingConfig(preset="tiny", inner_steps=2, batch_size=4, seq_len=32)
CONTEXT = "run-agree/0"
N = 5
TEXT = b"".join(b"Line %d of a small text that a small model learns, byte by byte.\n" % (i % 7) for i in range(64))


def _key(rank: int):
    from bittensor.sp_core import Keypair

    return Keypair.create_from_uri(f"//tensorswarm-agree-{rank}")


KEYS = [_key(r) for r in range(N)]
PEERS = [k.ss58_address for k in KEYS]


def _batch(rank: int, round_: int):
    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(7919 * round_ + 104_729 * rank + step)
        starts = torch.randint(0, len(TEXT) - 33, (4,), generator=g).tolist()
        return torch.tensor([list(TEXT[s : s + 33]) for s in starts], dtype=torch.long)

    return batch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _swarm(wrap=None, agree=True, rounds=1, lie=None):
    """Run ``rounds`` rounds on N thread-ranks; ``wrap(rank, exchange)`` wraps a rank's exchange,
    ``lie = (rank, senders)`` makes that rank's report hide those senders. Returns per round the
    results, the start state's bytes and the decision (None without an agreement)."""
    hub = InMemoryExchange(N, timeout_s=60)
    agreement = HubAgreement(N, CONTEXT, PEERS, timeout_s=60) if agree else None
    trainers = []
    for r in range(N):
        ex = hub.bind(r)
        t = Trainer(
            CFG,
            rank=r,
            world_size=N,
            peers=PEERS,
            sign=KEYS[r].sign,
            context=CONTEXT,
            exchange=wrap(r, ex) if wrap else ex,
        )
        if agreement is not None:
            a = agreement.bind(r)
            t.agreement = LyingAgreement(a, lie[1]) if lie and lie[0] == r else a
        t.load(None)
        trainers.append(t)
    out = []
    for round_ in range(rounds):
        start = trainers[0].state_bytes()
        results, errors = [None] * N, []

        def work(i, round_=round_, results=results, errors=errors):
            try:
                results[i] = trainers[i].run_round(round_, _batch(i, round_))
            except BaseException as e:  # free the others, surface it below
                errors.append(e)
                hub.barrier.abort()
                if agreement is not None:
                    agreement.barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(N)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors, errors
        out.append((results, start, agreement.outcomes.get(round_) if agreement else None))
    return out, trainers


def _split(senders, victims, forge=None):
    return lambda r, ex: SplitView(ex, r, senders=senders, victims=victims, forge=forge)


def test_a_splitting_sender_splits_views_without_an_agreement():
    # Sender 0 sends ranks 3 and 4 its block with a byte flipped: they drop it, ranks 1 and 2 keep it.
    [(results, _, _)], _ = _swarm(_split([0], [3, 4]), agree=False)
    assert results[3].dropped == {0: "bad signature"} and results[0].dropped == {}
    assert len({x.state_hash for x in results}) == 2  # 0, 1, 2 agree; 3, 4 computed another θ


def test_the_agreement_gives_every_rank_the_included_set():
    [(results, start, outcome)], _ = _swarm(_split([0], [3, 4]))
    assert len({x.state_hash for x in results}) == 1
    assert all(x.dropped == {} for x in results)  # nobody blames sender 0: ranks 3 and 4 fetched it
    sent = {x.contribution_sha256 for x in results}
    assert all(x.received == [y.contribution_sha256 for y in results] for x in results), sent
    assert outcome.lacking[0] == (3, 4) and outcome.equivocators == ()
    # Repairs cost the lacking ranks' requests and one payload from the lowest holder each.
    assert results[0].bytes_sent > results[1].bytes_sent


def test_a_sender_that_corrupts_for_the_majority_is_excluded_for_everyone():
    # Sender 0 corrupts its block for ranks 2, 3, 4: only ranks 0 and 1 hold it (2 of 5).
    [(results, _, outcome)], _ = _swarm(_split([0], [2, 3, 4]))
    assert len({x.state_hash for x in results}) == 1
    assert all(list(x.dropped) == [0] and x.dropped[0].startswith(NOT_AGREED) for x in results)
    assert outcome.included[0] is None and "2 of 5" in outcome.reasons[0]


def test_a_lying_reporter_changes_nothing():
    [(results, _, outcome)], _ = _swarm(lie=(3, range(N)))
    assert len({x.state_hash for x in results}) == 1
    assert all(x.dropped == {} for x in results)
    assert outcome.included == tuple(x.contribution_sha256 for x in results)


def test_an_equivocating_sender_is_excluded_everywhere():
    # Sender 1 signs a second payload and sends it to rank 4.
    def second(sender, entry):
        other = entry.payload[:-1] + bytes([entry.payload[-1] ^ 1])
        sig = KEYS[sender].sign(contribution_message(CONTEXT, 0, sender, hashlib.sha256(other).hexdigest()))
        return entry._replace(payload=other, signature=bytes(sig))

    [(results, _, outcome)], _ = _swarm(_split([1], [4], forge=second))
    assert len({x.state_hash for x in results}) == 1
    assert outcome.equivocators == (1,)
    assert all(list(x.dropped) == [1] and "equivocation" in x.dropped[1] for x in results)


def _record(round_: int, results, outcome) -> RoundRecord:
    return RoundRecord(
        round=round_,
        generation=0,
        members=PEERS,
        state=results[0].state_hash,
        loss=None,
        completed_at=0.0,
        included=list(outcome.included),
    )


def test_the_transition_check_recomputes_the_agreed_state():
    rounds, trainers = _swarm(_split([0], [3, 4]), rounds=2)
    for round_, (results, start, outcome) in enumerate(rounds):
        record = _record(round_, results, outcome)
        served = {r: x.contribution for r, x in enumerate(results)}
        start_bytes = None if round_ == 0 else start
        assert transition_check(CFG, start_bytes, record, served).verified
        # Bytes that differ from the agreed hash are not used: the round is unverifiable, not wrong.
        tampered = {**served, 1: served[1][:-1] + bytes([served[1][-1] ^ 1])}
        assert transition_check(CFG, start_bytes, record, tampered).missing == [1]
        # A record whose state is not what the agreed contributions produce is caught.
        lie = record.model_copy(update={"state": "0" * 64})
        check = transition_check(CFG, start_bytes, lie, served)
        assert not check.verified and "recomputed" in check.problem
        # Leaving a contribution out of the included set gives another state.
        fewer = list(outcome.included)
        fewer[4] = None
        assert checkpoint.state_hash(next_state(CFG, start_bytes, served, fewer)) != record.state
    with pytest.raises(ValueError, match="round"):
        transition_check(CFG, None, record, served)  # round 1's record from the seed state
    assert trainers[0].state_bytes() == next_state(CFG, rounds[1][1], served, list(rounds[1][2].included))


def test_a_false_agreed_transition_fails_every_audit_of_the_round():
    """The validator loop's use of the check (template.validator.audit.check_transition): with every
    included contribution in hand a true transition leaves the audits as they are, a false one fails all
    of them with the reason; with one included contribution not sampled, or served with other bytes, the
    check does not run (nobody is blamed for what the validator lacks)."""
    from template.validator.audit import Audit, Evidence, check_transition

    rounds, _ = _swarm(_split([0], [3, 4]), rounds=1)
    results, _, outcome = rounds[0]
    record = _record(0, results, outcome)
    evidence = [Evidence(PEERS[r], r, None, x.contribution) for r, x in enumerate(results)]
    audits = [Audit(hotkey=PEERS[r], round=0, rank=r, served=True, reasons=()) for r in range(N)]
    same, check = check_transition(CFG, None, record, evidence, audits)
    assert check.verified and same == audits
    lie = record.model_copy(update={"state": "0" * 64})
    failed, check = check_transition(CFG, None, lie, evidence, audits)
    assert not check.verified and check.problem
    assert all(a.transition_ok is False and not a.passed and "agreed contributions" in a.reasons[-1] for a in failed)
    for partial in (evidence[1:], [*evidence[:1], Evidence(PEERS[1], 1, None, b"other"), *evidence[2:]]):
        kept, check = check_transition(CFG, None, lie, partial, audits)
        assert check is None and kept == audits


def test_repair_plan_asks_holders_lowest_first():
    agreed = AgreedSet(["a" * 64, None, "b" * 64], [[1, 2], [], [0]], [None, "x", None])
    plan = repair_plan(agreed)
    assert [(s.sender, s.lacker, s.holders) for s in plan] == [(0, 1, (0,)), (0, 2, (0,)), (2, 0, (1, 2))]
