# Sourced by scripts/test.sh and scripts/demo.sh: create/refresh the project virtualenv.
#   ensure_venv   → $VENV/bin/python has torch (pinned first), the project (editable) and its dev extra
# Environment: TENSORSWARM_VENV (default <repo>/.venv), PYTHON (interpreter that creates it; python3).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TENSORSWARM_VENV:-$REPO/.venv}"
PY_BOOT="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"
STAMP="$VENV/.tensorswarm-install-stamp"

# pip prints harmless "Location file:///opt/... is ignored" warnings here; keep its
# output in a log and show it only when a step fails.
_pip_quiet() {
    local pip_log
    pip_log="$(mktemp -t tensorswarm-pip.XXXXXX)"
    if ! "$VENV/bin/python" -m pip "$@" >"$pip_log" 2>&1; then
        log "pip $* failed:"
        cat "$pip_log" >&2
        rm -f "$pip_log"
        return 1
    fi
    rm -f "$pip_log"
}

_installed_ok() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$1" ]] || return 1
    # Cheap check (no imports) that nothing was removed behind the stamp's back.
    (cd / && "$VENV/bin/python" - <<'PYEOF'
import importlib.util, sys
mods = ("torch", "bittensor", "fastapi", "rich", "pytest", "pytest_timeout", "xdist", "hypothesis", "template")
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
PYEOF
    ) >/dev/null 2>&1
}

ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating virtualenv at $VENV"
        "$PY_BOOT" -m venv "$VENV"
    fi
    # Whatever decides what gets installed: the dependency list, where the repo lives
    # (the install is editable), the interpreter, and this install recipe.
    local want
    want="$(
        {
            cat "$REPO/pyproject.toml"
            printf '%s\n' "$REPO" "$TORCH_PIN" "recipe=1"
            "$VENV/bin/python" -c 'import sys; print(sys.version)'
        } | sha256sum | cut -d' ' -f1
    )"
    if ! _installed_ok "$want"; then
        log "installing dependencies into $VENV (first run or pyproject.toml changed; a minute or two)"
        rm -f "$STAMP"
        _pip_quiet install -q --upgrade pip || log "pip self-upgrade failed; continuing with the installed pip"
        # torch first and pinned: an unpinned torch resolves to the newest CUDA build (GBs).
        _pip_quiet install -q "$TORCH_PIN"
        _pip_quiet install -q -e "$REPO[dev]"
        printf '%s\n' "$want" >"$STAMP"
    fi
}
