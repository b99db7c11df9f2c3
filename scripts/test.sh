#!/usr/bin/env bash
# Run the test suite: create/refresh the project virtualenv when needed, then pytest.
#
#   bash scripts/test.sh                 # whole suite
#   bash scripts/test.sh -q tests/test_config.py -k endpoint
#
# Environment:
#   TENSORSWARM_VENV         virtualenv to use (default: <repo>/.venv)
#   PYTHON                   interpreter that creates the virtualenv (default: python3)
#   TENSORSWARM_E2E_ENDPOINT ws://... of a real subtensor node for the e2e tests (skipped when unset)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TENSORSWARM_VENV:-$REPO/.venv}"
PY_BOOT="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"
STAMP="$VENV/.tensorswarm-install-stamp"

log() { printf 'test.sh: %s\n' "$*" >&2; }

# pip prints harmless "Location file:///opt/... is ignored" warnings here; keep its
# output in a log and show it only when a step fails.
PIP_LOG="$(mktemp -t tensorswarm-pip.XXXXXX)"
CACHE_DIR="$(mktemp -d -t tensorswarm-cache.XXXXXX)"
cleanup() { rm -rf "$PIP_LOG" "$CACHE_DIR"; }
trap cleanup EXIT

pip_quiet() {
    if ! "$VENV/bin/python" -m pip "$@" >"$PIP_LOG" 2>&1; then
        log "pip $* failed:"
        cat "$PIP_LOG" >&2
        return 1
    fi
}

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv at $VENV"
    "$PY_BOOT" -m venv "$VENV"
fi

# Whatever decides what gets installed: the dependency list, where the repo lives
# (the install is editable), the interpreter, and this script's install recipe.
want_stamp="$(
    {
        cat "$REPO/pyproject.toml"
        printf '%s\n' "$REPO" "$TORCH_PIN" "recipe=1"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"

installed_ok() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] || return 1
    # Cheap check (no imports) that nothing was removed behind the stamp's back.
    (cd / && "$VENV/bin/python" - <<'PYEOF'
import importlib.util, sys
mods = ("torch", "bittensor", "fastapi", "pytest", "pytest_timeout", "hypothesis", "template")
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
PYEOF
    ) >/dev/null 2>&1
}

if ! installed_ok; then
    log "installing dependencies into $VENV (first run or pyproject.toml changed)"
    rm -f "$STAMP"
    pip_quiet install -q --upgrade pip || log "pip self-upgrade failed; continuing with the installed pip"
    # torch first and pinned: an unpinned torch resolves to the newest CUDA build (GBs).
    pip_quiet install -q "$TORCH_PIN"
    pip_quiet install -q -e "$REPO[dev]"
    printf '%s\n' "$want_stamp" >"$STAMP"
fi

# Keep the bittensor SDK's caches out of $HOME (read-only or shared HOMEs, parallel runs).
export BTCLI_TOKEN_SYMBOLS_CACHE="${BTCLI_TOKEN_SYMBOLS_CACHE:-$CACHE_DIR/btcli_token_symbols.json}"
export BTCLI_SUBNET_NAMES_CACHE="${BTCLI_SUBNET_NAMES_CACHE:-$CACHE_DIR/btcli_subnet_names.json}"
export BTCLI_MULTISIG_CACHE="${BTCLI_MULTISIG_CACHE:-$CACHE_DIR/btcli_multisig_cache.json}"
export BITTENSOR_RUNTIME_CACHE_DIR="${BITTENSOR_RUNTIME_CACHE_DIR:-$CACHE_DIR/runtime-cache}"
export PYTHONUNBUFFERED=1

# pytest runs from the repo root (so testpaths/rootdir apply); path arguments given
# relative to the caller's directory are made absolute first.
args=()
for a in "$@"; do
    p="${a%%::*}"
    if [[ "$a" != -* && -n "$p" && "$p" != /* && -e "$PWD/$p" && "$PWD" != "$REPO" ]]; then
        a="$PWD/$a"
    fi
    args+=("$a")
done

cd "$REPO"
set +e
"$VENV/bin/python" -m pytest ${args[@]+"${args[@]}"}
rc=$?
set -e
exit "$rc"
