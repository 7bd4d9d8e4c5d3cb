"""The architecture holds: no import cycle anywhere (imports inside functions and under TYPE_CHECKING count), no
module imports the root package, the top of the package stays small, and the command line's help and usage errors
load no torch. import-linter checks the layer order itself (``lint-imports``, run by ``make test``); this file
checks, from the source alone, what a layers contract cannot say."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_lens"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, wherever the import statement stands (``from p import m`` is an import
    of ``p.m`` when that is a module, else of ``p``)."""
    found = set()
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = here[:len(here) - node.level + 1]
                base = ".".join(prefix + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
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
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    known = {"pkg": tmp_path / "__init__.py", "pkg.low": tmp_path / "low.py", "pkg.high": tmp_path / "high.py"}
    (tmp_path / "low.py").write_text("def f():\n    from .high import g\n")
    assert imports("pkg.low", tmp_path / "low.py", known) == {"pkg.high"}


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_nothing_inside_imports_the_root_package():
    offenders = sorted(name for name, targets in graph().items() if "vlm_lens" in targets and name != "vlm_lens")
    assert offenders == []


def test_the_top_of_the_package_holds_at_most_three_files():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 3, top


def test_testing_is_imported_by_no_module_of_the_package():
    users = sorted(name for name, targets in graph().items()
                   if any(t == "vlm_lens.testing" or t.startswith("vlm_lens.testing.") for t in targets)
                   and not name.startswith("vlm_lens.testing"))
    assert users == []


@pytest.mark.parametrize("argv", [["--help"], ["trace", "--help"], ["run", "--help"], ["compare", "--help"],
                                  ["eval", "--help"], ["demo", "--help"], ["fit-lens", "--help"], ["run", "model.pt"],
                                  ["nonsense"], ["run", "m", "data.txt", "--out", "x"],
                                  ["fit-lens", "m", "data.txt", "--out", "x"]])
def test_help_and_usage_errors_load_no_torch(argv):
    code = ("import sys\nfrom vlm_lens.cli import main\ncode = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 2), done.stderr
    assert "torch was imported" not in done.stderr


def test_every_test_module_has_its_own_basename():
    """Test folders are not packages, so pytest imports each test module by its file name: two files of one name in
    two folders collide, and a helper imported by name (``from test_reading import ...``) may come from the other."""
    names = [p.name for p in Path(__file__).parent.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
