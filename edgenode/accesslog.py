"""The access log: one JSON object per request (SPEC §6), its writer and its reader.

Two more kinds of line, with `request_id` null, so that `edgenode tail` and whoever
reads the log see them where they see everything else: a client TLS handshake that
failed on the HTTPS listener (SPEC §8, `handshake_failure_line`; nginx puts those in its
error log, but an operator asked "why do these clients fail?" wants them beside the
requests), and an origin marked down or up by its health (SPEC §10, `origin_state_line`,
with `event` "origin_down" or "origin_up").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from edgenode import speedups

log = Logger()

# SPEC §6 fields, in the order they are written; later fields explain TLS failures.
FIELDS = (
    "ts",
    "request_id",
    "client",
    "method",
    "host",
    "path",
    "status",
    "bytes_sent",
    "duration_ms",
    "domain",
    "origin",
    "sni",
    "verify_name",
    "tls_version",
    "tls_cipher",
    "origin_status",
    "attempts",
    "error",
    "generation",
    "scheme",
    "client_tls_version",
    "client_sni",
    "error_detail",
    "connection_reused",
    "upstream_connect_ms",
    "upstream_handshake_ms",
    "tls_resumed",
    "origin_cert",
)


@attrs.define(slots=True)
class AccessRecord:
    """What happened to one request; filled in as the exchange goes, written once."""

    request_id: str
    client: str
    method: str
    host: str | None
    path: str
    started: float  # wall-clock seconds
    generation: int
    status: int | None = None
    bytes_sent: int = 0
    duration_ms: float = 0.0
    domain: str | None = None
    origin: str | None = None
    sni: str | None = None
    verify_name: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    origin_status: int | None = None
    attempts: int = 0
    error: str | None = None
    error_detail: str | None = None
    connection_reused: bool | None = None
    upstream_connect_ms: float | None = None
    upstream_handshake_ms: float | None = None
    tls_resumed: bool | None = None
    origin_cert: dict[str, Any] | None = None
    scheme: str = "http"
    client_tls_version: str | None = None
    client_sni: str | None = None

    def to_json_line(self) -> bytes:
        connect_ms, handshake_ms = self.upstream_connect_ms, self.upstream_handshake_ms
        data = {  # FIELDS, in order
            "ts": rfc3339(self.started),
            "request_id": self.request_id,
            "client": self.client,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "status": self.status,
            "bytes_sent": self.bytes_sent,
            "duration_ms": round(self.duration_ms, 3),
            "domain": self.domain,
            "origin": self.origin,
            "sni": self.sni,
            "verify_name": self.verify_name,
            "tls_version": self.tls_version,
            "tls_cipher": self.tls_cipher,
            "origin_status": self.origin_status,
            "attempts": self.attempts,
            "error": self.error,
            "generation": self.generation,
            "scheme": self.scheme,
            "client_tls_version": self.client_tls_version,
            "client_sni": self.client_sni,
            "error_detail": self.error_detail,
            "connection_reused": self.connection_reused,
            "upstream_connect_ms": None if connect_ms is None else round(connect_ms, 3),
            "upstream_handshake_ms": None if handshake_ms is None else round(handshake_ms, 3),
            "tls_resumed": self.tls_resumed,
            "origin_cert": self.origin_cert,
        }
        return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)


def handshake_failure_line(
    ts: float, client: str, sni: str | None, error: str, detail: str
) -> bytes:
    """The line of a failed client TLS handshake: no request, so no request fields."""
    return _request_less_line(
        ts,
        client=client,
        bytes_sent=0,
        scheme="https",
        client_sni=sni,
        error=error,
        error_detail=detail,
    )


def origin_state_line(
    ts: float, domain: str, origin: str, sni: str | None, up: bool, reason: str
) -> bytes:
    """The line of an origin marked down or up (SPEC §10), so that whoever follows the
    log (`edgenode tail`) sees it beside the requests it explains: `event` says which."""
    return _request_less_line(
        ts,
        domain=domain,
        origin=origin,
        sni=sni,
        error_detail=reason,
        event="origin_up" if up else "origin_down",
    )


def _request_less_line(ts: float, **fields: Any) -> bytes:
    """A line that is not a request's: every SPEC §6 field (null unless given), then `fields`."""
    data: dict[str, Any] = dict.fromkeys(FIELDS)
    data["ts"] = rfc3339(ts)
    data.update(fields)
    return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)


