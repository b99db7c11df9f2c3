"""The contribution agreement on a real 5-rank gloo group (processes on 127.0.0.1).

Every rank exchanges over :class:`template.engine.exchange.DirectExchange` — each block sent straight
from its sender to every other rank, as in production — so a test adversary can send some peers other
bytes than the rest. The agreement is :class:`tests.adversaries.splits.StoreAgreement`: reports go
through the group's TCPStore and every rank applies the orchestrator's pure decision, signatures checked
(the orchestrator's HTTP side has its own test, ``test_contribution_endpoints.py``). Repairs go point to
point over gloo (``dist.send``/``dist.recv``).

Three rounds, one attack each: sender 0 sends ranks 3 and 4 a corrupted block; rank 3 reports that it
received nothing; sender 1 equivocates (a second signed payload to rank 4). Every rank must end every
round with the same state (none would exit DIVERGED), and the decision must exclude the equivocator.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.exchange import Entry
from template.engine.outer_round import next_state
from template.engine.screening import screen
from template.engine.trainer import Trainer
from template.wire.signing import contribution_message, verify_signature
from tests.adversaries.splits import LyingAgreement, SplittingSender, StoreAgreement

pytestmark = pytest.mark.timeout(300)

N = 5
CFG = dict(preset="tiny", inner_steps=3, batch_size=4, seq_len=32)
CONTEXT = "run-direct/0"
TEXT = b"".join(b"Round %d: every sender sends its own block, honestly or not.\n" % (i % 9) for i in range(64))
ATTACKS = ["split", "liar", "equivocation"]  # round r's attack
SPLITTER, VICTIMS, LIAR, EQUIVOCATOR = 0, (3, 4), 3, 1


def _key(rank: int):
    from bittensor.sp_core import Keypair

    return Keypair.create_from_uri(f"//tensorswarm-direct-{rank}")


def _batch(rank: int, round_: int):
    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1_000_003 * round_ + 1_009 * rank + step)
        starts = torch.randint(0, len(TEXT) - 33, (4,), generator=g).tolist()
        return torch.tensor([list(TEXT[s : s + 33]) for s in starts], dtype=torch.long)

    return batch


class AttackingSender(SplittingSender):
    """Round 0: sender 0 flips a byte of the block it sends ranks 3 and 4. Round 2: sender 1 sends rank 4
    a second payload it signed instead of its block."""

    round = 0
    me = -1
    victims = frozenset(VICTIMS)

    def outgoing(self, peer, block):
        if self.round == 0 and self.me == SPLITTER:
            return super().outgoing(peer, block)
        if self.round == 2 and self.me == EQUIVOCATOR and peer == 4:
            return _second_payload(self.me, block, self.round, self.max_bytes)
        return block


def _second_payload(sender: int, block: torch.Tensor, round_: int, cap: int) -> torch.Tensor:
    raw = block.numpy().tobytes()
    length = int.from_bytes(raw[:8], "little", signed=True)
    payload = bytearray(raw[80 : 80 + length])
    payload[-1] ^= 1
    sig = bytes(_key(sender).sign(contribution_message(CONTEXT, round_, sender, hashlib.sha256(payload).hexdigest())))
    return torch.frombuffer(bytearray(raw[:16] + sig + bytes(payload).ljust(cap, b"\0")), dtype=torch.uint8)


def _rounds(rank: int, store) -> dict:
    keys = [_key(r) for r in range(N)]
    peers = [k.ss58_address for k in keys]
    cfg = TrainingConfig(**CFG)
    probe = Trainer(cfg, rank=rank, world_size=N, peers=peers, sign=keys[rank].sign, context=CONTEXT)
    exchange = AttackingSender(N, probe.max_contribution_bytes, torch.device("cpu"))
    exchange.me = rank
    trainer = Trainer(
        cfg, rank=rank, world_size=N, peers=peers, sign=keys[rank].sign, context=CONTEXT, exchange=exchange
    )
    agreement = StoreAgreement(dist.PrefixStore("agreement/", store), rank, N, CONTEXT, peers)
    trainer.agreement = LyingAgreement(agreement, range(N), rounds=[1]) if rank == LIAR else agreement
    trainer.load(None)

    # The splitter really splits: a plain exchange of signed probes, screened, before any agreement.
    probe_payload = b"probe %d" % rank
    sig = bytes(keys[rank].sign(contribution_message(CONTEXT, 99, rank, hashlib.sha256(probe_payload).hexdigest())))
    entries, _ = exchange.all_gather(probe_payload, sig)
    raw_views = [
        int(
            verify_signature(
                peers[s], contribution_message(CONTEXT, 99, s, hashlib.sha256(e.payload).hexdigest()), e.signature
            )
        )
        for s, e in enumerate(entries)
    ]
    # Honest senders' blocks all pass the screen (here: round 1, nobody attacks).
    exchange.round = 1
    gathered, _ = exchange.all_gather(probe_payload, sig)
    assert all(isinstance(e, Entry) for e in gathered)
    _, _, received = screen(
        gathered, round=99, context=CONTEXT, peers=peers, verify=verify_signature, spec=probe.spec,
        scheme=cfg.compression, fraction=cfg.topk_fraction, max_bytes=exchange.max_bytes,
    )  # fmt: skip

    rounds = []
    for r, attack in enumerate(ATTACKS):
        exchange.round = r
        start = trainer.state_bytes()
        res = trainer.run_round(r, _batch(rank, r))
        outcome = trainer.agreement.inner.last if rank == LIAR else agreement.last
        rounds.append(
            {
                "attack": attack,
                "hash": res.state_hash,
                "dropped": {str(k): v for k, v in res.dropped.items()},
                "included": list(outcome.included),
                "equivocators": list(outcome.equivocators),
                "contribution": res.contribution.hex(),
                "start": start.hex() if r else None,
                "bytes_sent": res.bytes_sent,
            }
        )
    return {"raw_views": raw_views, "honest_received": [h is not None for h in received], "rounds": rounds}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group(
        "gloo", store=dist.PrefixStore("g/", store), rank=rank, world_size=N, timeout=timedelta(seconds=60)
    )
    try:
        Path(out, f"rank{rank}.json").write_text(json.dumps(_rounds(rank, store)))
    except BaseException:
        Path(out, f"rank{rank}.err").write_text(traceback.format_exc())
    store.add("done", 1)  # leave together: a peer closing early could break a send still in flight
    deadline = time.monotonic() + 60
    while store.add("done", 0) < N and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(0)


def test_every_rank_aggregates_the_agreed_set_under_splitter_liar_and_equivocator(tmp_path):
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, store.port, str(tmp_path))) for r in range(N)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = sorted(tmp_path.glob("*.err"))
    assert not errors, "\n".join(e.read_text() for e in errors)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(N)]

    # Sender 0's block fails its signature at ranks 3 and 4 only; every other block arrives intact.
    assert [x["raw_views"][0] for x in ranks] == [1, 1, 1, 0, 0]
    assert all(all(x["raw_views"][1:]) for x in ranks)
    assert all(all(x["honest_received"]) for x in ranks)

    cfg = TrainingConfig(**CFG)
    for i, attack in enumerate(ATTACKS):
        rounds = [x["rounds"][i] for x in ranks]
        assert len({x["hash"] for x in rounds}) == 1, (attack, [x["hash"][:12] for x in rounds])
        assert len({json.dumps(x["included"]) for x in rounds}) == 1
        assert len({json.dumps(x["dropped"]) for x in rounds}) == 1, (attack, [x["dropped"] for x in rounds])
        # The agreed state is what the agreed contributions produce (the validator's recomputation).
        start = None if i == 0 else bytes.fromhex(rounds[0]["start"])
        served = {r: bytes.fromhex(x["contribution"]) for r, x in enumerate(rounds)}
        assert checkpoint.state_hash(next_state(cfg, start, served, rounds[0]["included"])) == rounds[0]["hash"]
    split, liar, equivocation = ([x["rounds"][i] for x in ranks] for i in range(3))
    # 1. Ranks 3 and 4 fetched sender 0's payload point to point: included, nobody dropped it.
    assert all(x["dropped"] == {} for x in split) and None not in split[0]["included"]
    assert split[0]["bytes_sent"] > split[1]["bytes_sent"]  # rank 0, the lowest holder, sent the repairs
    # 2. The liar's report changes nothing.
    assert all(x["dropped"] == {} for x in liar) and None not in liar[0]["included"]
    # 3. The equivocator is excluded by every rank, with the reason; everyone else is included.
    assert equivocation[0]["equivocators"] == [EQUIVOCATOR]
    assert all(list(x["dropped"]) == [str(EQUIVOCATOR)] and "equivocation" in x["dropped"]["1"] for x in equivocation)
