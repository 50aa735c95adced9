"""Airflow plugin of the provider: the *Upstox tokens* page and its endpoints (issue 16).

Registered through the ``airflow.plugins`` entry point; see :mod:`.upstox_tokens`. Modules here run
in the API server only (they use the metadata DB and the API server's auth manager).
"""
