#!/usr/bin/env bash
# The demo command: bash scripts/demo.sh [--ui] [--seconds N] [--keep]
#
# Needs only Python >= 3.10 (with its venv module) and this checkout: no root, no apt-get, no
# compiler, no database server. It creates its own virtualenv (.venv-demo, or $DEMO_VENV) with the
# provider and its runtime dependencies only, pinned by the constraints file (the demo streams into
# SQLite, so no PostgreSQL/MySQL driver, test or lint tool is installed), then runs scripts/demo.py:
#   default  stream from the local Upstox simulator through real Airflow into SQLite, reconcile,
#            print a summary, exit;
#   --ui     the same, but Airflow keeps running with its web UI until Ctrl-C.
# Installer output goes to a log file, shown only when a step fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DEMO_VENV:-$ROOT/.venv-demo}"
CONSTRAINTS="$ROOT/constraints/constraints-3.11.txt"
LOG="$VENV.install.log"

say() { printf 'demo: %s\n' "$*"; }

fail_with_log() {
    say "$1 failed; the end of $LOG:" >&2
    # pip warns about every unreachable --find-links location of a machine's pip.conf: noise here.
    grep -v -e "^WARNING: Location '.*' is ignored" "$LOG" | tail -n 30 >&2 || true
    exit 1
}

pick_python() {
    for py in python3.11 python3.12 python3.13 python3.10 python3 python; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(pick_python)" || { say "needs Python 3.10 or newer on the PATH (python3.11, python3...)" >&2; exit 1; }
    say "creating the virtualenv $VENV ($("$PY" -c 'import sys; print("Python %d.%d" % sys.version_info[:2])'))"
    "$PY" -m venv "$VENV" >"$LOG" 2>&1 || fail_with_log "creating the virtualenv (is the python3-venv package installed?)"
fi

# (Re)install only when the dependency declarations changed since the last successful install.
STAMP="$VENV/.upstox-demo-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    say "installing the provider and its runtime dependencies (Airflow; a few minutes the first time; log: $LOG)"
    {
        "$VENV/bin/python" -m pip install --upgrade pip &&
        if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            "$VENV/bin/python" -m pip install -c "$CONSTRAINTS" -e "$ROOT"
        else  # the pins are for 3.11 (e.g. websockets 17 needs >= 3.11): let pip resolve for this Python
            "$VENV/bin/python" -m pip install -e "$ROOT"
        fi
    } >"$LOG" 2>&1 || fail_with_log "installing"
    echo "$WANT" >"$STAMP"
else
    say "virtualenv $VENV is up to date"
fi

cd "$ROOT"
exec "$VENV/bin/python" scripts/demo.py "$@"
