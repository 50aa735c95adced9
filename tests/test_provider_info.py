"""Provider metadata: valid against the schemas shipped inside Airflow, and seen by Airflow."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from airflow_provider_upstox import __version__
from airflow_provider_upstox.get_provider_info import get_provider_info


def _airflow_schema(name: str) -> dict[str, Any]:
    import airflow

    path = Path(airflow.__file__).parent / name
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return get_provider_info()


def test_valid_against_provider_info_schema(info: dict[str, Any]) -> None:
    jsonschema.validate(info, _airflow_schema("provider_info.schema.json"))


def test_connection_types_valid_against_provider_yaml_schema(info: dict[str, Any]) -> None:
    """provider_info.schema.json leaves connection-types open; provider.yaml's schema checks
    ``conn-fields`` and ``ui-field-behaviour`` strictly (the declarative form of Airflow 3.2+)."""
    schema = _airflow_schema("provider.yaml.schema.json")
    jsonschema.validate(info["connection-types"], schema["properties"]["connection-types"])


def test_package_name_is_distribution_name(info: dict[str, Any]) -> None:
    dist = importlib.metadata.distribution(info["package-name"])
    assert dist.metadata["Name"] == "airflow-provider-upstox"
    assert info["versions"][0] == __version__ == dist.version


def test_entry_point_points_here() -> None:
    eps = importlib.metadata.entry_points(group="apache_airflow_provider")
    ours = [ep for ep in eps if ep.value == "airflow_provider_upstox.get_provider_info:get_provider_info"]
    assert len(ours) == 1
    assert ours[0].load()() == get_provider_info()


def test_connection_form(info: dict[str, Any]) -> None:
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "upstox"
    behaviour = conn["ui-field-behaviour"]
    assert set(behaviour["hidden-fields"]) == {"login", "schema", "port"}
    assert behaviour["relabeling"] == {"password": "Access token", "host": "Base URL"}
    assert behaviour["placeholders"]["host"] == "https://api.upstox.com"
    fields = conn["conn-fields"]
    assert set(fields) == {
        "update_types", "timeout", "verify", "client_id", "client_secret", "redirect_uri", "user_id",
    }  # fmt: skip
    # token renewal fields are optional (a token-only connection keeps working), the secret masked
    assert all("null" in fields[name]["schema"]["type"] for name in ("client_id", "client_secret", "user_id"))
    assert fields["client_secret"]["schema"]["format"] == "password"
    assert fields["update_types"]["schema"]["default"] == "order,position,holding,gtt_order"
    assert fields["verify"]["schema"]["default"] is True


def test_declared_classes_import(info: dict[str, Any]) -> None:
    from airflow_provider_upstox.hooks.upstox import UpstoxHook

    (conn,) = info["connection-types"]
    module, _, name = conn["hook-class-name"].rpartition(".")
    hook = getattr(importlib.import_module(module), name)
    assert hook is UpstoxHook
    assert (hook.conn_type, hook.conn_name_attr, hook.default_conn_name, hook.hook_name) == (
        "upstox",
        "upstox_conn_id",
        "upstox_default",
        conn["hook-name"],
    )
    assert info["hook-class-names"] == [conn["hook-class-name"]]


def test_update_types_pattern_matches_what_the_hook_accepts(info: dict[str, Any]) -> None:
    import re

    pattern = re.compile(info["connection-types"][0]["conn-fields"]["update_types"]["schema"]["pattern"])
    assert pattern.match("order,position,holding,gtt_order")
    assert pattern.match(" order , gtt_order ")
    assert not pattern.match("order,trades")


def test_airflow_providers_list_shows_the_provider(airflow_env: Any) -> None:
    """The real CLI, in a subprocess: a package-name mismatch or a broken entry point shows here."""
    proc = airflow_env.run("providers", "list", "-o", "json")
    providers = {p["package_name"]: p for p in json.loads(proc.stdout[proc.stdout.index("[") :])}
    assert "airflow-provider-upstox" in providers
    assert providers["airflow-provider-upstox"]["version"] == __version__
    assert "airflow-provider-upstox" not in proc.stderr  # no import or validation warning about us


def test_airflow_registers_the_connection_type(airflow_env: Any) -> None:
    proc = airflow_env.run("providers", "hooks", "-o", "json")
    hooks = {h["connection_type"]: h for h in json.loads(proc.stdout[proc.stdout.index("[") :])}
    assert hooks["upstox"]["class"] == "airflow_provider_upstox.hooks.upstox.UpstoxHook"
