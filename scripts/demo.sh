#!/usr/bin/env bash
# The whole subnet on this machine in one command: creates/uses the project virtualenv
# (installs torch==2.13.0 first, then the project), initializes a fresh embedded chain,
# starts the orchestrator, the meta-miners (each runs its miner) and the validators, trains
# the tiny preset with live progress, and prints a summary read back from the chain.
#
#   bash scripts/demo.sh                                   # 3 miners, 1 validator, 180 s of training
#   bash scripts/demo.sh --miners 4 --validators 2 --duration 300 --dir /tmp/demo
#   bash scripts/demo.sh --help
#
# Ctrl-C (or any failure) stops every process it started. Logs and state: ./demo (or --dir).
# Environment: TENSORSWARM_VENV (default <repo>/.venv), PYTHON (interpreter for the virtualenv).
set -euo pipefail

log() { printf 'demo.sh: %s\n' "$*" >&2; }
# shellcheck source=scripts/_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv

cd "$REPO"
export PYTHONUNBUFFERED=1
exec "$VENV/bin/python" scripts/demo.py "$@"
