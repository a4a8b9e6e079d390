"""Which implementation of the per-request functions runs: compiled or pure Python.

A few modules of the data path have a compiled twin, a Cython module built from a `.pyx`
beside them (`headers.py` and `_headers.pyx`, `accesslog.py` and `_accesslog.pyx`). The
pure-Python module is the reference: it defines the contracts, the tables and the tests'
expectations, and it is what runs when the twin was not built (no C compiler or Python
headers at install time, `pip` then installs the pure-Python package and says so) or when
`EDGENODE_NO_EXTENSIONS=1` is set. At its end each such module asks `load()` for its twin
and, when there is one, rebinds its hot functions to the compiled ones.

    python3 -m edgenode.speedups            # prints what runs, and why
    python3 -m edgenode.speedups --require  # exit 1 unless every twin is compiled (CI)
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

# The twins, by pure-Python module; setup.py builds the same list.
TWINS = {
    "edgenode.datapath.headers": "edgenode.datapath._headers",
    "edgenode.accesslog": "edgenode._accesslog",
}

DISABLED = os.environ.get("EDGENODE_NO_EXTENSIONS", "") not in ("", "0")

_missing: dict[str, str] = {}  # twin -> why it could not be imported


def load(twin: str) -> ModuleType | None:
    """The compiled twin module, or None (turned off, or not built)."""
    if DISABLED:
        return None
    try:
        return importlib.import_module(twin)
    except ImportError as e:
        _missing[twin] = str(e)
        return None


def describe() -> str:
    """One line for the start log and the CLI: what runs, and why."""
    if DISABLED:
        return "pure Python (EDGENODE_NO_EXTENSIONS is set)"
    for module in TWINS:
        importlib.import_module(module)  # each asks load() for its twin
    if not _missing:
        return "compiled (" + ", ".join(TWINS.values()) + ")"
    why = "; ".join(f"{twin}: {error}" for twin, error in _missing.items())
    return f"pure Python (the compiled modules were not built: {why})"


def all_compiled() -> bool:
    return describe().startswith("compiled")


def main(argv: list[str]) -> int:
    print(f"edgenode data path: {describe()}")
    return 0 if "--require" not in argv or all_compiled() else 1


if __name__ == "__main__":
    # Run as a script this file is `__main__`; the modules ask the imported one.
    from edgenode import speedups

    sys.exit(speedups.main(sys.argv[1:]))
