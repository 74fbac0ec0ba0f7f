"""The layer rules of DESIGN §2 (docs/architecture.md), checked two independent ways.

``lint-imports`` runs the contracts in pyproject.toml; the AST scan below re-checks the
sans-I/O rule itself, so that a contract deleted or weakened in pyproject.toml does not
silently switch the rule off.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "samizdat"
SANS_IO = ("protocol", "crypto")
FORBIDDEN = frozenset({"asyncio", "socket", "time", "random", "ssl", "sqlite3"})
# Layers that the sans-I/O core must not reach into either.
FORBIDDEN_SAMIZDAT = frozenset({"samizdat.server", "samizdat.client", "samizdat.cli"})


def _imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of every module ``source`` imports, wherever the statement is.

    Args:
        source: Python source of a module.
        package: the dotted package the module lives in, to resolve relative imports.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            # "from samizdat import server" imports samizdat.server.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).parent.parts)


def _violations(names: set[str]) -> set[str]:
    bad = {name for name in names if name.split(".")[0] in FORBIDDEN}
    bad |= {
        name
        for name in names
        for layer in FORBIDDEN_SAMIZDAT
        if name == layer or name.startswith(layer + ".")
    }
    return bad


def _sans_io_files() -> list[Path]:
    return sorted(path for layer in SANS_IO for path in (PACKAGE / layer).rglob("*.py"))


def test_sans_io_layers_exist() -> None:
    # An empty scan would pass vacuously.
    assert len(_sans_io_files()) >= 8


@pytest.mark.parametrize("path", _sans_io_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sans_io_modules_do_no_io(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert _violations(_imported_modules(source, _package_of(path))) == set()


def test_scan_catches_violations() -> None:
    # The scanner itself must be able to fail, including on relative and nested imports.
    source = (
        "import time\n"
        "from asyncio import sleep\n"
        "from .. import server\n"
        "from ..client.store import Store\n"
        "def f():\n"
        "    import socket.x\n"
        "from samizdat.protocol import limits\n"
    )
    assert _violations(_imported_modules(source, "samizdat.protocol")) == {
        "time",
        "asyncio",
        "asyncio.sleep",
        "samizdat.server",
        "samizdat.client.store",
        "samizdat.client.store.Store",
        "socket.x",
    }


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
