"""The import direction of STYLE.md §1: no edgenode module imports one to its right in the flow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edgenode"

# The flow, left to right (STYLE.md §1); a module may import only modules before it.
ORDER = [
    "errors",
    "hostnames",
    "headers",
    "accesslog",
    "config",
    "socketwriter",
    "tls",
    "origintls",
    "routes",
    "upstream",
    "downstream",
    "runtime",
    "monitor",
    "proxy",
    "admin",
    "tail",
    "probe",
    "demo",
    "cli",
    "workers",
    "service",
]

# What STYLE.md §1 spells out, checked name by name.
FORBIDDEN = {
    "errors": {"hostnames", "config", "tls", "runtime", "proxy", "upstream", "downstream"},
    "hostnames": {"config", "tls", "runtime", "proxy", "upstream", "downstream"},
    "config": {"tls", "runtime", "proxy", "upstream", "downstream", "service", "admin"},
    "headers": {"config", "tls", "runtime", "proxy", "upstream", "downstream"},
    "tls": {"runtime", "proxy", "upstream", "downstream", "service"},
    "upstream": {"proxy", "downstream", "service", "runtime", "admin"},
    "downstream": {"upstream", "proxy", "runtime", "tls", "service", "admin"},
    "accesslog": {"config", "runtime", "proxy", "upstream", "downstream", "tls"},
    "runtime": {"proxy", "downstream", "service", "admin"},
    "proxy": {"service", "admin", "cli"},
}


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def edgenode_imports(module: str) -> set[str]:
    """The edgenode modules `module` imports, anywhere in its file."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "edgenode" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "edgenode":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def imports_of_reactor(module: str) -> bool:
    """Whether `module` imports the global reactor (`twisted.internet.reactor`)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name == "twisted.internet.reactor" for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            if node.module == "twisted.internet.reactor":
                return True
            if node.module == "twisted.internet" and any(a.name == "reactor" for a in node.names):
                return True
    return False


def test_every_module_has_a_place_in_the_flow() -> None:
    """A new module must be placed in ORDER, so its imports are checked too."""
    assert set(modules()) <= set(ORDER), set(modules()) - set(ORDER)


@pytest.mark.parametrize("module", modules())
def test_module_imports_only_modules_to_its_left(module: str) -> None:
    """No edgenode module imports one that comes after it in the flow of STYLE.md §1."""
    if module not in ORDER:
        pytest.fail(f"edgenode/{module}.py has no place in ORDER")
    position = ORDER.index(module)
    later = {m for m in edgenode_imports(module) if m in ORDER and ORDER.index(m) > position}
    assert later == set(), f"{module} imports {sorted(later)}, which depend on it"


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_avoids_the_imports_style_forbids(module: str) -> None:
    """The pairs STYLE.md §1 rules out by name never appear."""
    if not (PACKAGE / f"{module}.py").exists():
        pytest.fail(f"edgenode/{module}.py is gone; update FORBIDDEN")
    assert edgenode_imports(module) & FORBIDDEN[module] == set()


def test_only_service_imports_the_global_reactor() -> None:
    """twisted.internet.reactor is imported by service.py and no other edgenode module."""
    importers = {m for m in modules() if imports_of_reactor(m)}
    assert importers <= {"service"}


def test_the_import_parser_sees_imports() -> None:
    """The checker itself finds proxy's imports (so the tests above can fail)."""
    assert {"upstream", "downstream", "runtime", "headers"} <= edgenode_imports("proxy")
    assert imports_of_reactor("service")
