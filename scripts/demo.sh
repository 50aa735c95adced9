#!/usr/bin/env bash
# The demo command: bash scripts/demo.sh [--seconds N]
# On a fresh machine: creates .venv, installs the provider, starts the local Upstox simulator,
# points the `upstox_default` and `upstox_db` connections at it and at a SQLite file, runs the
# continuous stream DAG for a while and then the reconciliation DAG with real Airflow, and prints
# a summary. Everything it writes goes to a temporary directory (--keep keeps it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
SKIP_SERVICES=1 bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV/bin/python" scripts/demo.py "$@"
