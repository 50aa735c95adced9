"""Shared test setup: fixtures live in ``tests/fixtures/`` and are loaded as plugins."""

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.databases",
    "tests.fixtures.airflow_env",
]
