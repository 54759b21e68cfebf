"""The layout the README's Architecture section describes: small files, no import circles, and no
import from a lower floor to a higher one (every import counts, the ones inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loaders", "benchmarks", "sd4match", "leaderboard")
MAX_LINES = 400

#: package floors: a module imports only from its own floor's package or lower ones
FLOORS = {"loaders": 0, "benchmarks": 1, "leaderboard": 2, "sd4match": 2}
#: inside sd4match: backbones < prompts, checkpoint, convert < methods < training, tools
SD_FLOORS = {"backbones": 0, "prompts": 1, "checkpoint": 1, "convert": 1, "methods": 2, "training": 3, "tools": 3,
             "train": 4}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "bench" in path.relative_to(ROOT).parts[1:2]:
                continue
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names]
            # "from pkg import module" depends on the module; "from pkg import name" on pkg itself
            targets = [t for t in subs if t in known] or [mod]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_import_circle():
    graph = _graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_no_import_from_a_lower_floor_to_a_higher_one():
    bad = []
    for mod, deps in _graph().items():
        top = mod.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if other != top and (FLOORS[other] >= FLOORS[top]):
                bad.append(f"{mod} -> {dep}")
            if top == other == "sd4match" and len(mod.split(".")) > 1 and len(dep.split(".")) > 1:
                a, b = mod.split(".")[1], dep.split(".")[1]
                if a in SD_FLOORS and b in SD_FLOORS and SD_FLOORS[b] > SD_FLOORS[a]:
                    bad.append(f"{mod} -> {dep}")
    assert not bad, "imports from a lower floor to a higher one: " + ", ".join(sorted(bad))


def test_benchmarks_know_matchers_only_through_the_registry():
    """benchmarks never imports a method; the registry names them as strings."""
    graph = _graph()
    assert not [f"{m} -> {d}" for m, deps in graph.items() if m.startswith("benchmarks") for d in deps
                if d.startswith("sd4match")]
    from benchmarks import registry

    for name, entry in registry.entries().items():
        if entry.target.startswith("sd4match."):
            assert entry.target.startswith("sd4match.methods."), (name, entry.target)
