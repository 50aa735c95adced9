#!/usr/bin/env bash
# Prepare a machine for the provider's tests and demo: a virtualenv with the provider installed
# (editable, with the test extra, pinned by the constraints file) and the local database servers.
# Idempotent and quiet when everything is already there. Sourced or run; honours:
#   VENV   where the virtualenv lives (default: .venv in the repository)
#   SKIP_SERVICES=1  do not try to start PostgreSQL/MariaDB
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CONSTRAINTS="$ROOT/constraints/constraints-3.11.txt"

pick_python() {
    for py in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
            echo "$py"; return 0
        fi
    done
    echo "no Python >= 3.10 found" >&2; return 1
}

# mysqlclient (needed by apache-airflow-providers-mysql, which the test extra installs for the
# MySqlHook tests) has no Linux wheels: it builds from source against the MySQL/MariaDB client
# library. As root on Debian/Ubuntu (CI) install the headers; otherwise say what is missing before
# pip fails on it. The demo (scripts/demo.sh) does not use this script and needs none of it.
if ! pkg-config --exists mysqlclient 2>/dev/null && [ "$(uname -s)" = Linux ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing the MariaDB client headers (default-libmysqlclient-dev, pkg-config)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-libmysqlclient-dev pkg-config build-essential >/dev/null
    elif [ ! -f "$VENV/.upstox-provider-installed" ]; then
        echo "bootstrap: the test extra compiles mysqlclient and pkg-config finds no MySQL client headers;" >&2
        echo "  install them first (Debian/Ubuntu: sudo apt-get install pkg-config default-libmysqlclient-dev" >&2
        echo "  build-essential; Fedora: sudo dnf install pkgconf mariadb-connector-c-devel gcc)" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(pick_python)"
    echo "bootstrap: creating virtualenv $VENV with $PY"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# Reinstall only when the dependency declarations changed.
STAMP="$VENV/.upstox-provider-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "bootstrap: installing the provider and its test dependencies (pinned by $CONSTRAINTS)"
    CONSTRAINT_ARGS=()
    [ -f "$CONSTRAINTS" ] && CONSTRAINT_ARGS=(-c "$CONSTRAINTS")
    "$VENV/bin/python" -m pip install -q "${CONSTRAINT_ARGS[@]}" -e "${ROOT}[test]"
    echo "$WANT" > "$STAMP"
fi

# The UI test drives Debian's Chromium (a test tool's own browser download cannot work offline).
# Under CI it must run, so install it there; locally the test skips when Chromium is absent.
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian's chromium for the UI test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ "${SKIP_SERVICES:-0}" != "1" ]; then
    if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
        echo "bootstrap: starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" | sort | head -n1)" main start || true
    fi
    if command -v mariadb-admin >/dev/null 2>&1 && ! mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
        echo "bootstrap: starting MariaDB"
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    fi
    for _ in $(seq 1 30); do
        ok=1
        command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 && ok=0
        command -v mariadb-admin >/dev/null 2>&1 && ! mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1 && ok=0
        [ "$ok" = 1 ] && break
        sleep 1
    done
fi
