"""A small reader of ``docker/Dockerfile`` and the constraints file, shared by the docker tests.

Enough of the Dockerfile syntax for our file: comments, line continuations, the exec-less (shell)
form of ``RUN``, ``COPY --chown=... SRC... DEST``, ``ARG NAME=default``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
CONSTRAINTS = REPO / "constraints" / "constraints-3.11.txt"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuations joined


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    chown: str | None


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Logical instructions: comments and the parser directive dropped, ``\\`` continuations joined."""
    result: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return result


def of(keyword: str, path: Path = DOCKERFILE) -> list[Instruction]:
    return [instruction for instruction in instructions(path) if instruction.keyword == keyword]


def copies(path: Path = DOCKERFILE) -> list[Copy]:
    result = []
    for instruction in of("COPY", path):
        words = shlex.split(instruction.args)
        flags = [word for word in words if word.startswith("--")]
        paths = [word for word in words if not word.startswith("--")]
        chown = next((flag.split("=", 1)[1] for flag in flags if flag.startswith("--chown=")), None)
        result.append(Copy(tuple(paths[:-1]), paths[-1], chown))
    return result


def build_args(path: Path = DOCKERFILE) -> dict[str, str]:
    args = {}
    for instruction in of("ARG", path):
        name, _, default = instruction.args.partition("=")
        args[name] = default
    return args


def base_image(path: Path = DOCKERFILE) -> tuple[str, str, str]:
    """``(repository, airflow_version, python_version)`` of the single FROM line."""
    froms = of("FROM", path)
    assert len(froms) == 1, "one stage expected"
    match = re.fullmatch(
        r"(?P<repo>[\w./-]+):(?P<airflow>\d+\.\d+\.\d+)-python(?P<python>\d+\.\d+)", froms[0].args
    )
    assert match, f"FROM must pin an exact version, e.g. apache/airflow:3.3.2-python3.11: {froms[0].args!r}"
    return match["repo"], match["airflow"], match["python"]


def constraint_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not a pin: {line!r}"
            pins[normalize(name)] = version.strip()
    return pins


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()
