"""Byzantine miners cannot steer the model or earn without work.

Two colluders send validly signed, poisoned contributions *in the exchange* (and serve the same bytes to
validators): ``tests/adversaries/poisoning_miner.py``, the production miner with a test-only ``diloco``
subclass. They train honestly, so their loss claims are true.

1. ``test_poisoned_payloads_are_what_they_claim`` (seconds, in process): every attack kind's payload
   parses as a contribution of the run and is what its definition says (ALIE, IPM, the scaled sign flip,
   honest-norm noise, the largest values the parser accepts), and colluders never send each other's bytes.
2. ``test_two_colluders_cannot_steer_the_aggregate`` (seconds, in process): 4 honest ranks and 2
   colluders sending the *same* kind each round, switching every round through all five, over the
   production trainer, screening and aggregation (:func:`tests.adversaries.measure.replay`, the exchange
   in memory): the held-out loss stays within 5% of the honest-only replay's and no honest contribution
   is ever dropped. Two colluders on one kind is the strongest steering this swarm size allows.
3. ``test_colluding_poisoners_neither_steer_nor_earn`` (the acceptance run, ~2 min on 2 cores): 4
   honest miners and 2 colluders in one real swarm on the embedded chain, audited by one validator.
   Between them the colluders run all five kinds: one sends ALIE every round (the textbook vector from
   both colluders' honest Δs: the in-spread attack that was paid 0.87 of an honest miner), the other
   switches every round through ipm, signflip, noise and f32max. Split this way, the ALIE colluder's
   weight says whether in-spread poisoning earns (a loud round would get a colluder caught whatever else
   it sends). The honest-only baseline is the 4 honest hotkeys replayed in this process for the same
   number of rounds (what an honest-only swarm of them computes, bit for bit on one machine, at a fraction
   of the cost). Asserts: the held-out loss of round R's checkpoint is within 5% of the baseline's; no
   honest miner exited DIVERGED or was reported; each attacker's weight is below 1% of the honest mean by
   the 3rd weight-setting (waited for up to 120 s after the group formed) and at the last one seen, once
   the validator has scored SETTLED_AUDITS rounds; no honest miner is below half the honest mean at
   that last one. All failed assertions are reported
   together, with their numbers.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time

import bittensor as bt
import httpx
import pytest
import torch
from bittensor.sp_core import Keypair

from template.config.run import TrainingConfig
from template.engine import compression
from template.engine.compression import Compressed, CompressionError, ErrorFeedback
from template.engine.strategies import STRATEGIES
from template.engine.strategies.diloco import DiLoCo
from template.engine.trainer import Trainer
from template.net.http import free_port
from tests.adversaries import poisoning_miner as pm
from tests.adversaries.measure import heldout_loss, replay
from tests.integration.test_swarm_e2e import REPO, _spawn, _status, _wait, stop_all
from utils.localnet.bootstrap import create_wallet, fund, register

KINDS = pm.KINDS
SCHEDULES = (("alie",), ("ipm", "signflip", "noise", "f32max"))  # per colluder, one kind per round
ROUNDS = 18  # ALIE every round, the loud colluder each of its four kinds 4-5 times; long enough for the
# validator's evidence of the honest miners' work to settle (template.validator.scoring: 6-9 audits here)
INNER_STEPS = 8  # the audit draws its 4 gain steps from 1..H−2: with H = 6 it had to take all four
LOSS_TOLERANCE = 1.05
ATTACKER_SHARE = 0.01
HONEST_FLOOR = 0.5
BATCH = "8"
SETTINGS = 3  # attackers must be below ATTACKER_SHARE by the 3rd weight-setting
SETTINGS_WAIT_S = 120  # after the group formed; a validator that sets weights this rarely is a finding
# Honest pay needs evidence of work accumulated over audits (template.validator.scoring: z passes the
# gate after 2-6 audits, then the EMA catches up): the honest floor is judged once the validator has
# scored this many rounds, however fast this machine agreed rounds.
SETTLED_AUDITS = 12


# -- 1. the payloads, in process ---------------------------------------------------------------------


def _cosine(a: dict, b: dict) -> float:
    x = torch.cat([a[n].reshape(-1).double() for n in sorted(a)])
    y = torch.cat([b[n].reshape(-1).double() for n in sorted(b)])
    return float(x @ y / (x.norm() * y.norm()))


def _close(got: dict, want: dict) -> bool:
    """Equal up to int8 quantisation (≤ absmax/254 per chunk; absmax/200 leaves float slack)."""
    amax = max(float(t.abs().max()) for t in want.values())
    return all(torch.allclose(got[n], want[n].float(), rtol=0, atol=amax / 200) for n in want)


def test_poisoned_payloads_are_what_they_claim(tmp_path, monkeypatch):
    for knob in ("Z", "EPS", "SIGNFLIP", "COLLUDERS", "DISTINCT"):  # the defaults are what is checked
        monkeypatch.delenv(f"TENSORSWARM_POISON_{knob}", raising=False)
    monkeypatch.setenv("TENSORSWARM_POISON_WAIT_S", "30")
    cfg = TrainingConfig(preset="tiny", inner_steps=2, batch_size=4, seq_len=32, compression="int8")
    keys = [Keypair.create_from_uri(f"//tensorswarm-poison-{i}") for i in range(2)]
    peers = [k.ss58_address for k in keys]
    poisoner = pm.make_strategy(KINDS, tmp_path)  # round r attacks with KINDS[r]
    honest = STRATEGIES["diloco"]
    STRATEGIES["diloco"] = poisoner
    try:
        trainers = [
            Trainer(cfg, rank=i, world_size=2, peers=peers, sign=keys[i].sign, context="poison/0") for i in range(2)
        ]
    finally:
        STRATEGIES["diloco"] = honest
    for t in trainers:
        t.load(None)
    spec = trainers[0].spec
    cap = DiLoCo.contribution_bytes(cfg, spec)
    g = torch.Generator().manual_seed(0)
    deltas = [[{n: 1e-3 * torch.randn(s, generator=g) for n, s in spec.items()} for _ in range(2)] for _ in KINDS]
    # What each colluder would honestly have sent: the same error feedback over the same Δs.
    efs = [ErrorFeedback(cfg.compression, fraction=cfg.topk_fraction) for _ in range(2)]
    own = [[efs[i].compress(deltas[r][i]).decompress() for i in range(2)] for r in range(len(KINDS))]

    sent: list[list[bytes]] = []
    for r in range(len(KINDS)):
        out: list = [None, None]

        def encode(i, r=r, out=out):
            out[i] = trainers[i].strategy.encode(r, deltas[r][i])

        threads = [threading.Thread(target=encode, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        sent.append(out)

    got = {}
    for r, kind in enumerate(KINDS):
        for i in range(2):
            payload = sent[r][i]
            assert len(payload) <= cap, (kind, len(payload), cap)
            c = Compressed.from_bytes(payload, spec, scheme=cfg.compression, fraction=cfg.topk_fraction, max_bytes=cap)
            got[kind, i] = c.decompress()
            record = json.loads((tmp_path / "sent" / peers[i] / f"{r:010d}.json").read_text())
            assert record["kind"] == kind, record
            assert record["colluders"] == (2 if kind in ("alie", "ipm") else 1), record

    for i in range(2):
        r = KINDS.index("alie")
        a, b = own[r]
        x = torch.stack
        mean = {n: x([a[n], b[n]]).double().mean(0) for n in a}
        sigma = {n: x([a[n], b[n]]).double().std(0) for n in a}
        mine = own[r][i]
        want = {n: mean[n] - sigma[n] + 0.5 * (mine[n] - mean[n]) for n in a}
        assert _close(got["alie", i], want), "alie is not mean - z*sigma (+ the colluder's own offset)"
        r = KINDS.index("ipm")
        a, b = own[r]
        mean = {n: x([a[n], b[n]]).double().mean(0) for n in a}
        mine = own[r][i]
        want = {n: -mean[n] + 0.5 * (mine[n] - mean[n]) for n in a}
        assert _close(got["ipm", i], want), "ipm is not -eps*mean (+ the colluder's own offset)"
        mine = own[KINDS.index("signflip")][i]
        assert _close(got["signflip", i], {n: -0.95 * 10.0 * v for n, v in mine.items()}), "signflip is not -9.5*own"
        mine = own[KINDS.index("noise")][i]
        norm = lambda d: math.sqrt(sum(float((v.double() ** 2).sum()) for v in d.values()))
        assert norm(got["noise", i]) == pytest.approx(norm(mine), rel=0.02)
        assert abs(_cosine(got["noise", i], mine)) < 0.1
    # Colluders never send each other's bytes (copy detection would catch that for free).
    for kind in ("alie", "ipm"):
        r = KINDS.index(kind)
        assert sent[r][0] != sent[r][1] and _cosine(got[kind, 0], got[kind, 1]) < 0.99, kind

    # f32max: every value at the largest magnitude the parser accepts, signs alternating; one float32
    # step more and the parser refuses.
    data = sent[KINDS.index("f32max")][0]
    c = Compressed.from_bytes(data, spec, scheme=cfg.compression, fraction=cfg.topk_fraction)
    scales = torch.cat([ct.scales for ct in c.tensors.values()])
    values = torch.cat([ct.values for ct in c.tensors.values()])
    assert bool((scales == scales[0]).all()) and float(scales[0]) >= compression.MAX_SCALE * (1 - 1e-6)
    assert bool((values.abs() == 127).all())
    name = sorted(c.tensors)[0]
    assert c.tensors[name].values[0] == -c.tensors[name].values[1]
    c.tensors[name].scales = torch.nextafter(c.tensors[name].scales, torch.tensor(math.inf))
    with pytest.raises(CompressionError):
        Compressed.from_bytes(c.to_bytes(), spec, scheme=cfg.compression, fraction=cfg.topk_fraction)


# -- 2. steering the aggregate, in process ----------------------------------------------------------


def test_two_colluders_cannot_steer_the_aggregate(tmp_path, monkeypatch):
    for knob in ("Z", "EPS", "SIGNFLIP", "COLLUDERS", "DISTINCT"):
        monkeypatch.delenv(f"TENSORSWARM_POISON_{knob}", raising=False)
    from template.data.corpus import build_dataset, default_corpus

    name, corpus = default_corpus(max_bytes=2**20)
    manifest, shards = build_dataset(name, corpus, shard_size=64 * 1024)
    read = lambda i: shards[manifest.shards[i].sha256]
    cfg = TrainingConfig(preset="tiny", inner_steps=INNER_STEPS)
    hotkeys = [f"byzantine-test-{i}" for i in range(6)]
    rounds = 2 * len(KINDS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks are threads
    try:
        honest_state, _ = replay(cfg, manifest, read, hotkeys[:4], rounds)
        poisoner = pm.make_strategy(KINDS, tmp_path)  # both colluders: KINDS[r] in round r
        state, dropped = replay(cfg, manifest, read, hotkeys, rounds, strategies=[None] * 4 + [poisoner] * 2)
    finally:
        torch.set_num_threads(threads)
    honest_loss = heldout_loss(cfg, honest_state, manifest, read)
    loss = heldout_loss(cfg, state, manifest, read)
    print(f"held-out loss after {rounds} rounds: {loss:.4f} under attack, {honest_loss:.4f} honest-only")
    assert not [(r, d) for r, d in enumerate(dropped) if set(d) - {4, 5}], dropped  # no honest rank dropped
    assert loss <= LOSS_TOLERANCE * honest_loss, (loss, honest_loss)


# -- 3. the acceptance run in the real swarm ---------------------------------------------------------


@pytest.mark.timeout(600)
def test_colluding_poisoners_neither_steer_nor_earn(sim_chain, tmp_path):
    dev_chain = sim_chain
    netuid = dev_chain.subnet.netuid

    async def setup():
        async with dev_chain.client() as client:
            alice = Keypair.create_from_uri("//Alice")
            inner = await client.compose(bt.calls.AdminUtils.sudo_set_weights_set_rate_limit(netuid, 4))
            assert (await client.submit_call(bt.calls.Sudo.sudo(call=inner), alice)).success
            wallets = []
            for name in ("honest-3", "byz-0", "byz-1"):
                w = create_wallet(dev_chain.wallets_dir, name)
                await fund(client, w.coldkeypub.ss58_address, 10)
                await register(client, w, netuid)
                wallets.append(w)
            return wallets

    extra = asyncio.run(setup())
    honest = [*dev_chain.subnet.miners, extra[0]]
    attackers = extra[1:]
    from template.data.corpus import default_corpus

    (tmp_path / "corpus.txt").write_bytes(default_corpus(max_bytes=2**20)[1])
    base_env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json"), "PYTHONUNBUFFERED": "1"}
    port, vport = free_port(), free_port()
    url, vurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{vport}"
    chain = [
        "--subtensor.chain_endpoint",
        dev_chain.endpoint,
        "--netuid",
        str(netuid),
        "--wallet.path",
        str(dev_chain.wallets_dir),
    ]
    world = len(honest) + len(attackers)
    logs = [tmp_path / "orchestrator.log"]
    orchestrator = [
        "-m",
        "orchestrator",
        *chain,
        "--wallet.name",
        "owner",
        "--state-dir",
        str(tmp_path / "orch"),
        "--port",
        str(port),
        "--tcp-store-port",
        "0",
        "--dataset",
        str(tmp_path / "corpus.txt"),
        "--shard-size-kb",
        "64",
        "--preset",
        "tiny",
        "--inner-steps",
        str(INNER_STEPS),
        # 8 windows of 32 bytes per step: with 4 the evidence of one honest miner's work was noisy enough
        # (a standard error 3x its peers', from its batches alone) to leave it below the pay gate.
        "--batch-size",
        BATCH,
        "--seq-len",
        "32",
        "--min-world-size",
        str(world),
        "--heartbeat-timeout",
        "30",
        "--keep-checkpoints",
        "1000",
    ]
    procs = [_spawn(orchestrator, logs[0], base_env)]
    poison_dir = tmp_path / "poison"
    last_audits: dict = {}  # hotkey -> its last audit's findings, as of the last weight-setting seen
    settings: list[tuple[int, dict]] = []  # (block, weights) of each weight-setting seen, in order
    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        for w in [*honest, *attackers]:
            env, script = dict(base_env), []
            if w in attackers:
                env.update(
                    TENSORSWARM_POISON=",".join(SCHEDULES[attackers.index(w)]),
                    TENSORSWARM_POISON_DIR=str(poison_dir),
                    TENSORSWARM_POISON_COLLUDERS=str(len(attackers)),
                    TENSORSWARM_POISON_DISTINCT="0",  # never the same kind in the same round: textbook vectors
                )
                script = ["--miner-script", str(REPO / "tests" / "adversaries" / "poisoning_miner.py")]
            logs.append(tmp_path / f"{w.name}.log")
            procs.append(
                _spawn(
                    [
                        "neurons/meta_miner.py",
                        *chain,
                        "--wallet.name",
                        w.name,
                        "--orchestrator-url",
                        url,
                        "--work-dir",
                        str(tmp_path / w.name),
                        "--axon.ip",
                        "127.0.0.2",
                        "--axon.port",
                        str(free_port("127.0.0.2")),
                        "--heartbeat-interval",
                        "1",
                        "--timeout",
                        "60",
                        *script,
                    ],
                    logs[-1],
                    env,
                )
            )
        logs.append(tmp_path / "validator.log")
        procs.append(
            _spawn(
                [
                    "neurons/validator.py",
                    *chain,
                    "--wallet.name",
                    "validator-0",
                    "--orchestrator-url",
                    url,
                    "--state-dir",
                    str(tmp_path / "validator"),
                    "--port",
                    str(vport),
                    "--weights-interval",
                    "2",
                    "--sample-size",
                    str(world),
                ],
                logs[-1],
                base_env,
            )
        )
        _wait("all 6 miners in one generation", lambda: _status(url)["world_size"] == world, 240, logs)

        formed = time.monotonic()

        def progressed():
            v = httpx.get(vurl + "/v1/status", timeout=5).json()
            if v["last_weights_block"] and (not settings or settings[-1][0] != v["last_weights_block"]):
                settings.append((v["last_weights_block"], {int(k): x for k, x in v["weights"].items()}))
                last_audits.update(v["last_audits"])
            return (
                _status(url)["round"] >= ROUNDS
                and v["rounds_audited"] >= SETTLED_AUDITS
                and (len(settings) >= SETTINGS or time.monotonic() - formed > SETTINGS_WAIT_S)
            )

        # Rounds must come; weight-settings are waited for at most SETTINGS_WAIT_S (fewer is a finding).
        _wait(f"{ROUNDS} agreed rounds and {SETTLED_AUDITS} audited", progressed, 420, logs)
        status = _status(url)
        from template.data.store import ShardCache, shard_reader
        from template.net.orchestrator_client import OrchestratorClient

        validator = bt.Wallet("validator-0", "default", str(dev_chain.wallets_dir))
        with OrchestratorClient(url, validator, dev_chain.subnet.owner.hotkey.ss58_address) as client:
            record = next(r for r in client.rounds(since=ROUNDS - 1, limit=1) if r.round == ROUNDS - 1)
            state = _wait("round R's checkpoint", lambda: client.checkpoint(record.state), 60, logs)
            info = client.run()
            cache = ShardCache(tmp_path / "shards", client.shard)
            for shard in info.dataset.shards:
                cache.get(shard.sha256)
    finally:
        stop_all(procs)

    cfg = TrainingConfig(**info.training.model_dump())
    read = shard_reader(info.dataset, cache.get)
    hotkey = lambda w: w.hotkey.ss58_address
    uids = {m["hotkey"]: m["uid"] for m in status["members"]}
    reports = {m["hotkey"]: m["reports"] for m in status["members"]}
    assert set(uids) == {hotkey(w) for w in [*honest, *attackers]}, status["members"]

    # The attack really ran: each colluder sent its kinds, ALIE and IPM computed from both colluders' Δs.
    for w, schedule in zip(attackers, SCHEDULES):
        records = [json.loads(p.read_text()) for p in sorted((poison_dir / "sent" / hotkey(w)).glob("*.json"))]
        assert len(records) >= ROUNDS and {r["kind"] for r in records} == set(schedule), (w.name, records[:6])
        assert all(r["colluders"] == 2 for r in records if r["kind"] in ("alie", "ipm")), (w.name, records)

    swarm_loss = heldout_loss(cfg, state, info.dataset, read)
    # The miners' thread count (OMP_NUM_THREADS, tests/conftest.py): then the replay is bit for bit what an
    # honest-only swarm computes on this machine (scripts/bench/byzantine.py checks it: baseline_replay_matches).
    baseline_state, _ = replay(cfg, info.dataset, read, [hotkey(w) for w in honest], ROUNDS)
    baseline_loss = heldout_loss(cfg, baseline_state, info.dataset, read)

    failures = []
    ratio = swarm_loss / baseline_loss
    print(f"held-out loss at round {ROUNDS}: {swarm_loss:.4f} under attack, {baseline_loss:.4f} honest-only")
    if not ratio <= LOSS_TOLERANCE:
        failures.append(f"held-out loss {swarm_loss:.4f} is {ratio:.3f}x the honest-only {baseline_loss:.4f}")
    for w in honest:
        if "miner exited: 5" in (tmp_path / f"{w.name}.log").read_text(errors="replace"):
            failures.append(f"honest {w.name} exited DIVERGED")
        if reports[hotkey(w)]:
            failures.append(f"honest {w.name} was reported {reports[hotkey(w)]} time(s)")
    if len(settings) < SETTINGS:
        failures.append(f"only {len(settings)} weight-setting(s) within {SETTINGS_WAIT_S} s of the group forming")
    checked = [("3rd", settings[SETTINGS - 1])] if len(settings) >= SETTINGS else []
    for label, (block, weights) in [*checked, *([("last", settings[-1])] if settings else [])]:
        honest_w = [weights.get(uids[hotkey(w)], 0.0) for w in honest]
        mean = sum(honest_w) / len(honest_w)
        print(f"{label} weight-setting (block {block}): {weights}")
        if mean <= 0:
            failures.append(f"{label} weight-setting: the honest miners have no weight ({weights})")
            continue
        for w in attackers:
            share = weights.get(uids[hotkey(w)], 0.0) / mean
            if not share < ATTACKER_SHARE:
                failures.append(f"{label} weight-setting: {w.name} has {share:.3f} of the honest mean weight")
        if label == "last" and min(honest_w) < HONEST_FLOOR * mean:
            findings = {w.name: last_audits.get(hotkey(w), {}) for w in honest}
            failures.append(
                f"last weight-setting: an honest miner has {min(honest_w) / mean:.3f} of the honest mean; "
                f"their last audits: {findings}"
            )
    assert not failures, "\n".join(failures)
