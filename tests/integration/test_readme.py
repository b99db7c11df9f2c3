"""Every command in the README's ```bash blocks names an entry point that exists and flags it accepts
(placeholders such as N, W or <public IP> filled in). Parsing only: what the commands *do* is covered
by the end-to-end tests (the demo, the swarm, the validators)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDERS = {"N": "2", "W": "wallet", "H": "default", "TAO": "10"}


def _commands(markdown: str) -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _argv(command: str) -> list[str]:
    command = re.sub(r"<[^>]+>", "203.0.113.10", command)
    return [PLACEHOLDERS.get(word, word) for word in shlex.split(command)]


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _parser_for(argv: list[str]):
    """(parser, its arguments) for a command line, or None for commands this test does not parse."""
    from template.config import cli as tc

    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        argv = argv[1:]  # VAR=value prefixes
    if argv[:1] == ["bash"]:
        argv = argv[1:]
    if argv and argv[0].endswith("python"):
        argv = argv[1:]
    if argv[:2] == ["-m", "orchestrator"]:
        from orchestrator.__main__ import add_args

        return tc.build_parser("orchestrator", "", add_args), argv[2:]
    if argv[:2] == ["-m", "template.export"]:
        from template.export import add_args as export_args

        return tc.build_parser("export", "", export_args), argv[2:]
    if argv[:2] == ["-m", "template.data.tokenize"]:
        from template.data.tokenize import build_parser as tokenize_parser

        return tokenize_parser(), argv[2:]
    if argv[:2] == ["-m", "template.generate"]:
        from template.generate import build_parser as generate_parser

        return generate_parser(), argv[2:]
    if argv[:2] == ["-m", "utils.localnet"]:
        from utils.localnet.cli import build_parser

        return build_parser(), argv[2:]
    if argv[:1] == ["scripts/demo.sh"]:
        return _module(REPO / "scripts" / "demo.py").build_parser(), argv[1:]
    if argv[:1] and argv[0].startswith("neurons/"):
        return tc.build_parser(argv[0], "", _module(REPO / argv[0]).add_args), argv[1:]
    if argv[:1] and argv[0].startswith("scripts/bench/"):
        sys.path.insert(0, str(REPO / "scripts" / "bench"))
        return _module(REPO / argv[0]).build_parser(), argv[1:]
    return None


README = (REPO / "README.md").read_text()
COMMANDS = _commands(README) + _commands((REPO / "scripts" / "deploy" / "README.md").read_text())


def test_the_readme_has_the_two_setup_commands_first():
    assert COMMANDS[:2] == ["bash scripts/demo.sh", "bash scripts/test.sh"]


@pytest.mark.parametrize("command", [c for c in COMMANDS if "btcli" not in c])
def test_readme_command_parses(command):
    argv = _argv(command)
    found = _parser_for(argv)
    if found is None:
        words = [w for w in argv if not ("=" in w and not w.startswith("-"))]
        # Anything else must at least name a script or program that exists here.
        target = next((w for w in words if w.endswith((".sh", ".py"))), None)
        if target is not None:
            assert (REPO / target).exists() or Path(target).exists(), command
        return
    parser, args = found
    try:
        parser.parse_args(args)
    except SystemExit as exit_:
        pytest.fail(f"README command does not parse (exit {exit_.code}): {command}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith(".venv/bin/btcli")])
def test_readme_btcli_command_has_real_options(command):
    # btcli (the SDK's, pinned) refuses an unknown option even with --help; --help stops it there.
    argv = _argv(command)
    out = subprocess.run(
        [str(Path(sys.executable).parent / "btcli"), *argv[1:], "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "No such option" not in out.stdout + out.stderr, (command, out.stderr[-500:])
