"""The package depends only downward: core <- metrics <- datasets <- inputs <- generation <-
training <- bench / explain <- recipes <- cli. Every import of every module (function-level ones too) is read
from the source, so a shortcut upward (the core importing the demo, a method importing training)
fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import memvp

PACKAGE = Path(memvp.__file__).parent
LAYERS = [
    {"atomic", "config", "architectures", "peak_memory"},
    {"save_load", "vision", "metrics"},
    {"methods", "feature_cache", "pretrained", "datasets", "instruments"},
    {"inputs"},
    {"generation", "loading"},
    {"training"},
    {"flops", "bench", "explain", "explain_plot", "serve"},
    {"recipes"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The memvp modules ``path`` imports, as absolute dotted names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            found.update(n for n in names if n.startswith("memvp"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("memvp"))
    return found


def _top(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    assert {_top(_module_name(p)) for p in MODULES} == set(RANK)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    mine = _top(_module_name(path))
    for target in _imports(path):
        theirs = _top(target)
        if theirs is None or theirs == mine:
            continue
        assert RANK[theirs] <= RANK[mine], f"{_module_name(path)} imports {target}: upward ({mine} -> {theirs})"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    bad = PACKAGE / "methods" / "memvp" / "model.py"
    assert any(_top(t) == "architectures" for t in _imports(bad))  # relative imports resolved
    fake = tmp_path / "x.py"
    fake.write_text("from ..recipes.demo import run_demo\n")
    monkeypatch.setattr("test_layering._module_name", lambda p: "memvp.methods.x")
    assert "memvp.recipes.demo" in _imports(fake)