_ts_cache: list[object] = [-1, ""]
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def rfc3339(ts: float) -> str:
    """UTC with milliseconds; the seconds part is formatted once per second, not per line."""
    whole = int(ts)
    if _ts_cache[0] != whole:
        _ts_cache[0] = whole
        _ts_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return _ts_cache[1] + _MILLIS[int((ts - whole) * 1000)]  # type: ignore[operator]


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One access-log line as a dict; None for a torn or foreign line."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "request_id" in data else None


class AccessLog:
    """Appends whole lines, buffered: flushed when 64 KiB are waiting, at least once a
    second (`start`), and on reopen and close. A line is never split across writes, so
    a reader (or `edgenode tail`) only ever sees whole lines, at most a second late.
    A write the OS refuses (disk full, I/O error) loses those lines, counted in
    `lines_lost` and reported in the twistd log at most once a minute; the edge serves on.
    """

    FLUSH_BYTES = 65536
    FLUSH_SECONDS = 1.0

    def __init__(self, target: Path | Literal["-"] | None) -> None:
        self.target = target
        self._file: IO[bytes] | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flusher: LoopingCall | None = None
        self._clock: IReactorTime | None = None  # from start(): the flusher's and reports' time
        self.lines_lost = 0  # lines a failed write took (disk full, I/O error)
        self._unreported = 0
        self._next_loss_report = 0.0
        self.open()

    def open(self) -> None:
        if self.target is None:
            self._file = None
        elif self.target == "-":
            self._file = sys.stdout.buffer
        else:
            path = Path(self.target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("ab", buffering=0)

    def start(self, clock: IReactorTime) -> None:
        """Flush at least every FLUSH_SECONDS on `clock` (the reactor)."""
        self._clock = clock
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flusher.start(self.FLUSH_SECONDS, now=False)

    def write(self, record: AccessRecord) -> None:
        if self._file is not None:
            self.write_line(record.to_json_line())

    def write_line(self, line: bytes) -> None:
        """One whole JSON line, newline included."""
        if self._file is None:
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._pending and self._file is not None:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            try:
                view = memoryview(data)
                while view:  # whole lines, appended (O_APPEND) in as few writes as the OS takes
                    written = self._file.write(view)
                    view = view[written or len(view) :]
                if self.target == "-":
                    self._file.flush()
            except OSError as e:
                # A full or failing disk must not stop the edge (nor this flusher): the
                # lines are lost, and the twistd log says so, as nginx's error log would.
                self._lost(data.count(b"\n"), e)

    LOST_REPORT_INTERVAL = 60.0  # seconds between two reports of lost lines

    def _lost(self, lines: int, error: OSError) -> None:
        self.lines_lost += lines
        now = self._clock.seconds() if self._clock is not None else time.monotonic()
        if now < self._next_loss_report:
            self._unreported += lines
            return
        lost, self._unreported = self._unreported + lines, 0
        self._next_loss_report = now + self.LOST_REPORT_INTERVAL
        log.error(
            "access log {target}: {lines} lines lost ({error}); at most one such report a minute",
            target=str(self.target),
            lines=lost,
            error=f"{type(error).__name__}: {error.strerror or error}",
        )

    def reopen(self) -> None:
        """Start writing to a fresh file at `target` (after `mv` for rotation, or a new path)."""
        self.flush()  # what was logged before the signal belongs to the old file
        self._close_file()
        self.open()

    def close(self) -> None:
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        self.flush()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None and self.target != "-":
            self._file.close()
        self._file = None


# The compiled twin of AccessRecord.to_json_line (_accesslog.pyx), when built: speedups.py.
_compiled = speedups.load("edgenode._accesslog")
if _compiled is not None:
    AccessRecord.to_json_line = _compiled.to_json_line  # type: ignore[method-assign]
