"""The simulator's and the stream client's shape: no import circle, no reaching into others' privates.

Read from the source with ``ast`` (not by importing), so an import hidden under ``TYPE_CHECKING`` or
inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from airflow_provider_upstox.simulator import RunningSimulator
from airflow_provider_upstox.simulator.routing import Route, Router

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_upstox"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str) -> set[str]:
    """Modules of *package* that *path* imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # ``from pkg import module`` imports a module too
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith(package + ".")}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    package = _module_name(package_dir / "__init__.py")
    files = {_module_name(p): p for p in package_dir.glob("*.py")}
    return {
        name: {dep for dep in _imports(path, package) if dep in files and dep != name}
        for name, path in files.items()
        if not name.endswith(("__init__", "__main__")) and name != package
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of *graph* (as a path that ends where it starts), or ``None``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("part", ["simulator", "stream", "client"])
def test_no_import_circle(part: str) -> None:
    graph = import_graph(PACKAGE / part)
    assert graph, f"no modules found in {part}/"
    assert find_cycle(graph) is None


def test_the_server_is_imported_by_no_other_simulator_module() -> None:
    graph = import_graph(PACKAGE / "simulator")
    importers = {name for name, deps in graph.items() if "airflow_provider_upstox.simulator.server" in deps}
    assert importers <= {"airflow_provider_upstox.simulator.thread"}


@pytest.mark.parametrize("part", ["simulator", "stream"])
def test_no_private_attribute_of_another_object(part: str) -> None:
    """``x._name`` only on ``self``/``cls``: no call of another class's (or library's) privates."""
    offenders = []
    for path in sorted((PACKAGE / part).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_stream_client_reads_no_websockets_internals() -> None:
    source = (PACKAGE / "stream" / "client.py").read_text()
    assert "recv_messages" not in source
    assert ".frames" not in source


async def _ok(_: object) -> None:
    return None


def test_router_refuses_a_path_twice_and_prefers_exact_paths() -> None:
    router = Router([Route("/a", _ok), Route("/x/", _ok, prefix=True), Route("/x/y/", _ok, prefix=True)])
    with pytest.raises(ValueError, match="already routes '/a'"):
        router.add([Route("/a", _ok)])
    exact = Route("/x/y/z", _ok)
    router.add([exact])
    assert router.resolve("/x/y/z") is exact
    resolved = router.resolve("/x/y/w")
    assert resolved is not None
    assert resolved.path == "/x/y/"  # the longest prefix wins
    assert router.resolve("/nothing") is None


def test_wrong_method_on_a_routed_path_is_405(simulator: RunningSimulator) -> None:
    r = httpx.post(simulator.base_url + "/v2/user/profile", trust_env=False)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET"
    assert r.json()["errors"][0]["error_code"] == "UDAPI10000"
