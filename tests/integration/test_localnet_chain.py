"""The embedded chain itself: shared-file writes, refusing bad files, the block
clock, block-pinned history, and the `python -m utils.localnet` CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import bittensor as bt
import pytest
from bittensor.sp_core import Keypair

from template.chain.client import client_for
from tests.conftest import new_localnet, run
from utils.localnet import LocalnetError, open_substrate

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "utils.localnet", *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    endpoint = new_localnet(tmp_path)
    dest = Keypair.create_from_uri("//Dave").ss58_address
    transfers = 25
    script = textwrap.dedent(f"""
        import asyncio, sys
        import bittensor as bt
        from bittensor.sp_core import Keypair
        from template.chain.client import client_for

        async def main(uri):
            sender = Keypair.create_from_uri(uri)
            async with client_for({endpoint!r}) as client:
                for _ in range({transfers}):
                    result = await client.execute(bt.Transfer({dest!r}, 1), sender)
                    assert result.success, result.message
                    await client.subnets.metagraph(1)  # interleave reads with the other writer

        asyncio.run(main(sys.argv[1]))
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**__import__("os").environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / f"s{i}")},
        )
        for i, uri in enumerate(("//Bob", "//Charlie"))
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert "database is locked" not in err
        assert proc.returncode == 0, err

    async def balance():
        async with client_for(endpoint) as client:
            return (await client.balances.get(dest)).rao

    assert run(balance()) == 2 * transfers * 10**9


def test_truncated_database_is_refused_with_its_path(tmp_path):
    new_localnet(tmp_path)
    db = tmp_path / "chain.sqlite"
    # Checkpoint the WAL into the main file, then cut the file short.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(LocalnetError) as raised:
        open_substrate(tmp_path)
    assert str(db) in str(raised.value)


def test_foreign_sqlite_and_garbage_files_are_refused(tmp_path):
    foreign = tmp_path / "other.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(LocalnetError, match="not a tensorswarm localnet") as raised:
        open_substrate(foreign)
    assert str(foreign) in str(raised.value)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LocalnetError) as raised:
        open_substrate(garbage)
    assert str(garbage) in str(raised.value)
    with pytest.raises(LocalnetError, match="no embedded chain"):
        open_substrate(tmp_path / "missing")


def test_blocks_follow_the_clock_and_stream_in_order(tmp_path):
    endpoint = new_localnet(tmp_path, block_time=0.1)

    async def flow():
        async with client_for(endpoint) as client:
            assert await client.block_time() == pytest.approx(0.1)
            start = await client.block()
            seen = []
            async for header in client.blocks():
                seen.append(header.number)
                if len(seen) == 5:
                    break
            assert seen == list(range(seen[0], seen[0] + 5))
            assert seen[0] == start + 1
            reached = await client.wait_for_block(start + 8, timeout=10)
            assert reached.number >= start + 8
            assert await client.block() >= start + 8
            h1, h2 = await client._substrate.block_hash(start), await client._substrate.block_hash(start + 1)
            assert h1 != h2 and h1.startswith("0x") and len(h1) == 66

    run(flow())


def test_reads_pinned_to_a_block_see_that_blocks_state(tmp_path):
    endpoint = new_localnet(tmp_path)
    bob = Keypair.create_from_uri("//Bob")
    dest = Keypair.create_from_uri("//Eve").ss58_address

    async def flow():
        async with client_for(endpoint) as client:
            result = await client.execute(bt.Transfer(dest, 7), bob)
            assert result.success
            included = int(result.extrinsic_id.split("-")[0])
            await client.wait_for_block(included + 1, timeout=10)
            then = await client.at(included - 1)
            now = await client.at(included)
            assert (await then.balances.get(dest)).rao == 0
            assert (await now.balances.get(dest)).rao == 7 * 10**9

    run(flow())


def test_skip_blocks_runs_the_epochs_it_passes(tmp_path):
    from utils.localnet.bootstrap import bootstrap

    endpoint = new_localnet(tmp_path)

    async def flow():
        async with client_for(endpoint) as client:
            subnet = await bootstrap(client, tmp_path / "wallets", miners=1, validators=1, tempo=10)
            before = await client.query(("SubtensorModule", "SubnetEpochIndex"), [subnet.netuid]) or 0
            client._substrate.advance_blocks(55)  # five tempos of 11 blocks
            after = await client.query(("SubtensorModule", "SubnetEpochIndex"), [subnet.netuid])
            assert after - before in (5, 6)

    run(flow())


