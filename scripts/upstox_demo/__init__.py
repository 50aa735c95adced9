"""The demo behind ``bash scripts/demo.sh``: a local Upstox simulator, real Airflow, a SQLite store.

``common`` starts the simulator and builds the Airflow environment, ``batch`` runs the DAGs once and
prints a summary, ``ui`` keeps Airflow running with its web UI until Ctrl-C. Only the provider and
its runtime dependencies are needed (no database server, no test tools).
"""
