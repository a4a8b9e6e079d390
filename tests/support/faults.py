"""Misbehaving origins for failure tests: silent peers and canned, broken HTTP answers.

Use them with `Servers.listen_tcp` (no TLS at all) or `Servers.listen_tls` (a real
handshake with per-SNI certificates, then the scripted misbehaviour). Each factory
records the request heads it received, so a test can tell whether a request reached it.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.protocol import Factory, Protocol


class Silent(Protocol):
    """Accepts the connection and never sends a byte (not even a TLS ServerHello)."""

    def dataReceived(self, data: bytes) -> None:
        pass


class FaultyOrigin(Factory):
    """Answers the first request head on each connection with `reply`, byte for byte.

    `close`: close the connection right after writing `reply` (an empty reply and
    close=True is an origin that hangs up on a request without answering).
    Otherwise the connection stays open and silent after the reply.
    """

    noisy = False

    def __init__(self, reply: bytes = b"", *, close: bool = False) -> None:
        self.reply = reply
        self.close = close
        self._lock = threading.Lock()
        self._heads: list[bytes] = []

    @property
    def heads(self) -> list[bytes]:
        """Request heads received (start line and headers), oldest first."""
        with self._lock:
            return list(self._heads)

    def _record(self, head: bytes) -> None:
        with self._lock:
            self._heads.append(head)

    def buildProtocol(self, addr: Any) -> Protocol:
        proto = _FaultyProtocol()
        proto.factory = self
        return proto


class _FaultyProtocol(Protocol):
    factory: FaultyOrigin

    def __init__(self) -> None:
        self._buffer = b""
        self._answered = False

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._buffer += data
        head, sep, _ = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        self._answered = True
        self.factory._record(head)
        if self.factory.reply:
            self.transport.write(self.factory.reply)
        if self.factory.close:
            self.transport.loseConnection()
