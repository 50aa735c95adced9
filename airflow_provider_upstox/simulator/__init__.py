"""A local Upstox for tests, the demo and benchmarks (Airflow-free).

Serves the REST reads, the portfolio stream authorize endpoint, the SDK's direct-connect redirect
and the portfolio WebSocket on one port, from a deterministic market model, with fault switches and
a ground-truth control API under ``/_sim/``. See ``docs/ARCHITECTURE.md`` (Simulator).
"""

from airflow_provider_upstox.simulator.control import AsyncSimulatorControl, SimulatorControl
from airflow_provider_upstox.simulator.faults import SCENARIOS, Faults
from airflow_provider_upstox.simulator.model import MarketModel
from airflow_provider_upstox.simulator.server import UpstoxSimulator
from airflow_provider_upstox.simulator.thread import RunningSimulator, run_simulator_in_thread

__all__ = [
    "SCENARIOS",
    "AsyncSimulatorControl",
    "Faults",
    "MarketModel",
    "RunningSimulator",
    "SimulatorControl",
    "UpstoxSimulator",
    "run_simulator_in_thread",
]
