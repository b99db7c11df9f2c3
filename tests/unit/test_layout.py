"""The library's shape: light wire and config packages, a docstring on every package, modules of readable
size. (The import layering itself is checked by ``lint-imports`` in .ci/run.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent for p in (REPO / "template").rglob("__init__.py"))
MAX_MODULE_LINES = 450  # "about 400": a module past this wants splitting


@pytest.mark.parametrize("module", ["template.wire", "template.config.run", "template.config.cli"])
def test_wire_and_config_import_no_torch(module):
    """Clients that only parse messages or flags must not pay for torch (seconds, hundreds of MB)."""
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'numpy', 'scipy') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing {module} pulled in {out.stdout.strip()}"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_package_says_what_lives_there(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 15, f"{package}/__init__.py needs a docstring saying what lives there"


def test_no_module_is_too_long():
    roots = [REPO / d for d in ("template", "orchestrator", "neurons", "utils")]
    long = {
        str(f.relative_to(REPO)): n
        for root in roots
        for f in root.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize("name", ["miner.py", "meta_miner.py", "validator.py"])
def test_neurons_are_thin_entry_points(name):
    lines = len((REPO / "neurons" / name).read_text().splitlines())
    assert lines <= 130, f"neurons/{name} has {lines} lines: its logic belongs in template/"
