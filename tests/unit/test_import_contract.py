"""The layout's rules (ARCHITECTURE.md), checked on the source tree itself.

The import contract lives in ``pyproject.toml`` and ``lint-imports`` enforces it; these tests run it and
check the rules it cannot express: small modules, one name per module, and each folder saying what it
owns and what it may import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "plugin" / "securepacs", ROOT / "tools" / "securepacs_tools"]
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)


def test_lint_imports_keeps_every_contract() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_contract_names_every_folder() -> None:
    # A new capability folder must be placed in a layer, or the contract silently ignores it.
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    folders = {p.name for p in (ROOT / "plugin" / "securepacs").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    start = config.index("layers = [")
    layers = config[start:config.index("]", start)]
    missing = sorted(f for f in folders if f'"{f}' not in layers and f" {f}" not in layers)
    assert missing == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_small(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by concept"


def test_module_names_are_unique() -> None:
    # One name, one module: "policy" or "tls" in a log line or a traceback must say which one.
    names = Counter(p.stem for p in modules() if p.stem not in ("__init__", "__main__"))
    assert sorted(n for n, count in names.items() if count > 1) == []


@pytest.mark.parametrize("init", [p for pkg in PACKAGES for p in pkg.rglob("__init__.py")
                                  if "__pycache__" not in p.parts and "static" not in p.parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_each_folder_says_what_it_owns_and_may_import(init: Path) -> None:
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    assert "Owns" in doc and "import" in doc, f"{init.relative_to(ROOT)}: say what it owns and may import"
