"""In-memory client connections for protocol tests: a transport like a TCP one, and reading
the HTTP/1.1 a protocol wrote to it."""

from __future__ import annotations

import re

from twisted.internet.testing import StringTransport


class TCPStringTransport(StringTransport):
    """A StringTransport that, like a TCP transport (ISystemHandle), has a handle; no socket."""

    def getHandle(self) -> None:
        return None


def status_lines(data: bytes) -> list[bytes]:
    """Every status line in `data`, also one that directly follows a body."""
    return re.findall(rb"HTTP/1\.1 [0-9]{3} [^\r]*", data)


def head_of(data: bytes) -> bytes:
    """The head of the first message in `data`: everything before its empty line."""
    return data.split(b"\r\n\r\n", 1)[0]
