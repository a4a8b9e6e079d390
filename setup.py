"""Builds the compiled twins of the hot modules (edgenode/speedups.py), when it can.

Everything else is in pyproject.toml. A machine without a C compiler or the Python headers
still gets a working edgenode: the build of the twins fails, this says so (pip shows it
with -v; `python3 -m edgenode.speedups` and the edge's start log say it at any time), and
the pure-Python modules run.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# speedups.TWINS, as source files (setup.py cannot import the package it builds).
TWINS = {
    "edgenode.datapath._headers": "edgenode/datapath/_headers.pyx",
    "edgenode._accesslog": "edgenode/_accesslog.pyx",
}


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed compile and carries on with pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler at all, for example
            _fallback(str(e))

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # a missing Python.h, a compiler error
            _fallback(f"{ext.name}: {e}")


def _fallback(why: str) -> None:
    print(
        f"edgenode: WARNING: the compiled hot path was not built ({why}); "
        "the pure-Python implementation will run. Install gcc and the Python headers "
        "(Debian: apt-get install gcc python3-dev) and reinstall to build it.",
        file=sys.stderr,
    )


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError as e:
        _fallback(f"Cython is not available: {e}")
        return []
    modules = [Extension(name, [source]) for name, source in TWINS.items()]
    return cythonize(modules, compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
