"""Where a running edge's CPU goes, by layer: a py-spy raw profile, grouped.

Take the profile while bench/run.py keeps the edge busy (one edge, long enough to attach):

    python3 bench/run.py --quick --duration 25 --only edgenode &
    sleep 10; py-spy record --native -r 200 -d 10 -f raw -o /tmp/edge.spy \\
        -p "$(pgrep -f 'edgenode --config' | head -1)"
    python3 bench/spy_groups.py /tmp/edge.spy

Each sample is charged to one layer: `system calls` when the innermost frame is one of
libc's system-call wrappers (send, recv, epoll_wait: the process is in the kernel there),
`libc` for the rest of libc (malloc, memcpy), else the package of the
innermost Python frame (`edgenode` for our modules and their compiled twins, `twisted`,
`OpenSSL` for pyOpenSSL and the cffi calls it makes, ...). C code called from Python
(llhttp, orjson, OpenSSL's crypto) is charged to the Python frame that called it. py-spy
stops the process for each sample, so the system-call share is an upper bound; bench/run.py's
`of it sys` column is the kernel's measured share.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

_PY_FRAME = re.compile(r"(?P<function>.*) \((?P<path>[^()]*\.pyx?):\d+\)$")
_LIBC = re.compile(r"\((libc|libpthread)[^)]*\)$")
# libc's system-call wrappers; any other libc frame is its own work (malloc, memcpy).
_SYSCALLS = frozenset(
    {"send", "sendto", "sendmsg", "recv", "recvfrom", "recvmsg", "read", "write", "writev",
     "epoll_wait", "epoll_ctl", "brk", "mmap", "munmap", "close", "accept4", "connect"}
)  # fmt: skip


def layer_of(frames: list[str]) -> tuple[str, str]:
    """(layer, function) that one sample's stack is charged to."""
    if _LIBC.search(frames[-1]):
        function = frames[-1].split(" (")[0]
        return ("system calls" if function in _SYSCALLS else "libc"), function
    for frame in reversed(frames):
        found = _PY_FRAME.match(frame)
        if found:
            path = found["path"]
            package = "edgenode" if path.startswith("edgenode") else path.split("/")[0]
            return package, found["function"]
    return "other native", frames[-1].split(" (")[0]


def main(path: str, top: int = 25) -> None:
    layers: Counter[str] = Counter()
    functions: Counter[tuple[str, str]] = Counter()
    with open(path, encoding="utf-8") as samples:
        lines = samples.read().splitlines()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        layer, function = layer_of(stack.split(";"))
        layers[layer] += int(count)
        functions[(layer, function)] += int(count)
    total = sum(layers.values())
    print(f"{total} samples")
    for layer, n in layers.most_common():
        print(f"  {100 * n / total:5.1f} %  {layer}")
    print(f"\nthe {top} costliest functions (self time, C callees included):")
    for (layer, function), n in functions.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {layer}: {function}")


if __name__ == "__main__":
    main(sys.argv[1])
