"""A recording origin: keeps the exact bytes of every request, parsed by its own strict parser.

The smuggling tests need an origin that is not another llhttp: what it records is what a
strict RFC 9112 reader makes of the bytes the edge sent, request by request and
connection by connection. It is a raw Twisted protocol (run it with `Servers.listen_tls`
or `listen_tcp`) that understands only what the edge may send back-to-origin: CRLF
lines, a Host, a body framed by Content-Length or chunked (no trailers), nothing else.
Anything else is recorded as a parse error, and the connection is closed.

Each request is answered `200` with `X-Rec: <record index>` and a short body, after its
body was read; a target starting with `/early` is answered `404` as soon as its head is
read (as static servers answer an upload they do not want) and its body is read after.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import attrs
from twisted.internet.protocol import Factory, Protocol


@attrs.define
class Recorded:
    """One request as the origin read it."""

    index: int
    conn: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False  # its body was read to the end of its framing
    raw: bytes = b""  # the request's bytes exactly as they arrived

    def header(self, name: bytes) -> bytes | None:
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)


class ParseError(Exception):
    pass


class RecordingOrigin:
    """The records of every connection (thread-safe reads), and the factory to listen with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Recorded] = []
        self._errors: list[tuple[int, str, bytes]] = []
        self._conn_ids = itertools.count(1)
        self.factory = Factory.forProtocol(lambda: _RecordingProtocol(self))

    @property
    def records(self) -> list[Recorded]:
        with self._lock:
            return [attrs.evolve(r) for r in self._records]

    @property
    def errors(self) -> list[tuple[int, str, bytes]]:
        """(connection, what was wrong, the bytes that could not be parsed)."""
        with self._lock:
            return list(self._errors)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._errors.clear()

    def _new(self, conn: int, method: bytes, target: bytes, headers: Any) -> Recorded:
        with self._lock:
            record = Recorded(len(self._records), conn, method, target, headers)
            self._records.append(record)
            return record

    def _error(self, conn: int, what: str, data: bytes) -> None:
        with self._lock:
            self._errors.append((conn, what, data[:200]))

    def _update(self, record: Recorded, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(record, name, value)


class _RecordingProtocol(Protocol):
    def __init__(self, origin: RecordingOrigin) -> None:
        self.origin = origin
        self.conn = next(origin._conn_ids)
        self.buffer = b""
        self.record: Recorded | None = None
        self.remaining: int | None = None  # Content-Length bytes still owed
        self.chunked = False
        self.body = bytearray()
        self.raw_start = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        try:
            while self._step():
                pass
        except ParseError as e:
            self.origin._error(self.conn, str(e), self.buffer)
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.buffer and self.record is None:
            self.origin._error(self.conn, "connection closed inside a request head", self.buffer)

    # -- parsing: returns whether progress was made ---------------------------------

    def _step(self) -> bool:
        if self.record is None:
            return self._head()
        if self.chunked:
            return self._chunk()
        return self._fixed()

    def _head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if b"\n" in self.buffer.replace(b"\r\n", b""):
                raise ParseError("bare LF in a request head")
            return False
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1].startswith(b"/"):
            raise ParseError(f"bad request line {lines[0][:80]!r}")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b"\n" in line or b"\r" in line:
                raise ParseError(f"bad header line {line[:80]!r}")
            headers.append((name, value.strip()))
        record = self.origin._new(self.conn, parts[0], parts[1], headers)
        self.origin._update(record, raw=head + b"\r\n\r\n")
        lengths = [v for n, v in headers if n.lower() == b"content-length"]
        codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
        if len([n for n, _ in headers if n.lower() == b"host"]) != 1:
            raise ParseError("not exactly one Host")
        if (lengths and codings) or len(lengths) > 1 or codings not in ([], [b"chunked"]):
            raise ParseError(f"ambiguous framing {lengths!r} {codings!r}")
        if lengths and not lengths[0].isdigit():
            raise ParseError(f"bad Content-Length {lengths[0]!r}")
        self.record = record
        self.chunked = bool(codings)
        self.remaining = int(lengths[0]) if lengths else 0
        self.body = bytearray()
        if record.target.startswith(b"/early"):
            self._answer(404, record)
        if not self.chunked and self.remaining == 0:
            self._complete()
        return True

    def _fixed(self) -> bool:
        assert self.record is not None and self.remaining is not None
        take = self.buffer[: self.remaining]
        if not take:
            return False
        self.buffer = self.buffer[len(take) :]
        self._add_body(take)
        self.remaining -= len(take)
        if self.remaining == 0:
            self._complete()
        return True

    def _chunk(self) -> bool:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return False
        size_line = self.buffer[:end]
        if not size_line or any(c not in b"0123456789abcdefABCDEF" for c in size_line):
            raise ParseError(f"bad chunk size line {size_line[:40]!r}")
        size = int(size_line, 16)
        if size == 0:
            if self.buffer[end + 2 : end + 4] != b"\r\n":
                if len(self.buffer) < end + 4:
                    return False
                raise ParseError("trailers or garbage after the last chunk")
            self._add_body(b"", raw=self.buffer[: end + 4])
            self.buffer = self.buffer[end + 4 :]
            self._complete()
            return True
        total = end + 2 + size + 2
        if len(self.buffer) < total:
            return False
        if self.buffer[total - 2 : total] != b"\r\n":
            raise ParseError("chunk data not followed by CRLF")
        self._add_body(self.buffer[end + 2 : end + 2 + size], raw=self.buffer[:total])
        self.buffer = self.buffer[total:]
        return True

    def _add_body(self, data: bytes, *, raw: bytes | None = None) -> None:
        assert self.record is not None
        self.body += data
        self.origin._update(
            self.record, body=bytes(self.body), raw=self.record.raw + (data if raw is None else raw)
        )

    def _complete(self) -> None:
        record, self.record = self.record, None
        assert record is not None
        self.origin._update(record, complete=True)
        if not record.target.startswith(b"/early"):
            self._answer(200, record)

    def _answer(self, status: int, record: Recorded) -> None:
        body = b"recorded %d\n" % record.index
        head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nX-Rec: %d\r\n\r\n" % (
            status,
            b"OK" if status == 200 else b"Not Found",
            len(body),
            record.index,
        )
        self.transport.write(head + (b"" if record.method == b"HEAD" else body))
