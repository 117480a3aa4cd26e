"""The package's layers import downward only (docs/architecture.md): a module of one layer imports
from its own layer and the layers listed before it, never from a later one, lazy imports inside
functions included. ``python -m diffaudit`` runs the command line."""

from __future__ import annotations

import ast
import runpy
import signal
import sys
from pathlib import Path

import pytest

import diffaudit

#: Lowest first, as diffaudit's package docstring lists them.
LAYERS = ("core", "data", "models", "sampling", "store", "distances", "attacks", "defenses", "evaluation",
          "report", "cli")
ROOT = Path(diffaudit.__file__).parent


def imported_modules(path: Path, package: tuple[str, ...]) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file at ``path``, a module of ``package``
    (relative imports resolved against it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                found.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
            else:
                found.append((node.module or "", node.lineno))
    return found


def upward_imports(root: Path) -> list[str]:
    """'file:line imports module (layer a above b)' for each import of a later layer in ``root``'s
    layer packages, and for each import of a package that is no layer."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if len(rel.parts) < 2:  # diffaudit/__init__.py and __main__.py stand above every layer
            continue
        own = rel.parts[0]
        for name, line in imported_modules(path, ("diffaudit", *rel.parts[:-1])):
            parts = name.split(".")
            if parts[0] != "diffaudit" or len(parts) < 2:
                continue
            where = f"{rel}:{line} imports {name}"
            if parts[1] not in LAYERS:
                problems.append(f"{where} (no layer)")
            elif LAYERS.index(parts[1]) > LAYERS.index(own):
                problems.append(f"{where} ({parts[1]} lies above {own})")
    return problems


def test_every_folder_of_the_package_is_a_layer():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def test_layer_order_is_the_one_the_package_docstring_states():
    assert ", ".join(LAYERS) in " ".join(diffaudit.__doc__.split())


def test_no_module_imports_from_a_later_layer():
    assert upward_imports(ROOT) == []


def test_an_upward_import_is_found_also_when_relative_or_inside_a_function(tmp_path):
    pkg = tmp_path / "diffaudit"
    (pkg / "data").mkdir(parents=True)
    (pkg / "core").mkdir()
    (pkg / "core" / "ok.py").write_text("from diffaudit.core import io\n")
    (pkg / "data" / "ok.py").write_text("from ..core import io\nimport diffaudit.data.npz\n")
    (pkg / "core" / "lazy.py").write_text("def f():\n    from diffaudit.cli import main\n")
    (pkg / "core" / "rel.py").write_text("from ..data.npz import load\n")
    assert upward_imports(pkg) == [
        "core/lazy.py:2 imports diffaudit.cli (cli lies above core)",
        "core/rel.py:1 imports diffaudit.data.npz (data lies above core)",
    ]


def test_python_dash_m_runs_the_command_line(monkeypatch, capsys):
    """As a process's command, it ignores Ctrl-C once done (tests/test_cli_interrupt.py): the handler is put
    back here, or the tests run after this one would see no Ctrl-C at all."""
    monkeypatch.setattr(sys, "argv", ["diffaudit", "--version"])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_module("diffaudit", run_name="__main__")
    finally:
        signal.signal(signal.SIGINT, handler)
    assert stop.value.code == 0
    assert diffaudit.__version__ in capsys.readouterr().out
