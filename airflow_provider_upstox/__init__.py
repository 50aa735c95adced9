"""Apache Airflow provider for the Upstox Portfolio Stream Feed."""

__version__ = "0.1.0"
