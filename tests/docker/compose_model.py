"""Just enough of Docker Compose, in Python, to check our compose files without a Docker engine.

There is no Docker engine on the build machines, so ``docker compose config`` cannot validate the
files. This module does the parts of it that our checks depend on, following the Compose
specification: YAML loading (anchors and ``<<`` merge keys are resolved by the YAML parser),
variable interpolation (``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}``), merging of override files
(mappings merge key by key, the later file winning; ``ports``/``expose``/``volumes`` sequences
append) and ``extends`` (the extended service's settings under the local ones, ``depends_on`` never
inherited). It is deliberately small: anything our files do not use is not implemented.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
BASE_FILE = DOCKER_DIR / "docker-compose.yaml"
CELERY_FILE = DOCKER_DIR / "docker-compose.celery.yaml"

_TOKEN = re.compile(
    r"\$\$"  # escaped dollar
    r"|\$\{(?P<braced>[^}]*)\}"  # ${...}
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"  # $VAR
)
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)
# Sequences that Compose merges by appending (the rest are replaced by the override's value).
_APPENDED = {"ports", "expose", "volumes", "dns", "external_links", "extra_hosts", "secrets", "configs"}


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is missing, or a malformed reference."""


def load_raw(path: Path) -> dict[str, Any]:
    """The YAML document as parsed (anchors and merge keys resolved, no interpolation)."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def variables_in(value: Any) -> set[str]:
    """Every variable name that interpolation of ``value`` may read (not ``$$`` escapes)."""
    found: set[str] = set()
    for text in _strings(value):
        for match in _TOKEN.finditer(text):
            if match.group("plain"):
                found.add(match.group("plain"))
            elif match.group("braced") is not None:
                parsed = _BRACED.match(match.group("braced"))
                if parsed:
                    found.add(parsed.group("name"))
    return found


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with every string interpolated from ``env`` as Compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return _TOKEN.sub(lambda match: _substitute(match, env), value)
    return value


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    if match.group("plain"):
        return env.get(match.group("plain"), "")
    parsed = _BRACED.match(match.group("braced"))
    if not parsed:
        raise InterpolationError(f"invalid interpolation {match.group(0)!r}")
    name, op, arg = parsed.group("name"), parsed.group("op"), parsed.group("arg") or ""
    value = env.get(name)
    if op is None:
        return value or ""
    # With a colon the operator treats an empty value as unset, as in the shell.
    present = bool(value) if op.startswith(":") else value is not None
    if op in (":-", "-"):
        return value if present and value is not None else str(interpolate(arg, env))
    if op in (":?", "?"):
        if not present:
            raise InterpolationError(f"required variable {name} is missing a value: {arg}")
        return value or ""
    return str(interpolate(arg, env)) if present else ""  # ":+" and "+"


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []


def merge(base: Any, override: Any, key: str | None = None) -> Any:
    """Compose's merge of one override value onto a base value."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            merged[name] = merge(base[name], value, name) if name in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key in _APPENDED:
        return [*base, *[item for item in override if item not in base]]
    return copy.deepcopy(override)


def resolve_extends(services: dict[str, Any], source_dir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Replace every ``extends`` by the extended service's settings under the local ones."""
    resolved: dict[str, Any] = {}
    for name, service in services.items():
        service = dict(service)
        extends = service.pop("extends", None)
        if extends is not None:
            if "file" in extends:
                other = interpolate(load_raw(source_dir / extends["file"]), env)["services"]
            else:
                other = services
            parent = dict(other[extends["service"]])
            parent.pop("depends_on", None)  # never shared through extends
            parent.pop("extends", None)
            service = merge(parent, service)
        resolved[name] = service
    return resolved


def load_project(*files: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The effective project of ``docker compose -f files[0] -f files[1] ...`` (all profiles)."""
    project: dict[str, Any] = {}
    for path in files:
        document = interpolate(load_raw(path), env)
        document["services"] = resolve_extends(document.get("services", {}), path.parent, env)
        project = merge(project, document)
    return project


def active_services(project: Mapping[str, Any], profiles: set[str]) -> set[str]:
    """The services ``docker compose --profile p ... up`` starts: no profile, or one enabled."""
    return {
        name
        for name, service in project["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }
