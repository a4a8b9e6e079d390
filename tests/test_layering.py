"""The import direction of the house: one rule per package, data flowing one way.

    edgenode            values and state: errors, hostnames, config, tls, routes, runtime,
                        accesslog (config -> runtime state)
    edgenode.datapath   the protocols on both sides and the exchange between them
    edgenode.control    running it: the twistd service, workers, admin site, demo
    edgenode.tools      the operator's command line

A module imports only modules of its own package or of a package above it in this list
(the core's modules only each other). New modules get their rule from their package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edgenode"

# Each package and the packages it may import from (itself included).
LAYERS = {
    "edgenode": {"edgenode"},
    "edgenode.datapath": {"edgenode", "edgenode.datapath"},
    "edgenode.control": {"edgenode", "edgenode.datapath", "edgenode.control"},
    "edgenode.tools": {"edgenode", "edgenode.datapath", "edgenode.control", "edgenode.tools"},
}


def modules() -> list[str]:
    """Every module of the project, dotted (`edgenode.datapath.proxy`)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] != "__init__":
            found.append(".".join(parts))
    return found


def package_of(module: str) -> str:
    return module.rsplit(".", 1)[0]


def layer_of(name: str) -> str:
    """The layer a dotted module or package name belongs to (a sub-package's is its parent's)."""
    top = ".".join(name.split(".")[:2])
    return top if top in LAYERS else "edgenode"


def edgenode_imports(module: str) -> set[str]:
    """The edgenode modules and packages `module` imports, anywhere in its file, dotted."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    here = package_of(module)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgenode")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "edgenode":
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imports_of_reactor(module: str) -> bool:
    """Whether `module` imports the global reactor (`twisted.internet.reactor`)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            if any(a.name == "twisted.internet.reactor" for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            if node.module == "twisted.internet.reactor":
                return True
            if node.module == "twisted.internet" and any(a.name == "reactor" for a in node.names):
                return True
    return False


def test_every_package_is_a_layer_or_inside_one() -> None:
    """A new sub-package of edgenode must be declared in LAYERS (or live inside one)."""
    packages = {package_of(m) for m in modules()}
    assert {p for p in packages if p != "edgenode" and layer_of(p) == "edgenode"} == set()


@pytest.mark.parametrize("module", modules())
def test_module_imports_only_its_package_and_those_above(module: str) -> None:
    allowed = LAYERS[layer_of(module)]
    wrong = {m for m in edgenode_imports(module) if layer_of(m) not in allowed}
    assert wrong == set(), f"{module} imports {sorted(wrong)}, against the flow"


def test_only_the_service_imports_the_global_reactor() -> None:
    """twisted.internet.reactor is imported by the twistd service and no other module."""
    importers = {m for m in modules() if imports_of_reactor(m)}
    assert importers <= {"edgenode.control.service"}


def test_the_import_parser_sees_imports() -> None:
    """The checker itself finds imports of every form (so the tests above can fail)."""
    assert {
        "edgenode.datapath.upstream",
        "edgenode.datapath.downstream",
        "edgenode.runtime",
        "edgenode.datapath.headers",
    } <= edgenode_imports("edgenode.datapath.proxy")
    assert "edgenode.control.demo" in edgenode_imports("edgenode.control.service")
    assert imports_of_reactor("edgenode.control.service")
