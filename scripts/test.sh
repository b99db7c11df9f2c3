#!/usr/bin/env bash
# Run the test suite: create/refresh the project virtualenv when needed, then pytest.
#
#   bash scripts/test.sh                 # whole suite
#   bash scripts/test.sh -q tests/unit/test_config.py -k endpoint
#
# Environment:
#   TENSORSWARM_VENV         virtualenv to use (default: <repo>/.venv)
#   PYTHON                   interpreter that creates the virtualenv (default: python3)
#   TENSORSWARM_NODE_ENDPOINT ws://... of a real subtensor node for the tests marked real_node (skipped when unset)
set -euo pipefail

log() { printf 'test.sh: %s\n' "$*" >&2; }
# shellcheck source=scripts/_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv

CACHE_DIR="$(mktemp -d -t tensorswarm-cache.XXXXXX)"
trap 'rm -rf "$CACHE_DIR"' EXIT

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
# Two workers (pytest-xdist): the swarms one at a time on one, the rest on the other (tests/conftest.py
# SWARMS). TENSORSWARM_TEST_WORKERS=0 runs in one process; an explicit -n wins.
workers="${TENSORSWARM_TEST_WORKERS:-2}"
case " ${args[*]-} " in *" -n "* | *" -n"[0-9]* | *" --numprocesses"*) workers="" ;; esac
if [[ -n "$workers" && "$workers" != 0 ]]; then
    args=(-n "$workers" --dist loadgroup ${args[@]+"${args[@]}"})
fi
set +e
"$VENV/bin/python" -m pytest ${args[@]+"${args[@]}"}
rc=$?
set -e
exit "$rc"
