"""Airflow hooks: :class:`~airflow_provider_upstox.hooks.upstox.UpstoxHook` (import it from its module)."""
