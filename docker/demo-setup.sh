#!/usr/bin/env bash
# Unpause the demo DAGs once the dag-processor has stored them, so that
# `docker compose --profile demo up` shows data flowing without a click in the UI.
#
# Settings: UPSTOX_DEMO_DAGS (comma separated DAG ids), UPSTOX_DEMO_SETUP_ATTEMPTS (default 60) and
# UPSTOX_DEMO_SETUP_INTERVAL (seconds, default 5) bound the wait for each DAG to appear.
#
# `airflow dags unpause` of a DAG that is not in the database yet prints "No paused DAGs were found"
# and succeeds, so existence is checked first with `airflow dags details`, which fails for it.
set -uo pipefail

attempts="${UPSTOX_DEMO_SETUP_ATTEMPTS:-60}"
interval="${UPSTOX_DEMO_SETUP_INTERVAL:-5}"
IFS=, read -ra dags <<<"${UPSTOX_DEMO_DAGS:-upstox_portfolio_events,upstox_reconcile}"

for dag in "${dags[@]}"; do
    dag="${dag//[[:space:]]/}"
    [[ -z "$dag" ]] && continue
    for ((attempt = 1; attempt <= attempts; attempt++)); do
        if airflow dags details "$dag" >/dev/null 2>&1; then
            if airflow dags unpause "$dag" >/dev/null; then
                echo "unpaused $dag"
                continue 2
            fi
        fi
        ((attempt < attempts)) && sleep "$interval"
    done
    echo "could not unpause $dag: is it in the DAGs folder, and free of import errors?" >&2
    exit 1
done
