#!/usr/bin/env bash
# The test command: bash scripts/test.sh [pytest args...]
# Creates .venv if needed, installs the provider with its test extra, starts the local databases
# when they are not answering, then runs the whole pytest suite (simulator over loopback, real
# PostgreSQL/MariaDB/SQLite, real Airflow).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
