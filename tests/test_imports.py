"""No import circles among lsvfs's modules, read from the source (not from what happens to be imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lsvfs"


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported(mod: str, f: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The lsvfs modules `node` imports; a parent package is not counted (it runs first anyway)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        pkg = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else [])) if node.level \
            else node.module or ""
        names = [base, *(f"{base}.{a.name}" for a in node.names)]
    return {n for n in names if n in known and n != mod and not mod.startswith(n + ".")}


def graph(*, runtime: bool) -> dict[str, set[str]]:
    """Module -> modules it imports, function-local imports included; with `runtime`, not those
    under `if TYPE_CHECKING:`."""
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for mod, f in known.items():
        tree = ast.parse(f.read_text())
        skip: set[int] = set()
        if runtime:
            for node in ast.walk(tree):
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    skip.update(id(n) for b in node.body for n in ast.walk(b))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                edges[mod] |= imported(mod, f, node, known)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle() -> None:
    """Control: a two-module circle and a self-contained module."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_no_import_circles_at_run_time() -> None:
    edges = graph(runtime=True)
    assert len(edges) > 40 and edges["lsvfs.shell"] and "lsvfs.cli" not in edges["lsvfs.shell"]
    assert cycles(edges) == []


def test_hydration_depends_on_a_protocol_not_on_the_replica() -> None:
    """The Hydrator is handed a `Source` (a Protocol): not even its type hints import lsvfs.replica,
    so the two cannot grow back into a circle. Control: the edge the other way is seen."""
    edges = graph(runtime=False)
    assert "lsvfs.hydration" in edges["lsvfs.replica.lifecycle"]
    assert sorted(m for m in edges["lsvfs.hydration"] if m.split(".")[:2] == ["lsvfs", "replica"]) == []
