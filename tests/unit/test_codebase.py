"""Standing checks on the code itself: lint and types clean, no import cycles inside lbsync."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lbsync"


def test_ruff_and_mypy_are_clean():
    for argv in ([sys.executable, "-m", "ruff", "check", "lbsync", "tests", "bench", "lab"],
                 [sys.executable, "-m", "mypy", "lbsync"]):
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr


def imports_of(path: Path) -> set[str]:
    """lbsync modules `path` imports anywhere (lazy imports inside functions count too)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            found |= {name for name in names if (ROOT / (name.replace(".", "/") + ".py")).exists()}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lbsync")}
    return found - {module}


def test_no_import_cycles():
    graph = {".".join(p.relative_to(ROOT).with_suffix("").parts): imports_of(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


# -- the harness: tests, the kit, lab and bench ------------------------------------------------

HARNESS = [ROOT / "tests", ROOT / "lab", ROOT / "bench"]


def top_imports(path: Path) -> set[str]:
    """Absolute module names `path` imports anywhere (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph`, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    return next((found for node in sorted(graph) if node not in state and (found := visit(node, [node]))), None)


def test_bench_and_kit_modules_form_no_import_cycle():
    bench = {p.stem: p for p in (ROOT / "bench").glob("*.py")}
    graph = {name: {m.split(".")[0] for m in top_imports(p)} & set(bench) for name, p in bench.items()}
    assert cycle(graph) is None, "bench import cycle: " + " -> ".join(cycle(graph) or [])
    kit = {f"kit.{p.stem}": p for p in (ROOT / "tests" / "kit").glob("*.py")}
    graph = {name: top_imports(p) & set(kit) for name, p in kit.items()}
    assert cycle(graph) is None, "kit import cycle: " + " -> ".join(cycle(graph) or [])


def test_tests_import_the_kit_not_each_other_lab_or_bench():
    """Shared test code lives in the kit; a test module, lab or bench is never imported by a test."""
    others = {p.stem for p in (ROOT / "lab").glob("*.py")} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names = {name.split(".")[0] for name in top_imports(path)}
        bad = {n for n in names if n.startswith("test_") or n in others}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_sys_path_edits_in_the_harness():
    """Imports resolve through pytest's `pythonpath` and PYTHONPATH (lab/env.sh, make bench) only."""
    for path in (p for directory in HARNESS for p in directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend"):
                target = node.value
                if isinstance(target, ast.Attribute) and target.attr == "path" and \
                        isinstance(target.value, ast.Name) and target.value.id == "sys":
                    raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno}: sys.path.{node.attr}")
