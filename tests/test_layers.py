"""The layering rules of docs/architecture.md, checked on the source: no import cycle among
project modules, and no layer importing one it must not.

Every import counts, at module level, inside functions and under TYPE_CHECKING alike: a
cycle hidden behind a lazy import is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import moqrelay

ROOT = Path(moqrelay.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names; relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: {imported for imported in imports_of(name, path) if imported in modules} - {name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def offenders(graph: dict[str, set[str]], importer: str, forbidden: tuple[str, ...]) -> list[str]:
    """Imports by modules under ``importer`` of anything under ``forbidden``."""
    return sorted(
        f"{name} -> {imported}"
        for name, imported_set in graph.items()
        if name == importer or name.startswith(importer + ".")
        for imported in imported_set
        if any(imported == f or imported.startswith(f + ".") for f in forbidden)
    )


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.graph = project_graph()

    def test_the_walk_sees_the_project(self) -> None:
        self.assertIn("moqrelay.relay.hub", self.graph)
        self.assertIn("moqrelay.relay.peer", self.graph["moqrelay.relay.hub"])
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))

    def test_no_import_cycle(self) -> None:
        self.assertIsNone(find_cycle(self.graph))

    def test_wire_is_pure(self) -> None:
        for name, path in project_modules().items():
            if name.startswith("moqrelay.wire"):
                third_party = {i.split(".")[0] for i in imports_of(name, path)}
                self.assertNotIn("twisted", third_party, name)
        outside = [
            line
            for line in offenders(self.graph, "moqrelay.wire", ("moqrelay",))
            if not line.split(" -> ")[1].startswith("moqrelay.wire")
        ]
        self.assertEqual(outside, [])

    def test_relay_imports_no_concrete_transport(self) -> None:
        concrete = (
            "moqrelay.transport.quic",
            "moqrelay.transport.webtransport",
            "moqrelay.transport.websocket",
            "moqrelay.transport.connect",
        )
        self.assertEqual(offenders(self.graph, "moqrelay.relay", concrete), [])
        self.assertEqual(offenders(self.graph, "moqrelay.session", concrete), [])

    def test_the_server_imports_no_client_module(self) -> None:
        for server in (
            "moqrelay.relay",
            "moqrelay.session",
            "moqrelay.transport",
            "moqrelay.service",
            "moqrelay.tap",
            "moqrelay.web",
            "moqrelay.reactor",
        ):
            self.assertEqual(offenders(self.graph, server, ("moqrelay.client",)), [])

    def test_no_layer_imports_the_application_layer(self) -> None:
        for lower in ("moqrelay.relay", "moqrelay.session", "moqrelay.transport", "moqrelay.wire"):
            self.assertEqual(
                offenders(self.graph, lower, ("moqrelay.service", "moqrelay.tap")), []
            )
