"""Misbehaving origins for failure tests: silent peers and canned, broken HTTP answers.

Use them with `Servers.listen_tcp` (no TLS at all) or `Servers.listen_tls` (a real
handshake with per-SNI certificates, then the scripted misbehaviour). Each factory
records the request heads it received, so a test can tell whether a request reached it.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import struct
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


# --------------------------------------------------------------------------
# Resets, keep-alive connections closed at random, rotating faults (issue 7)
# --------------------------------------------------------------------------


def reset_connection(transport: Any) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), not an orderly FIN.

    `transport` may be a TLS wrapper or a tracking wrapper: the socket is found by
    walking `.transport` down to the TCP transport.
    """
    layer = transport
    for _ in range(4):
        get_handle = getattr(layer, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            break
        layer = getattr(layer, "transport", None)
        if layer is None:
            break
    transport.abortConnection()


class ResetOnFirstBytes(Protocol):
    """Reads the peer's first bytes (a TLS ClientHello, for a TLS client) and answers with RST."""

    def dataReceived(self, data: bytes) -> None:
        reset_connection(self.transport)


def _request_heads(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete request heads at the front of `buffer` (no bodies: GETs only), and the rest."""
    heads = []
    while True:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if not sep:
            return heads, buffer
        heads.append(head)
        buffer = rest


def _path_of(head: bytes) -> str:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return parts[1].decode("latin-1") if len(parts) >= 2 else ""


def _json_response(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        len(data),
        data,
    )


class FlakyKeepAliveOrigin(Factory):
    """A keep-alive HTTP/1.1 origin that drops connections at random, never announcing it.

    Each connection answers 1 + randint(0, 2) GETs with 200 and a JSON body
    {"path", "conn", "n"} (`n` counts the responses on that connection, from 1), then
    either closes right after its last response ("close-after") or stays open and hangs
    up, unanswered, on the next request that arrives ("drop-next"). No response carries
    `Connection: close`. `seed` makes the sequence reproducible.
    """

    noisy = False

    def __init__(self, seed: int = 7) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conn_ids = itertools.count(1)
        self._stats = {"connections": 0, "responses": 0, "close_after": 0, "drop_next": 0}

    @property
    def stats(self) -> dict[str, int]:
        """connections, responses, close_after (closed after a response), drop_next (hung up)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _plan(self) -> tuple[int, int, str]:
        with self._lock:
            self._stats["connections"] += 1
            budget = 1 + self._rng.randint(0, 2)
            mode = self._rng.choice(("close-after", "drop-next"))
        return next(self._conn_ids), budget, mode

    def buildProtocol(self, addr: Any) -> Protocol:
        proto = _FlakyKeepAlive(*self._plan())
        proto.factory = self
        return proto


class _FlakyKeepAlive(Protocol):
    factory: FlakyKeepAliveOrigin

    def __init__(self, conn_id: int, budget: int, mode: str) -> None:
        self._conn_id = conn_id
        self._budget = budget
        self._mode = mode
        self._answered = 0
        self._buffer = b""
        self._gone = False

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return
        heads, self._buffer = _request_heads(self._buffer + data)
        for head in heads:
            if self._answered >= self._budget:  # drop-next: a request we will not answer
                self.factory._count("drop_next")
                self._hang_up()
                return
            self._answered += 1
            self.factory._count("responses")
            self.transport.write(
                _json_response({"path": _path_of(head), "conn": self._conn_id, "n": self._answered})
            )
            if self._answered >= self._budget and self._mode == "close-after":
                self.factory._count("close_after")
                self._hang_up()
                return

    def _hang_up(self) -> None:
        self._gone = True
        self.transport.loseConnection()


class RotatingFaultOrigin(Factory):
    """An origin whose answers rotate through `behaviours`, one per request, across connections.

    "ok": 200 with a JSON body {"path", "behaviour"}, connection kept alive;
    "stall": never answers (the edge's response_header timeout ends it);
    "reset": a TCP RST instead of an answer;
    "malformed": `HTTP/1.1 abc` and a close.
    `counts` says how often each behaviour was played.
    """

    noisy = False
    BEHAVIOURS = ("ok", "stall", "ok", "reset", "ok", "malformed")

    def __init__(self, behaviours: tuple[str, ...] = BEHAVIOURS) -> None:
        unknown = set(behaviours) - {"ok", "stall", "reset", "malformed"}
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}")
        self._cycle = itertools.cycle(behaviours)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(behaviours, 0)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _next(self) -> str:
        with self._lock:
            behaviour = next(self._cycle)
            self._counts[behaviour] += 1
            return behaviour

    def buildProtocol(self, addr: Any) -> Protocol:
        proto = _Rotating()
        proto.factory = self
        return proto


class _Rotating(Protocol):
    factory: RotatingFaultOrigin

    def __init__(self) -> None:
        self._buffer = b""
        self._gone = False

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return
        heads, self._buffer = _request_heads(self._buffer + data)
        for head in heads:
            behaviour = self.factory._next()
            if behaviour == "ok":
                self.transport.write(_json_response({"path": _path_of(head), "behaviour": "ok"}))
                continue
            self._gone = True
            if behaviour == "reset":
                reset_connection(self.transport)
            elif behaviour == "malformed":
                self.transport.write(b"HTTP/1.1 abc\r\n\r\n")
                self.transport.loseConnection()
            # "stall": stay silent; the edge gives up and closes
            return
