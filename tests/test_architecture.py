"""The dependency rules of the code base, checked on the source itself.

- No service module imports the CLI: services raise errors from crypto_live.errors and
  only crypto_live.cli turns them into a message and an exit status.
- The shared package imports no service (producer, processors).
- Every exception class the packages define belongs to the one tree under CryptoLiveError.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from crypto_live.errors import CryptoLiveError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crypto_live", "producer", "processors")


def modules() -> list[Path]:
    found = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(found) > 20, "the packages were not found: the checks below would prove nothing"
    return found


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", modules(), ids=module_name)
def test_no_module_but_the_entry_points_imports_the_cli(path):
    if module_name(path) in {"crypto_live.cli", "crypto_live.__main__"}:
        return
    assert "crypto_live.cli" not in imported_modules(path)


@pytest.mark.parametrize("path", [p for p in modules() if p.is_relative_to(ROOT / "crypto_live")], ids=module_name)
def test_the_shared_package_imports_no_service(path):
    services = {name for name in imported_modules(path) if name.split(".")[0] in {"producer", "processors"}}
    assert not services, f"{module_name(path)} imports {sorted(services)}"


@pytest.mark.parametrize("path", [p for p in modules() if p.name != "__main__.py"], ids=module_name)
def test_every_exception_defined_in_the_packages_is_in_the_one_tree(path):
    module = importlib.import_module(module_name(path))
    for name, value in vars(module).items():
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
            assert issubclass(value, CryptoLiveError), f"{module.__name__}.{name} is outside CryptoLiveError"
