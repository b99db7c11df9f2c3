"""template.config: the shared flag parser, Config nesting, type helpers, logging setup."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field, model_validator

from template.config import argtypes
from template.config import cli as C
from template.config.cli import (
    Config,
    build_parser,
    endpoint,
    endpoint_of,
    integer,
    network,
    non_negative_int,
    number,
    parse_config,
    port,
    positive_float,
    positive_int,
)
from template.config.flags import ModelFlags
from template.config.logs import _HANDLER_TAG, setup_logging
from template.config.strict import StrictModel

REPO = Path(__file__).resolve().parents[2]


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axon.port", type=port, default=8091)
    p.add_argument("--axon.external-ip", default=None)
    p.add_argument("--orchestrator-url", default="http://127.0.0.1:8000")
    p.add_argument("--neuron.epoch_length", type=positive_int, default=10)
    p.add_argument("--neuron.sample_size", type=non_negative_int, default=0)
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--dry-run", action="store_true")


def _parse_error(capsys, argv, add_args=_extra, **kw) -> str:
    """Parse ``argv`` expecting a usage error; return the stderr text."""
    with pytest.raises(SystemExit) as exc:
        parse_config("proc", argv, add_args=add_args, **kw)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


# --------------------------------------------------------------------------- defaults & nesting


def test_defaults():
    cfg = parse_config("proc", [])
    assert cfg.netuid == 1
    assert cfg.subtensor.network == "local"
    assert cfg.subtensor.chain_endpoint is None
    assert cfg.wallet.name == "default"
    assert cfg.wallet.hotkey == "default"
    assert cfg.wallet.path == os.path.expanduser("~/.bittensor/wallets")
    assert "~" not in cfg.wallet.path
    assert cfg.logging.debug is False
    assert cfg.logging.trace is False
    assert endpoint_of(cfg) == "local"


def test_values_and_dotted_nesting(tmp_path):
    cfg = parse_config(
        "proc",
        [
            "--netuid",
            "7",
            "--subtensor.network",
            "test",
            "--subtensor.chain_endpoint",
            "ws://127.0.0.1:9944",
            "--wallet.name",
            "owner",
            "--wallet.hotkey",
            "hk1",
            "--wallet.path",
            str(tmp_path / "w"),
            "--logging.debug",
            "--logging.trace",
        ],
    )
    assert cfg.netuid == 7
    assert cfg.subtensor.network == "test"
    assert cfg.subtensor.chain_endpoint == "ws://127.0.0.1:9944"
    assert (cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path) == ("owner", "hk1", str(tmp_path / "w"))
    assert cfg.logging.debug and cfg.logging.trace
    assert endpoint_of(cfg) == "ws://127.0.0.1:9944"


def test_wallet_path_expands_user():
    cfg = parse_config("proc", ["--wallet.path", "~/somewhere"])
    assert cfg.wallet.path == os.path.join(os.path.expanduser("~"), "somewhere")


def test_add_args_extends_with_nesting_and_underscores():
    cfg = parse_config(
        "proc",
        ["--axon.port", "9000", "--axon.external-ip", "1.2.3.4", "--orchestrator-url", "http://o:1", "--dry-run"],
        add_args=_extra,
    )
    assert cfg.axon.port == 9000
    assert cfg.axon.external_ip == "1.2.3.4"
    assert cfg.orchestrator_url == "http://o:1"
    assert cfg.dry_run is True
    assert cfg.neuron.epoch_length == 10 and cfg.neuron.sample_size == 0
    assert cfg.lr == 0.1
    # the shared flags are still there
    assert cfg.wallet.name == "default" and cfg.netuid == 1


def test_build_parser_without_wallet_or_chain(capsys):
    cfg = parse_config("orchestrator", [], wallet=False, chain=False)
    assert "wallet" not in cfg and "subtensor" not in cfg and "netuid" not in cfg
    assert cfg.logging.debug is False
    with pytest.raises(ValueError):
        endpoint_of(cfg)
    err = _parse_error(capsys, ["--wallet.name", "x"], add_args=None, wallet=False)
    assert "unrecognized arguments: --wallet.name x" in err


def test_build_parser_returns_argparse_parser():
    p = build_parser("proc", "desc", _extra)
    assert isinstance(p, argparse.ArgumentParser)
    ns = p.parse_args(["--axon.port", "1"])
    assert getattr(ns, "axon.port") == 1


def test_endpoint_of_sim_and_network_url():
    assert endpoint_of(parse_config("p", ["--subtensor.chain_endpoint", "sim://./localnet"])) == "sim://./localnet"
    assert endpoint_of(parse_config("p", ["--subtensor.network", "wss://node.example:443"])) == "wss://node.example:443"
    assert endpoint_of(parse_config("p", ["--subtensor.network", "finney"])) == "finney"


# --------------------------------------------------------------------------- Config object


def test_config_access_helpers():
    cfg = Config({"wallet": {"name": "a", "hotkey": "b"}, "netuid": 3})
    assert cfg["wallet"]["name"] == "a"
    assert cfg.get("wallet.hotkey") == "b"
    assert cfg.get("wallet.missing", 5) == 5
    assert cfg.get("netuid.deeper", "x") == "x"
    assert set(cfg) == {"wallet", "netuid"} and len(cfg) == 2
    assert cfg.to_dict() == {"wallet": {"name": "a", "hotkey": "b"}, "netuid": 3}
    with pytest.raises(AttributeError, match="no 'nope'"):
        _ = cfg.nope
    with pytest.raises(KeyError):
        _ = cfg["nope"]
    cfg.extra = {"k": 1}
    assert cfg.extra.k == 1


def test_config_pickles_and_compares():
    cfg = parse_config("p", ["--axon.port", "1234"], add_args=_extra)
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg
    assert again.axon.port == 1234
    assert "axon" in repr(cfg)


def test_config_rejects_conflicting_flags(capsys):
    def clash(p):
        p.add_argument("--axon", default=None)
        p.add_argument("--axon.port", type=port, default=1)

    err = _parse_error(capsys, [], add_args=clash)
    assert err.count("\n") == 1 and "conflicts" in err


def test_config_rejects_reserved_names():
    with pytest.raises(ValueError):
        Config({"to_dict": 1})
    with pytest.raises(ValueError):
        Config({"get": 1})


# --------------------------------------------------------------------------- bad input -> one line, exit 2

BAD_ARGV = [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--wallet.n", "x"], "unrecognized arguments"),  # no abbreviations
    (["--netuid", "-1"], "--netuid"),
    (["--netuid", "abc"], "--netuid"),
    (["--netuid", "1.5"], "--netuid"),
    (["--netuid", "65536"], "--netuid"),
    (["--netuid"], "expected one argument"),
    (["--subtensor.network", "mainnet"], "unknown network 'mainnet'"),
    (["--subtensor.network", "http://x:1"], "unsupported scheme"),
    (["--subtensor.chain_endpoint", "http://127.0.0.1:9944"], "unsupported scheme"),
    (["--subtensor.chain_endpoint", "127.0.0.1:9944"], "invalid chain endpoint"),
    (["--subtensor.chain_endpoint", "ws://"], "host"),
    (["--subtensor.chain_endpoint", "ws://:9944"], "host"),
    (["--subtensor.chain_endpoint", "ws://host:0"], "port"),
    (["--subtensor.chain_endpoint", "ws://host:99999"], "port"),
    (["--subtensor.chain_endpoint", "ws://host:abc"], "port"),
    (["--subtensor.chain_endpoint", "ws://host:"], "port"),
    (["--subtensor.chain_endpoint", "ws://ho st:1"], "whitespace"),
    (["--subtensor.chain_endpoint", "wss://host:1?x=1"], "query"),
    (["--subtensor.chain_endpoint", "sim://"], "sim://"),
    (["--wallet.name", ""], "--wallet.name"),
    (["--wallet.name", "a/b"], "path separators"),
    (["--wallet.hotkey", ".."], "--wallet.hotkey"),
    (["--wallet.path", ""], "--wallet.path"),
    (["--axon.port", "0"], "--axon.port"),
    (["--axon.port", "65536"], "--axon.port"),
    (["--axon.port", "http"], "--axon.port"),
    (["--neuron.epoch_length", "0"], "positive integer"),
    (["--neuron.sample_size", "-3"], ">= 0"),
    (["--lr", "0"], "positive number"),
    (["--lr", "-0.5"], "positive number"),
    (["--lr", "nan"], "not finite"),
    (["--lr", "inf"], "not finite"),
    (["--lr", "fast"], "positive number"),
    (["--logging.debug=yes"], "--logging.debug"),
    (["positional"], "unrecognized arguments: positional"),
]


@pytest.mark.parametrize("argv, fragment", BAD_ARGV, ids=[" ".join(a) or "empty" for a, _ in BAD_ARGV])
def test_bad_input_one_line_exit_2(capsys, argv, fragment):
    err = _parse_error(capsys, argv)
    assert err.startswith("proc: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert "usage:" not in err
    assert fragment in err, err


_SCRIPT = textwrap.dedent(
    """
    import sys
    from template.config.cli import parse_config, port
    cfg = parse_config("tinyproc", sys.argv[1:], add_args=lambda p: p.add_argument("--axon.port", type=port))
    print("ok", cfg.netuid, cfg.axon.port)
    """
)


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *argv], capture_output=True, text=True, env=env, timeout=120, cwd=REPO
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--unknown-flag"],
        ["--netuid", "-5"],
        ["--subtensor.chain_endpoint", "ftp://x"],
        ["--axon.port", "70000"],
    ],
)
def test_subprocess_error_is_exactly_one_stderr_line(argv):
    proc = _run(*argv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tinyproc: error: ")


def test_subprocess_ok_and_help():
    ok = _run("--netuid", "4", "--axon.port", "8080")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "ok 4 8080"

    helped = _run("--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: tinyproc")
    for flag in (
        "--netuid",
        "--subtensor.network",
        "--subtensor.chain_endpoint",
        "--wallet.name",
        "--wallet.hotkey",
        "--wallet.path",
        "--logging.debug",
        "--logging.trace",
        "--axon.port",
    ):
        assert flag in helped.stdout


def test_help_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config("proc", ["--help"], add_args=_extra, description="does things")
    assert exc.value.code == 0
    out, _ = capsys.readouterr()
    assert "does things" in out and "--orchestrator-url" in out


# --------------------------------------------------------------------------- type helpers


@pytest.mark.parametrize(
    "value",
    [
        "ws://127.0.0.1:9944",
        "wss://entrypoint-finney.opentensor.ai:443",
        "ws://localhost",
        "ws://[::1]:9944",
        "WS://node:1/path",
        "sim://./localnet",
        "sim:///abs/path/chain.sqlite",
    ],
)
def test_endpoint_accepts(value):
    out = endpoint(value)
    assert out.split("://", 1)[1] == value.split("://", 1)[1]
    assert out.split("://", 1)[0] in ("ws", "wss", "sim")


@pytest.mark.parametrize("value", ["finney", "test", "archive", "devnet", "local", "ws://h:1", "sim://x"])
def test_network_accepts(value):
    assert network(value) == value


@given(st.integers())
def test_port_property(n):
    if 1 <= n <= 65535:
        assert port(str(n)) == n
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            port(str(n))


@given(st.integers())
def test_int_helpers_property(n):
    if n >= 0:
        assert non_negative_int(str(n)) == n
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            non_negative_int(str(n))
    if n > 0:
        assert positive_int(n) == n
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(n)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_positive_float_property(x):
    import math

    if math.isfinite(x) and x > 0:
        assert positive_float(repr(x)) == x
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(repr(x))


def test_helpers_reject_bools():
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(True)
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(True)


# --------------------------------------------------------------------------- flags from a pydantic model


class _Demo(StrictModel):
    preset: str = Field("a", description="which one")
    mode: Literal[("fast", "slow")] = Field("fast", description="how")
    steps: int = Field(20, ge=1, le=100, description="steps per round")
    lr: float = Field(0.5, gt=0, description="rate, in %")
    wait_s: float = Field(30.0, ge=0, description="seconds to wait")

    @model_validator(mode="after")
    def _rule(self) -> _Demo:
        if self.mode == "slow" and self.steps > 50:
            raise ValueError("slow runs take at most 50 steps")
        return self


DEMO = ModelFlags(
    _Demo, flags={"wait_s": "--wait"}, choices={"preset": ["a", "b"]}, default_help={"steps": "by preset"}
)


def _demo_parser() -> argparse.ArgumentParser:
    parser = build_parser("proc", "", DEMO.add_to, wallet=False, chain=False)
    parser.add_argument("--other", default="x")
    return parser


def test_model_flags_names_types_and_choices():
    actions = {a.dest: a for a in _demo_parser()._actions}
    assert [actions[f].option_strings for f in _Demo.model_fields] == [
        ["--preset"],
        ["--mode"],
        ["--steps"],
        ["--lr"],
        ["--wait"],
    ]
    assert actions["mode"].choices == ["fast", "slow"] and actions["preset"].choices == ["a", "b"]
    ns = _demo_parser().parse_args(["--steps", "7", "--lr", "1e-2", "--wait", "0", "--mode", "slow"])
    assert DEMO.given(ns) == {"steps": 7, "lr": 0.01, "wait_s": 0.0, "mode": "slow"}
    assert isinstance(ns.steps, int) and isinstance(ns.lr, float)
    assert DEMO.given(Config.from_namespace(ns)) == DEMO.given(ns)  # a Config works as well
    assert DEMO.flag("wait_s") == "--wait" and DEMO.flag("steps") == "--steps"


def test_model_flags_left_out_are_absent_so_layers_can_fill_them():
    ns = _demo_parser().parse_args(["--other", "y"])
    assert DEMO.given(ns) == {} and not hasattr(ns, "steps") and ns.other == "y"
    assert DEMO.build(ns) == _Demo()
    # flag > base > the model's defaults
    ns = _demo_parser().parse_args(["--steps", "9"])
    assert DEMO.build(ns, base={"steps": 3, "lr": 0.25}) == _Demo(steps=9, lr=0.25)


def test_model_flags_bounds_and_rules_are_the_models(capsys):
    parser = _demo_parser()
    # argparse checks only the type; the model checks bounds, and the error names the flag.
    with pytest.raises(ValueError, match=r"^--steps: Input should be less than or equal to 100$"):
        DEMO.build(parser.parse_args(["--steps", "101"]))
    with pytest.raises(ValueError, match=r"^--wait: Input should be greater than or equal to 0$"):
        DEMO.build(parser.parse_args(["--wait", "-1"]))
    with pytest.raises(ValueError, match="slow runs take at most 50 steps"):
        DEMO.build(parser.parse_args(["--mode", "slow", "--steps", "60"]))
    # A bad value that came from the base, not a flag, is named by its field.
    with pytest.raises(ValueError, match=r"^lr: Input should be greater than 0$"):
        DEMO.build(parser.parse_args([]), base={"lr": 0})
    for argv, fragment in (
        (["--steps", "x"], "argument --steps: expected an integer, got 'x'"),
        (["--lr", "nan"], "argument --lr: expected a number"),
        (["--mode", "medium"], "argument --mode: invalid choice"),
        (["--preset", "c"], "argument --preset: invalid choice"),
    ):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_model_flags_help_has_description_bounds_and_default(capsys):
    with pytest.raises(SystemExit):
        _demo_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "steps per round [>= 1, <= 100] (default: by preset)" in out
    assert "rate, in % [> 0] (default: 0.5)" in out  # a % in a description is not a format
    assert "seconds to wait [>= 0] (default: 30)" in out
    assert "how (default: fast)" in out and "{fast,slow}" in out


def test_model_flags_refuse_what_they_cannot_map():
    class Nested(StrictModel):
        inner: _Demo = _Demo()

    with pytest.raises(TypeError, match="Nested.inner"):
        ModelFlags(Nested).add_to(argparse.ArgumentParser())
    assert ModelFlags(Nested, exclude=["inner"]).fields == {}
    with pytest.raises(ValueError, match="no field"):
        ModelFlags(_Demo, flags={"stepz": "--stepz"})


def test_number_helpers_leave_bounds_to_the_caller():
    assert integer("-3") == -3 and number("-0.5") == -0.5 and number(2) == 2.0
    for bad in ("1.5", True, "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            integer(bad)
    for bad in ("inf", "nan", True, ""):
        with pytest.raises(argparse.ArgumentTypeError):
            number(bad)
    assert C.port is argtypes.port and C.KNOWN_NETWORKS is argtypes.KNOWN_NETWORKS  # still re-exported


# --------------------------------------------------------------------------- logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("bittensor").level)
    yield
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
            h.close()
    root.setLevel(saved[1])
    logging.getLogger("bittensor").setLevel(saved[2])
    logging.captureWarnings(False)


def _ours():
    return [h for h in logging.getLogger().handlers if getattr(h, _HANDLER_TAG, False)]


def test_setup_logging_levels(restore_logging):
    from rich.logging import RichHandler

    setup_logging(parse_config("p", []))
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("bittensor").level == logging.WARNING
    assert len(_ours()) == 1 and isinstance(_ours()[0], RichHandler)

    setup_logging(parse_config("p", ["--logging.debug"]))
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("bittensor").level == logging.WARNING
    assert len(_ours()) == 1  # replaced, not stacked

    setup_logging(parse_config("p", ["--logging.trace"]))
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("bittensor").level == logging.DEBUG


def test_setup_logging_logfile(restore_logging, tmp_path):
    logfile = tmp_path / "sub" / "proc.log"
    log = setup_logging(parse_config("p", []), logfile=str(logfile))
    assert len(_ours()) == 2
    log.info("hello from the test")
    logging.getLogger("x").debug("not at INFO")
    for h in _ours():
        h.flush()
    text = logfile.read_text()
    assert "hello from the test" in text and "tensorswarm" in text
    assert "not at INFO" not in text


def test_sparseloco_runs_take_their_own_defaults_where_they_leave_them_unset():
    from template.config.run import SPARSE_DEFAULTS, TrainingConfig

    sparse = TrainingConfig(compression="sparseloco", topk_fraction=0.015)
    assert {k: getattr(sparse, k) for k in SPARSE_DEFAULTS} == SPARSE_DEFAULTS
    assert sparse.feedback_decay == 0.95 and sparse.aggregator == "centered_clip"
    chosen = TrainingConfig(compression="sparseloco", outer_lr=1.0, feedback_decay=1.0, aggregator="trimmed_mean")
    assert (chosen.outer_lr, chosen.feedback_decay, chosen.aggregator) == (1.0, 1.0, "trimmed_mean")
    assert chosen.outer_momentum == 0.0  # the ones left unset still come from SPARSE_DEFAULTS
    dense = TrainingConfig(compression="int8")
    assert (dense.feedback_decay, dense.outer_lr, dense.aggregator) == (1.0, 0.8, "trimmed_mean")
