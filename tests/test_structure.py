"""The package's shape: no import cycles between tavaal's modules, and the config a leaf."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "tavaal"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path) -> set[str]:
    """The tavaal modules ``path`` imports when it is imported (module level, not inside functions)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from tavaal import oracle`
    return {m for m in out if m == "tavaal" or m.startswith("tavaal.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in top_level_imports(p) if i in modules and i != m} for m, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (depth-first search; each reported once, as the path that closes it)."""
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(g[m]):
            if m.startswith(n + "."):  # a submodule importing its own package runs after the package's __init__
                continue
            if state.get(n) == "open":
                found.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_cycles_between_tavaal_modules():
    g = graph()
    assert len(g) > 50 and "tavaal.tracking.tracker" in g and "tavaal.backends.ray.backend" in g
    assert cycles(g) == []


def test_the_search_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_config_is_a_leaf():
    g = graph()
    assert g["tavaal.config"] <= {"tavaal", "tavaal.errors", "tavaal.registry"}
    assert g["tavaal.registry"] <= {"tavaal", "tavaal.errors"}