def test_cli_init_status_and_refusals(tmp_path):
    directory = tmp_path / "net"
    env = {**__import__("os").environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json")}
    created = _cli("init", "--dir", str(directory), "--miners", "2", "--validators", "1", env=env)
    assert created.returncode == 0, created.stderr
    assert f"sim://{directory}" in created.stdout
    assert "--wallet.path" in created.stdout
    for name in ("owner", "validator-0", "miner-0", "miner-1"):
        assert (directory / "wallets" / name / "hotkeys" / "default").exists()
        assert (directory / "wallets" / name / "coldkeypub.txt").exists()
    again = _cli("init", "--dir", str(directory), env=env)
    assert again.returncode != 0
    assert "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    status = _cli("status", "--dir", str(directory), "--json", env=env)
    assert status.returncode == 0, status.stderr
    table = json.loads(status.stdout)
    wallets = [n["wallet"] for n in table["neurons"]]
    assert wallets == ["owner", "validator-0", "miner-0", "miner-1"]
    # Staked 1000; an epoch that passed before this status call (a loaded machine) adds its emission.
    assert 1000.0 - 1e-3 <= table["neurons"][1]["stake"] < 1100.0
    pretty = _cli("status", "--dir", str(directory), env=env)
    assert "validator-0" in pretty.stdout and "incentive" in pretty.stdout
    forced = _cli("init", "--dir", str(directory), "--miners", "1", "--validators", "1", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert len(json.loads(_cli("status", "--dir", str(directory), "--json", env=env).stdout)["neurons"]) == 3


def test_cli_bad_flags_and_bad_files_give_one_line_errors(tmp_path):
    bad_flag = _cli("init", "--dir", str(tmp_path), "--miners", "many")
    assert bad_flag.returncode == 2
    assert len(bad_flag.stderr.strip().splitlines()) == 1
    unknown = _cli("status", "--dir", str(tmp_path), "--bogus")
    assert unknown.returncode == 2
    assert len(unknown.stderr.strip().splitlines()) == 1
    (tmp_path / "chain.sqlite").write_bytes(b"garbage" * 200)
    corrupt = _cli("status", "--dir", str(tmp_path))
    assert corrupt.returncode == 1
    assert str(tmp_path / "chain.sqlite") in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1


def test_chain_client_factory(tmp_path):
    from template.chain.client import client_for

    endpoint = new_localnet(tmp_path)
    client = client_for(endpoint)
    assert type(client._substrate).__name__ == "LocalSubstrate"
    assert type(client_for("ws://127.0.0.1:1")._substrate).__name__ == "RpcSubstrate"
    with pytest.raises(ValueError, match="sim://"):
        client_for("sim://")
    with pytest.raises(LocalnetError):
        client_for(f"sim://{tmp_path / 'nowhere'}")


def test_epoch_emission_is_conserved_and_paid_as_stake(tmp_path):
    """Per epoch: 18% to the owner, the rest to neurons; with no weights set the
    validators' half follows stake (upstream) and nothing is lost to rounding
    beyond a few rao."""
    from utils.localnet.bootstrap import bootstrap

    endpoint = new_localnet(tmp_path)

    async def flow():
        async with client_for(endpoint) as client:
            subnet = await bootstrap(client, tmp_path / "wallets", miners=2, validators=2, tempo=10)
            first = await client.wait_for_epoch(subnet.netuid, timeout=30)
            second = await client.wait_for_epoch(subnet.netuid, timeout=30)
            before = await (await client.at(second.block - 1)).subnets.metagraph(subnet.netuid)
            after = await (await client.at(second.block)).subnets.metagraph(subnet.netuid)
            accrued = (second.block - second.previous) * 10**9
            grown = [a.total_stake.rao - b.total_stake.rao for a, b in zip(after.neurons, before.neurons)]
            owner_uid = after.by_hotkey(subnet.owner.hotkey.ss58_address).uid
            owner_cut = accrued * 18 // 100
            for uid, n in enumerate(after.neurons):
                # Stake grows by exactly the epoch's emission (+ the cut for the owner,
                # whose permit and stake also earn it a validator share here).
                assert grown[uid] == n.emission.rao + (owner_cut if uid == owner_uid else 0)
            paid = sum(n.emission.rao for n in after.neurons)
            assert 0 <= accrued - owner_cut - paid < 10
            for w in subnet.validators:
                assert after.by_hotkey(w.hotkey.ss58_address).emission.rao > 0
            assert first.block < second.block

    run(flow())
