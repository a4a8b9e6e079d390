"""What /proc says about a process under test: resident memory and open descriptors."""

from __future__ import annotations

import os
from pathlib import Path


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    """How many file descriptors process `pid` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))
