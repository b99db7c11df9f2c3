"""The dashboard in a real browser: Debian's chromium, driven by selenium, on a live orchestrator during a
short real run (3 meta-miners with their miners and a validator, as real processes on the embedded chain).
The page loads with no console errors; the loss chart's points are /v1/history's, the validator's held-out
losses included; it updates by itself when more rounds are agreed. It leaves a screenshot in
``.artifacts/dashboard.png`` (and in the test's directory) for people to look at.

Needs chromium and chromedriver: installed with apt-get when missing and this runs as root, otherwise
skipped with the reason."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from template.net.http import free_port
from tests.conftest import small_corpus
from tests.integration.test_swarm_e2e import _spawn, _status, _wait, spawn_meta_miners, stop_all

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(600)]
APT = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver"


def _chromium() -> tuple[str, str]:
    """(chromium, chromedriver), installing them when missing and allowed; skips when neither works."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (the dev extra has it)")
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(APT, shell=True, capture_output=True, timeout=900)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip("chromium and chromedriver are not installed (as root: apt-get install chromium chromium-driver)")
    return found


def _browser(chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1100",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _table(driver, selector: str) -> list[list[str]]:
    """The cells' text of each row of a table, read in one script (no element can go stale in between)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tr'))"
        ".map(r => Array.from(r.querySelectorAll('td')).map(td => td.textContent));",
        selector,
    )


def _chart_rounds(driver) -> list[list]:
    """The loss chart's data as uPlot holds it: [rounds, mean, min, max, held-out]."""
    return driver.execute_script("return window.tensorswarm.charts.loss.data.map(s => Array.from(s));")


def test_the_dashboard_plots_the_history_and_follows_the_run(sim_chain, tmp_path):
    chromium, chromedriver = _chromium()
    dev_chain = sim_chain
    netuid = dev_chain.subnet.netuid

    async def permits():
        async with dev_chain.client() as client:
            await client.wait_for_epoch(netuid, timeout=30)

    asyncio.run(permits())
    small_corpus(tmp_path, size=256 * 1024)
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(tmp_path / "sym.json"), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    chain = ["--subtensor.chain_endpoint", dev_chain.endpoint, "--netuid", str(netuid)]
    chain += ["--wallet.path", str(dev_chain.wallets_dir)]
    logs = [tmp_path / "orchestrator.log"]
    orchestrator = ["-m", "orchestrator", *chain, "--wallet.name", "owner", "--state-dir", str(tmp_path / "orch")]
    orchestrator += ["--port", str(port), "--tcp-store-port", "0", "--dataset", str(tmp_path / "corpus.txt")]
    orchestrator += ["--shard-size-kb", "16", "--inner-steps", "6", "--batch-size", "8", "--seq-len", "32"]
    orchestrator += ["--min-world-size", "3"]
    procs = [_spawn(orchestrator, logs[0], env)]
    driver = None
    try:
        _wait("orchestrator", lambda: _status(url), 60, logs)
        procs += spawn_meta_miners(dev_chain, chain, url, tmp_path, env, logs)
        logs.append(tmp_path / "validator.log")
        validator = ["neurons/validator.py", *chain, "--wallet.name", "validator-0", "--orchestrator-url", url]
        validator += ["--state-dir", str(tmp_path / "validator"), "--port", str(free_port()), "--weights-interval", "3"]
        validator += ["--tensorboard-dir", str(tmp_path / "tensorboard")]  # the owner's optional tracking
        procs.append(_spawn(validator, logs[-1], env))

        def history() -> dict:
            return httpx.get(url + "/v1/history", params={"limit": 1000}, timeout=10).json()

        _wait(
            "3 rounds and a validator's held-out loss",
            lambda: len((h := history())["points"]) >= 3 and any(pt["heldout_loss"] for pt in h["points"]),
            240,
            logs,
        )
        driver = _browser(chromium, chromedriver)
        driver.get(url + "/")
        seen = _wait("the page to plot the history", lambda: len(_chart_rounds(driver)[0]) >= 3, 30, logs)
        assert seen
        h = history()
        chart = _chart_rounds(driver)
        shown = len(chart[0])
        points = h["points"][:shown]  # rounds agreed after the page's last fetch come with its next one
        assert chart[0] == [pt["round"] for pt in points]
        for series, key in zip(chart[1:4], ("loss", "loss_min", "loss_max")):
            assert series == [pt[key] for pt in points], key
        # A validator's held-out loss of a round already plotted may land after the page's fetch: the chart
        # shows it at the next one. What the page plotted is the history's value, or still nothing.
        heldout = [pt["heldout_loss"] for pt in points]
        assert all(shown in (None, value) for shown, value in zip(chart[4], heldout)), (chart[4], heldout)
        assert any(v is not None for v in chart[4]), "no held-out loss plotted"
        members = driver.execute_script("return window.tensorswarm.charts.members.data.map(s => Array.from(s));")
        members = [series[:shown] for series in members]  # the page may have fetched a round more since `chart`
        assert members[1] == [pt["members"] for pt in points] and set(members[1]) == {3}
        rows = _table(driver, "#members")  # read in one script: the page re-renders its tables as it refreshes
        assert len(rows) == 3 and {r[3] for r in rows} == {"member"}, rows
        assert all(r[10].endswith(" s ago") for r in rows), rows  # every member checked in to its generation

        # Live: more rounds are agreed, and the page shows them without a reload.
        last = chart[0][-1]
        _wait("the page to follow the run", lambda: _chart_rounds(driver)[0][-1] >= last + 2, 120, logs)
        chart, h = _chart_rounds(driver), history()
        assert chart[0] == [pt["round"] for pt in h["points"][: len(chart[0])]]
        assert chart[1] == [pt["loss"] for pt in h["points"][: len(chart[0])]]
        validators = _table(driver, "#validators")
        assert len(validators) == 1 and dev_chain.subnet.validators[0].hotkey.ss58_address[:6] in " ".join(
            validators[0]
        )

        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        artifacts = REPO / ".artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copy(shot, artifacts / "dashboard.png")
    finally:
        if driver is not None:
            driver.quit()
        stop_all(procs)
    # The validator logged its figures to TensorBoard as well (its event file is complete once it stopped).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "rounds_audited" in tags and "heldout_loss" in tags, tags
    assert {f"score/{w.hotkey.ss58_address[:8]}" for w in dev_chain.subnet.miners} <= set(tags), tags
    assert events.Scalars("rounds_audited")[-1].value >= 1
