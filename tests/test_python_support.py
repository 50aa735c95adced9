"""The oldest supported Python is the one every static check targets.

``requires-python`` promises Python 3.10; CI runs on 3.11. Ruff's ``target-version`` (syntax) and
mypy's ``python_version`` (stdlib APIs such as ``asyncio.timeout``, ``typing.Self``, ``tomllib``)
must name that same oldest version, or a 3.11-only call slips through to 3.10 users. The
``websockets`` releases a 3.10 user gets are covered by ``tests/simulator/test_request_body.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

PYPROJECT = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()


def _setting(pattern: str) -> str:
    found = re.search(pattern, PYPROJECT, re.M)
    assert found, f"pyproject.toml has no match for {pattern!r}"
    return found.group(1)


def test_ruff_and_mypy_check_the_oldest_supported_python() -> None:
    major, minor = _setting(r'^requires-python = ">=(\d+\.\d+)"').split(".")
    assert _setting(r'^target-version = "(py\d+)"') == f"py{major}{minor}"
    assert _setting(r'^python_version = "(\d+\.\d+)"') == f"{major}.{minor}"
