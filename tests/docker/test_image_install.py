"""The image's install step, run without Docker: the Dockerfile's own RUN line in a clean virtualenv.

There is no Docker engine on the build machines, and the part of ``docker build`` that can break is
dependency resolution. So this test lays out the files the Dockerfile's ``COPY`` lines put under
``/opt/airflow`` into a temporary root, then runs the Dockerfile's ``RUN`` line itself (its paths moved
under that root, its build args at their defaults, ``AIRFLOW_VERSION`` as the base image sets it) with
a new virtualenv's ``python`` first on PATH. That is the same ``pip install`` with the same constraints
file. What is left out is only what the base image adds: its preinstalled packages.

Slow (a real, uncached install from the package index: a minute or more). Run it with
``pytest tests/docker -m slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.docker.dockerfile_model import REPO, base_image, build_args, constraint_pins, copies, normalize, of

IMAGE_HOME = "/opt/airflow"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".mypy_cache", ".ruff_cache")


def _lay_out_copies(root: Path) -> None:
    """Do the Dockerfile's COPY lines into ``root`` (Docker semantics: a directory's contents)."""
    for copy in copies():
        dest = root / copy.dest.lstrip("/")
        for source in copy.sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, dest, ignore=_SKIP, dirs_exist_ok=True)
            else:
                target = dest / path.name if copy.dest.endswith("/") else dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def _run(argv: list[str], env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{argv}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
    )
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dockerfile_install_step_succeeds_in_a_clean_venv(tmp_path: Path) -> None:
    root = tmp_path / "image"
    _lay_out_copies(root)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"

    _, airflow_version, python_version = base_image()
    assert (
        _run(
            [str(python), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"], {}
        ).strip()
        == python_version
    )

    runs = of("RUN")
    assert len(runs) == 1
    command = runs[0].args.replace(IMAGE_HOME, str(root / IMAGE_HOME.lstrip("/")))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV")
    }
    env.update(build_args())  # ARG values are environment variables of RUN
    env.update(
        PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(env_dir),
        AIRFLOW_VERSION=airflow_version,  # set by the official base image
        PIP_NO_INPUT="1",
        AIRFLOW_HOME=str(tmp_path / "airflow-home"),
        UPSTOX_CONN_IDS="upstox_default",
    )
    output = _run(["bash", "-c", command], env, timeout=1100)
    assert "installed airflow-provider-upstox" in output

    # The RUN line removes the source tree; the constraints and scripts stay for derived images.
    upstox_dir = root / "opt/airflow/upstox"
    assert not (upstox_dir / "src").exists()
    assert {path.name for path in upstox_dir.iterdir()} == {
        "constraints.txt",
        "install-provider.sh",
        "demo-setup.sh",
    }

    # Everything installed that the constraints pin is at the pinned version.
    pins = constraint_pins()
    frozen = _run([str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"], env)
    for line in frozen.splitlines():
        name, _, installed = line.partition("==")
        if normalize(name) in pins:
            assert installed == pins[normalize(name)], name
    assert "apache-airflow-providers-postgres==" in frozen  # the default PROVIDER_EXTRAS=postgres

    # Airflow finds the provider, and the DAGs the image ships parse without errors.
    probe = f"""
import json
from airflow.providers_manager import ProvidersManager
from airflow.dag_processing.dagbag import DagBag
providers = ProvidersManager().providers
bag = DagBag(dag_folder={str(root / "opt/airflow/dags")!r})
print(json.dumps({{"provider": "airflow-provider-upstox" in providers,
                  "conn_types": sorted(ProvidersManager().hooks),
                  "dags": sorted(bag.dag_ids), "errors": bag.import_errors}}))
"""
    report = _run([str(python), "-c", probe], env, timeout=300).strip().splitlines()[-1]
    result = json.loads(report)
    assert result["provider"] is True
    assert "upstox" in result["conn_types"]
    assert result["errors"] == {}
    assert result["dags"] == [
        "upstox_portfolio_events",
        "upstox_portfolio_stream",
        "upstox_reconcile",
        "upstox_token_renewal",
    ]
