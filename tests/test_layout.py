"""The package's layout holds: no import cycle (lazy imports inside functions count), plumbing above the
algorithms (an algorithm never imports an engine, the course or the exercises), and package data readable
from an installed package (not from the repository)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quantedu"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every ``quantedu`` module each module imports, anywhere in its code (module level or in a function)."""
    edges: dict[str, set[str]] = {}
    for mod, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("quantedu"):
                    targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("quantedu")]
            edges.setdefault(mod, set()).update(t for t in targets if t in mods and t != mod)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert _cycles(_imports(_modules())) == []


PLUMBING = ("quantedu.engines", "quantedu.course", "quantedu.exercises")


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else mod


@pytest.mark.parametrize("lower,forbidden", [
    ("algorithms and basics (the top level)", PLUMBING),
    ("quantedu.gguf", PLUMBING),
    ("quantedu.export", PLUMBING),
    ("quantedu.engines", ("quantedu.course", "quantedu.exercises")),
])
def test_layers_import_downwards_only(lower, forbidden):
    mods = _modules()
    edges = _imports(mods)
    if lower.startswith("algorithms"):
        sources = [m for m, f in mods.items() if m.count(".") == 1 and f.name != "__init__.py" and m != "quantedu.cli"]
    else:
        sources = [m for m in mods if m == lower or m.startswith(lower + ".")]
    wrong = sorted((m, t) for m in sources for t in edges.get(m, ()) if _layer(t) in forbidden)
    assert not wrong, f"{lower} must not import {forbidden}: {wrong}"


def test_package_data_is_read_through_the_package():
    """The seed's quoted tables and the quizzes ship in the wheel and are found from the installed package."""
    from quantedu.course import quiz
    from quantedu.course.seed import FILES, seed_csv

    for name in FILES:
        assert len(seed_csv(name)) > 0
    assert sorted(p.stem for p in quiz.QUIZ_DIR.glob("*.json"))
    for f in PACKAGE.rglob("*.py"):  # no module reaches for the repository's folders
        text = f.read_text()
        assert 'parents[1] / "data"' not in text and '"benchmarks"' not in text, f


def test_no_module_over_400_lines():
    long = {str(f.relative_to(PACKAGE)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"
