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
