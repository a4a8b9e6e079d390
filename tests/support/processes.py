"""Server processes the tests start (nginx, etcd): found on PATH or at Debian's place, and
killed with their process group at interpreter exit should a test run end abnormally."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess

# Still running; each is started in a process group of its own (start_new_session).
running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(running):
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its group (an nginx master's workers), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    running.discard(proc)


def find_binary(name: str, fallback: str, hint: str, search_path: str | None = None) -> str:
    """`name` on PATH, then at `fallback`; RuntimeError(`hint`) when not installed."""
    found = shutil.which(name, path=search_path)
    if found:
        return found
    if os.access(fallback, os.X_OK):
        return fallback
    raise RuntimeError(hint)
