"""The client side: an HTTP/1.1 server protocol on httptools (llhttp).

It owns keep-alive, pipelining order (one exchange at a time, later requests queued
with reading paused), the SPEC §3 client limits and timeouts, the framing of
responses (Content-Length, chunked, or close-delimited for HTTP/1.0), and the
error responses the edge generates itself. What to do with a request is the
handler's business (proxy.py).

On the HTTPS listener (SPEC §8) the same protocol runs over a `TLSTransport` in accept
mode (tlstransport.py). Until the handshake completes, the connection has
`client_header_timeout` to finish it (a client that stalls or sends garbage is closed);
then `client_tls` holds what the handshake settled, and every request of the connection
carries it. A connection that ends before its handshake completed is reported to the
handler once (`client_handshake_failed`), unless the client never sent a byte (a port
check is not a handshake).
"""

from __future__ import annotations

import collections
from typing import Any, Protocol

import attrs
import httptools
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edgenode.config import Limits
from edgenode.datapath.headers import Headers, RequestScan, message_head, scan_request
from edgenode.datapath.socketwriter import SocketWriter
from edgenode.datapath.transport import StreamTransport
from edgenode.errors import ErrorCode
from edgenode.hostnames import normalize_request_host
from edgenode.servertls import ClientTLSFacts, client_facts, handshake_refusal

FLUSH_BEFORE_CLOSE = 10.0  # seconds a client gets to take a cut-short response
# 4xx answers to well-formed requests: the connection may carry the next one.
_REQUEST_WAS_FINE = frozenset({ErrorCode.UNKNOWN_DOMAIN, ErrorCode.MISDIRECTED_REQUEST})

REASONS = {
    100: b"Continue",
    200: b"OK",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


# The status lines origins send most, built once.
_STATUS_LINES = {
    (status, reason): b"HTTP/1.1 %d %s" % (status, reason)
    for status, reason in [
        (200, b"OK"),
        (204, b"No Content"),
        (206, b"Partial Content"),
        (301, b"Moved Permanently"),
        (302, b"Found"),
        (304, b"Not Modified"),
        (404, b"Not Found"),
    ]
}


@attrs.define(slots=True)
class RequestHead:
    """A parsed client request head, validated; `host` is normalised, `path` is origin-form."""

    method: bytes
    target: bytes
    path: bytes
    version: bytes
    headers: Headers
    scan: RequestScan  # the headers as the proxy forwards them (headers.py)
    keep_alive: bool
    content_length: int | None
    chunked: bool
    expect_continue: bool
    host: str | None  # normalised request host; None when missing (the proxy answers 400)
    host_header: bytes  # the authority as the client sent it (for X-Forwarded-Host)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class RequestSink(Protocol):
    """What the handler gives back for one request: where its body and fate go."""

    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def client_lost(self) -> None: ...

    def reject(self, code: ErrorCode, detail: str) -> None: ...


class RequestHandler(Protocol):
    def start(self, head: RequestHead, stream: ClientStream) -> RequestSink: ...

    def refuse(self, head: RequestHead, stream: ClientStream, code: ErrorCode, detail: str) -> None:
        """Answer (and log) a request the edge rejects before it could be routed."""

    def client_handshake_done(self, facts: ClientTLSFacts) -> None:
        """A client's TLS handshake completed (HTTPS listener)."""

    def client_handshake_failed(self, failure: HandshakeFailure) -> None:
        """A client's TLS handshake did not complete (HTTPS listener)."""


@attrs.frozen
class HandshakeFailure:
    """A client TLS handshake that did not complete, as the access log and metrics tell it."""

    client: str
    sni: str | None
    refused: bool  # the SNI was refused (`unknown_sni: reject`), not a protocol failure
    detail: str


class _StopReading(Exception):
    """Bytes after a `Connection: close` request: not ours to parse."""


class BadRequest(Exception):
    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@attrs.define
class _Request:
    head: RequestHead
    sink: RequestSink | None = None
    chunks: list[bytes] = attrs.Factory(list)  # body received while queued
    body_bytes: int = 0
    ended: bool = False
    responded: bool = False  # the response is complete


class ClientStream:
    """The response side of one exchange, as the handler sees it."""

    __slots__ = (
        "_conn",
        "_req",
        "chunked",
        "client_ip",
        "client_ip_bytes",
        "client_tls",
        "closing",
        "finished",
        "framed",
        "started",
    )

    def __init__(self, conn: DownstreamProtocol, req: _Request) -> None:
        self._conn = conn
        self._req = req
        self.client_ip = conn.client_ip
        self.client_ip_bytes = conn.client_ip_bytes
        self.client_tls = conn.client_tls
        self.started = False
        self.finished = False
        self.chunked = False
        self.framed = False
        self.closing = not req.head.keep_alive

    @property
    def connected(self) -> bool:
        return (
            self._conn.transport is not None
            and not self._conn.lost
            and self._conn.current is self._req
        )

    def start_response(
        self, status: int, reason: bytes, lines: list[bytes], length: int | None, *, no_body: bool
    ) -> None:
        """Send the response head (`Name: value` lines) with our framing: Content-Length,
        chunked, or close-delimited. `lines` is extended in place."""
        self.started = True
        head = self._req.head
        if no_body:
            if length is not None and status != 204:
                lines.append(b"Content-Length: %d" % length)
        elif length is not None:
            self.framed = True
            lines.append(b"Content-Length: %d" % length)
        elif head.version == b"1.1":
            self.chunked = self.framed = True
            lines.append(b"Transfer-Encoding: chunked")
        else:
            self.closing = True  # HTTP/1.0 client: the close ends the body
        if self._conn.closing_after_response or self._conn.draining:
            self.closing = True
        if self.closing:
            lines.append(b"Connection: close")
        elif head.version != b"1.1":
            lines.append(b"Connection: keep-alive")
        start = _STATUS_LINES.get((status, reason)) or b"HTTP/1.1 %d %s" % (
            status,
            reason or REASONS.get(status, b"Unknown"),
        )
        self._conn.write(message_head(start, lines))

    def send_body(self, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._conn.write(data)

    def end_response(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.chunked:
            self._conn.write(b"0\r\n\r\n")
        self._conn.flush()
        self._conn.response_finished(self._req, self.closing)

    def close_after_response(self) -> None:
        """Close the connection once this response is out: the stream cannot be trusted for
        a next request (an error answered before the request body ended)."""
        self.closing = True

    def abort(self) -> None:
        """End a response that cannot be completed, never so that it looks complete.

        With Content-Length or chunked framing the client can tell a short body from a
        whole one: it gets what was sent (status included) and then the close, as nginx
        does. A close-delimited body (HTTP/1.0) would look complete after a close, so
        that connection is reset instead.
        """
        self.finished = True
        if self.started and self.framed:
            self._conn.close_after_flush()
        else:
            self._conn.abort()

    def send_error(self, code: ErrorCode, request_id: str, detail: str = "") -> int:
        """A short text response naming the error code and request id; returns bytes sent."""
        body = f"{code.status} {code.value}\nrequest id: {request_id}\n".encode()
        if 400 <= code.status < 500 and code not in _REQUEST_WAS_FINE:
            self.closing = True  # the request itself was bad: do not trust the rest of the stream
        lines = [
            b"Content-Type: text/plain; charset=utf-8",
            b"X-Edge-Request-Id: " + request_id.encode(),
            b"X-Edge-Error: " + code.value.encode(),
        ]
        self.start_response(
            code.status, REASONS.get(code.status, b""), lines, len(body), no_body=False
        )
        if self._req.head.method != b"HEAD":
            self.send_body(body)
        self.end_response()
        return len(body)

    def send_redirect(self, location: bytes, request_id: str) -> int:
        """308 to `location` (SPEC §8 https_redirect); returns bytes sent."""
        body = b"redirecting to " + location + b"\n"
        lines = [
            b"Location: " + location,
            b"Content-Type: text/plain; charset=utf-8",
            b"X-Edge-Request-Id: " + request_id.encode(),
        ]
        self.start_response(308, REASONS[308], lines, len(body), no_body=False)
        if self._req.head.method != b"HEAD":
            self.send_body(body)
        self.end_response()
        return len(body)

    def pause_request_body(self) -> None:
        self._conn.pause_reading("upload")

    def resume_request_body(self) -> None:
        self._conn.resume_reading("upload")

    def flush(self) -> None:
        """Send what this response wrote since the last flush (one origin read's worth)."""
        self._conn.flush()

    def register_producer(self, producer: IPushProducer) -> None:
        self._conn.register_download(producer)

    def unregister_producer(self) -> None:
        self._conn.unregister_download()


@implementer(IHandshakeListener)
class DownstreamProtocol(TwistedProtocol):
    """One client connection (in clear, or over TLS with `tls`)."""

    transport: StreamTransport  # type: ignore[assignment]  # set by makeConnection

    def __init__(self, factory: DownstreamFactory, *, tls: bool = False) -> None:
        self.factory = factory
        self.tls = tls
        self.client_tls: ClientTLSFacts | None = None  # once the TLS handshake completed
        self._handshake_timed_out = False
        self.limits: Limits = factory.limits
        self.clock = factory.clock
        self.handler = factory.handler
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.lost = False
        self.draining = False
        self.closing_after_response = False
        self._last_request_read = False
        self.current: _Request | None = None
        self._parsing: _Request | None = None
        self._queue: collections.deque[_Request] = collections.deque()
        self._pause_reasons: set[str] = set()
        self._began_in_this_read = False
        self._parser = httptools.HttpRequestParser(self)
        self._timer: Any = None
        self._deadline: float | None = None
        self._head_timed = False
        # An Upgrade request with a body, between llhttp's early stop at its head and the
        # parser primed to read its body (see _reframe_upgrade).
        self._upgrade_body: RequestHead | None = None
        self._priming = False
        # A bad request found while others were in flight or queued: answered after them.
        self._refusal: tuple[RequestHead, ErrorCode, str] | None = None
        self._advancing = False  # _next is starting queued requests
        self._reset_head()
        self._out: list[bytes] = []  # written, not yet flushed (see "writing" below)
        self._writer: SocketWriter  # the transport's, from connectionMade

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "") or ""
        self.client_ip_bytes = self.client_ip.encode("ascii")
        self._writer = SocketWriter(self.transport)
        self.factory.connections.add(self)
        if self.tls:
            self._set_timer(self.limits.client_header_timeout)  # for the handshake
        else:
            self._set_timer(self.limits.client_idle_timeout)

    def handshakeCompleted(self) -> None:
        """The client's TLS handshake completed: its facts, then the idle deadline."""
        facts = client_facts(self.transport.getHandle())
        self.client_tls = facts
        self.handler.client_handshake_done(facts)
        self._set_timer(self.limits.client_idle_timeout)  # replaces the handshake's deadline

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.tls and self.client_tls is None:
            self._report_handshake_failure(reason)
        self.lost = True
        self._writer.connection_lost()
        self.factory.connection_closed(self)
        self._cancel_timer()
        req, self.current = self.current, None
        if req is not None and req.sink is not None and not req.responded:
            req.sink.client_lost()
        self._queue.clear()

    def _report_handshake_failure(self, reason: Failure | None) -> None:
        tls = self.transport.getHandle() if self.transport is not None else None
        if not getattr(self.transport, "handshake_started", True):
            return  # not a byte came: a port check, or a client that changed its mind
        refused, sni = handshake_refusal(tls if isinstance(tls, SSL.Connection) else None)
        if refused:
            detail = f"no certificate covers the SNI {sni!r} (unknown_sni: reject)"
        elif self._handshake_timed_out:
            detail = "handshake not completed within client_header_timeout"
        else:
            detail = _handshake_error(reason)
        self.handler.client_handshake_failed(
            HandshakeFailure(client=self.client_ip, sni=sni, refused=refused, detail=detail)
        )

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()

    def close_after_flush(self) -> None:
        """Send what is buffered, then close; a client that does not read is cut off."""
        self.closing_after_response = True
        self.current = None
        self._queue.clear()
        if self.transport is not None and not self.lost:
            self._close()
            self._set_timer(FLUSH_BEFORE_CLOSE)

    # -- writing --------------------------------------------------------------

    # A response is written as one send: what the exchange writes while handling one
    # origin read is collected (`write`) and sent at the end of that read (`flush`),
    # straight to the socket while the transport holds nothing for the client
    # (socketwriter.py). The exchange is the download producer, paused while the
    # client does not keep up.

    def write(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not self.lost:
            self._writer.write(data)

    def register_download(self, producer: IPushProducer) -> None:
        """The response's source, paused while the client does not keep up."""
        self._writer.pace(producer)

    def unregister_download(self) -> None:
        self._writer.unpace()

    def _close(self) -> None:
        """Close once everything written is sent (the transport's loseConnection)."""
        self.flush()
        self._writer.release()
        self.transport.loseConnection()

    # -- timers ---------------------------------------------------------------

    # One DelayedCall per connection, moved only when a deadline comes sooner: a
    # keep-alive request that arrives in one read costs no timer operation at all.

    def _set_timer(self, seconds: float) -> None:
        """Time the connection out `seconds` from now (idle, head or flush deadline)."""
        deadline = self.clock.seconds() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = self.clock.callLater(seconds, self._deadline_reached)
        elif timer.getTime() > deadline:
            timer.reset(seconds)

    def _clear_deadline(self) -> None:
        """No client deadline while an exchange runs; an armed timer finds nothing to do."""
        self._deadline = None

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _deadline_reached(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        now = self.clock.seconds()
        if now < deadline:
            self._timer = self.clock.callLater(deadline - now, self._deadline_reached)
            return
        self._deadline = None
        self._timed_out()

    def _timed_out(self) -> None:
        if self.tls and self.client_tls is None:
            self._handshake_timed_out = True
            self.transport.abortConnection()
            return
        if self._in_head or self.closing_after_response or self.current is not None:
            # A head that did not arrive in time (slowloris), or a client that does not
            # take a cut-short response: reset, nothing more is owed.
            self.transport.abortConnection()
        else:
            # An idle keep-alive connection: a plain close, as nginx does, so a client
            # that just reused it sees a clean end rather than a reset.
            self._close()

    # -- reading --------------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        if not self._pause_reasons and self.transport is not None:
            self.transport.pauseProducing()
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        reasons = self._pause_reasons
        if reason not in reasons:
            return  # not paused for this (the usual case after each response)
        reasons.discard(reason)
        if not reasons and self.transport is not None and not self.lost:
            self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.closing_after_response or self._last_request_read:
            return  # the rest of the stream is not ours to read
        self._began_in_this_read = False
        parsing = self._parsing
        body_seen = parsing.body_bytes if parsing is not None else 0
        upgraded_at: int | None = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            upgraded_at = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, BadRequest):
                self._refuse(cause.code, cause.detail)
                return
            if isinstance(cause, _StopReading):
                return
            raise
        except httptools.HttpParserError as e:
            self._refuse(ErrorCode.BAD_REQUEST, f"malformed request: {e}")
            return
        if upgraded_at is not None:
            # Outside the except block, so that a callback error in the rest keeps its cause.
            self._continue_after_upgrade(data[upgraded_at:])
            return
        if self._in_head:
            self._head_read(data)
        elif parsing is not None and parsing is self._parsing and parsing.head.chunked:
            self._chunked_read(parsing, len(data), parsing.body_bytes - body_seen)

    def _head_read(self, data: bytes) -> None:
        """A read that ended inside a request head: deadline, size, and HTTP/0.9."""
        if not self._head_timed and self.current is None:
            # The head did not arrive in one read: from now on it has a deadline (slowloris).
            self._head_timed = True
            self._set_timer(self.limits.client_header_timeout)
        if self._url and self._is_http09(data):
            self._refuse(ErrorCode.BAD_REQUEST, "HTTP/0.9 is not served")
            return
        if not self._began_in_this_read:
            # A whole read inside one unfinished head counts in full; the read the head
            # began in is not charged (it may hold the previous request), so a head can
            # overshoot by one read before this catches it; on_headers_complete is exact.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(ErrorCode.REQUEST_HEADER_TOO_LARGE, "request head too large")

    def _is_http09(self, data: bytes) -> bool:
        """Whether the head being read is an HTTP/0.9 request line (`GET /x` and a newline).

        llhttp would wait for header lines that a real 0.9 client never sends; it names the
        version 0.9 only once a byte follows the line. A request line that ended with no
        version is 0.9 too: once a line is complete, a 1.x request already has its version.
        """
        version = self._parser.get_http_version()
        return version == "0.9" or (version == "0.0" and data.endswith(b"\n"))

    def _chunked_read(self, req: _Request, size: int, body: int) -> None:
        """A read that ended inside a chunked body. Bytes that bring no body (chunk
        extensions, trailers) are held by the parser until their line ends: bounded by
        max_header_bytes, as the head is, so a client cannot grow them without limit."""
        if body:
            self._framing_bytes = size - body
        else:
            self._framing_bytes += size
        if self._framing_bytes > self.limits.max_header_bytes:
            self._refuse(
                ErrorCode.REQUEST_HEADER_TOO_LARGE,
                "chunk extensions or trailers above max_header_bytes",
            )

    def _reset_head(self) -> None:
        self._in_head = False
        self._head_timed = False
        self._head_bytes = 0
        self._url = b""
        self._headers: Headers = []
        self._framing_bytes = 0  # chunked body: bytes read that brought no body

    def on_message_begin(self) -> None:
        if self._last_request_read or self.closing_after_response:
            # After a `Connection: close` request, or an answer that closes the connection
            # (a refused request), nothing more is parsed, let alone forwarded.
            raise _StopReading()
        self._reset_head()
        self._in_head = True
        self._began_in_this_read = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_header_bytes:
            raise BadRequest(ErrorCode.URI_TOO_LONG, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name, value))
            return
        # A trailer field of a chunked body: counted as a head is, then dropped (the edge
        # re-frames the body to the origin and sends no trailers).
        self._framing_bytes += len(name) + len(value) + 4
        if self._framing_bytes > self.limits.max_header_bytes:
            raise BadRequest(
                ErrorCode.REQUEST_HEADER_TOO_LARGE, "trailer section above max_header_bytes"
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._priming:
            self._priming = False
            self._reset_head()
            return
        head = self._build_head()
        if (head.chunked or head.content_length) and self._parser.should_upgrade():
            # llhttp is about to stop at this head, body unread (see dataReceived).
            self._upgrade_body = head
        req = _Request(head)
        self._parsing = req
        if self.current is None:
            self._clear_deadline()
            self._start(req)
        else:
            self._queue.append(req)
            self.pause_reading("pipeline")

    def on_body(self, data: bytes) -> None:
        req = self._parsing
        if req is None:
            return
        req.body_bytes += len(data)
        limit = self.limits.max_body_bytes
        if limit and req.body_bytes > limit:
            if req.sink is not None and req is self.current:
                req.sink.reject(ErrorCode.REQUEST_TOO_LARGE, f"request body above {limit} bytes")
            else:
                self._parsing = None
            raise BadRequest(ErrorCode.REQUEST_TOO_LARGE, f"request body above {limit} bytes")
        if req.sink is not None:
            req.sink.body(data)
        elif not req.responded:
            req.chunks.append(data)
        else:
            self._set_timer(self.limits.client_idle_timeout)  # dropped, but it comes

    def on_message_complete(self) -> None:
        if self._upgrade_body is not None:
            return  # llhttp's early end of an Upgrade request: its body is still to come
        req = self._parsing
        self._parsing = None
        if req is None:
            return
        length = req.head.content_length
        if length is not None and req.body_bytes != length:
            # The parser and the head disagree on where this request ends: never guess.
            raise BadRequest(ErrorCode.BAD_REQUEST, "request body does not match its framing")
        req.ended = True
        if not req.head.keep_alive:
            # Nothing after a `Connection: close` request is read; its own response
            # (ClientStream.closing) closes the connection once it and those before are done.
            self._last_request_read = True
            self.pause_reading("last request")
        if req.sink is not None:
            req.sink.end()
        if req.responded and req is self.current:
            self._next()

    def _continue_after_upgrade(self, rest: bytes) -> None:
        """An Upgrade request (WebSocket, h2c) is answered as plain HTTP/1.1 (RFC 9110 §7.8
        lets a server ignore Upgrade). llhttp stops at its head as if the rest of the
        stream were another protocol; here it is not, so parsing goes on with a new parser,
        and a body is framed exactly as it would be without the Upgrade."""
        self._parser = httptools.HttpRequestParser(self)
        head, self._upgrade_body = self._upgrade_body, None
        if head is not None and not self.closing_after_response:
            self._reframe_upgrade(head)
        if rest:
            self.dataReceived(rest)

    def _reframe_upgrade(self, head: RequestHead) -> None:
        """Prime the new parser so that it reads the body of `head`, an Upgrade request,
        by the head's own framing: a synthetic head with that framing alone is fed first,
        its callbacks ignored, and llhttp then parses the client's body bytes and what
        follows exactly as it does for any other request."""
        framing = (
            b"Transfer-Encoding: chunked"
            if head.chunked
            else b"Content-Length: %d" % (head.content_length or 0)
        )
        self._priming = True
        self._parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")

    def _build_head(self) -> RequestHead:
        parser = self._parser
        method = parser.get_method()
        if method == b"CONNECT":
            raise BadRequest(ErrorCode.BAD_REQUEST, "CONNECT is not supported by this edge")
        target = self._url
        if b"#" in target:
            # RFC 9112 §3.2: a fragment is never sent; origins would disagree on what it means.
            raise BadRequest(ErrorCode.BAD_REQUEST, "request target has a fragment")
        scan = scan_request(self._headers)
        size = len(target) + scan.size
        if size > self.limits.max_header_bytes:
            raise BadRequest(ErrorCode.REQUEST_HEADER_TOO_LARGE, f"request head is {size} bytes")
        content_length = None if scan.content_length is None else int(scan.content_length)
        chunked = _is_chunked(scan.transfer_encodings)
        expect = _expects_continue(scan.expect)
        if len(scan.hosts) > 1:
            raise BadRequest(ErrorCode.BAD_REQUEST, "more than one Host header")
        path = target
        authority: bytes | None = scan.hosts[0] if scan.hosts else None
        if target[:1] != b"/":
            authority, path = _absolute_target(method, target, authority)
        host: str | None = None
        if authority is not None:
            host = _request_host(authority)
            if host is None:
                raise BadRequest(ErrorCode.BAD_REQUEST, "invalid Host")
        limit = self.limits.max_body_bytes
        if limit and content_length is not None and content_length > limit:
            raise BadRequest(
                ErrorCode.REQUEST_TOO_LARGE, f"Content-Length {content_length} above {limit}"
            )
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise BadRequest(
                ErrorCode.BAD_REQUEST, f"HTTP/{parser.get_http_version()} is not served"
            )
        return RequestHead(
            method=method,
            target=target,
            path=path,
            version=version,
            headers=self._headers,
            scan=scan,
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request means faulty framing;
            # the request is served, then the connection closes.
            keep_alive=parser.should_keep_alive()
            and not self.draining
            and not (version == b"1.0" and scan.transfer_encodings),
            content_length=content_length,
            chunked=chunked,
            expect_continue=expect and version == b"1.1",
            host=host,
            host_header=authority or b"",
        )

    # -- exchanges ------------------------------------------------------------

    def _start(self, req: _Request) -> None:
        self.current = req
        stream = ClientStream(self, req)
        sink = self.handler.start(req.head, stream)
        if req.responded or self.current is not req:
            return  # answered at once (an error): nothing more goes to the exchange
        req.sink = sink
        if req.head.expect_continue and not stream.started and not req.ended:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.flush()
        chunks, req.chunks = req.chunks, []
        for chunk in chunks:
            sink.body(chunk)
        if req.ended:
            sink.end()

    def response_finished(self, req: _Request, closing: bool) -> None:
        """A response is complete (ClientStream.end_response): the next request, or the close."""
        req.responded = True
        # The exchange is done with this request (body bytes still to come are dropped):
        # letting go of it breaks the exchange -> stream -> request -> exchange cycle, so
        # that it is freed at once instead of by the cyclic collector (~4 us a request).
        req.sink = None
        if closing:
            self.closing_after_response = True
            self.current = None
            self._queue.clear()
            if self.transport is not None:
                self._close()
            return
        if req.ended:
            if not self._advancing:  # else _next's loop, which started it, goes on
                self._next()
        elif req.head.chunked or req.head.content_length:
            # The origin answered before the body ended: the rest is read and dropped, as
            # nginx discards it, as long as it keeps coming (on_body renews the deadline).
            # (A request without a body answered inside its own head's parsing ends a moment
            # later, in the same read: no deadline for that.)
            self._set_timer(self.limits.client_idle_timeout)

    def _next(self) -> None:
        self.current = None
        if self.lost:
            return
        if self.closing_after_response:
            self._close()
            return
        # A queued request the edge answers at once (a 421) finishes inside _start; the
        # loop, not a nested _next, then starts the one after it, so that no exchange in
        # flight is forgotten and responses keep the order of the requests.
        self._advancing = True
        try:
            while self._queue:
                req = self._queue.popleft()
                if not self._queue:
                    self.resume_reading("pipeline")
                self._start(req)
                if self.current is req and not req.responded:
                    return
                if self.lost or self.closing_after_response:
                    return
                self.current = None
        finally:
            self._advancing = False
        if self._refusal is not None:
            self._answer_refusal()
            return
        self.resume_reading("pipeline")
        if self.draining:
            self._close()
            return
        if self._in_head:
            self._head_timed = True
            self._set_timer(self.limits.client_header_timeout)
        else:
            self._set_timer(self.limits.client_idle_timeout)

    def _refuse(self, code: ErrorCode, detail: str) -> None:
        """The edge answers a bad request itself and closes: the stream is not to be trusted.

        Nothing after the bad bytes is parsed. Requests parsed before them are served first,
        in order, and the refusal is answered after them (RFC 9112 §9.3.2: responses in the
        order of the requests); a request whose own body is broken is answered at once.
        """
        if self.lost or self.closing_after_response or self._refusal is not None:
            return
        self._last_request_read = True
        self.pause_reading("last request")
        current = self.current
        if current is not None and current.responded:
            # Answered already; only the rest of its body was being read: done now.
            self._parsing = None
            self.close_after_flush()
            return
        if current is not None and self._parsing is current and current.sink is not None:
            # The request in flight is itself broken (its body framing): it cannot go on.
            self._parsing = None
            self.closing_after_response = True
            current.sink.reject(code, detail)
            return
        broken = self._parsing
        self._parsing = None
        if broken is not None and broken in self._queue:
            self._queue.remove(broken)  # a queued request whose body is broken: never served
        self._refusal = (self._refused_head(), code, detail)
        if current is None:
            self._answer_refusal()
        # else: _next answers it once the requests before it are done

    def _refused_head(self) -> RequestHead:
        """What is known of a request the parser could not finish, for the answer and log."""
        return RequestHead(
            method=self._parser_method(),
            target=self._url,
            path=self._url,
            version=b"1.1",
            headers=self._headers,
            scan=RequestScan(),
            keep_alive=False,
            content_length=None,
            chunked=False,
            expect_continue=False,
            host=None,
            host_header=b"",
        )

    def _answer_refusal(self) -> None:
        """Answer the refusal through the handler, so that it gets logged, and close."""
        assert self._refusal is not None
        head, code, detail = self._refusal
        self.closing_after_response = True
        req = _Request(head, ended=True)
        self._queue.clear()
        self.current = req
        stream = ClientStream(self, req)
        stream.closing = True
        self.handler.refuse(head, stream, code, detail)

    def _parser_method(self) -> bytes:
        try:
            return self._parser.get_method()
        except Exception:
            return b"-"

    def drain(self) -> None:
        """Graceful shutdown: finish the exchange in flight, then close."""
        self.draining = True
        if self.current is None and self.transport is not None:
            self._close()


_VERSIONS = {"1.0": b"1.0", "1.1": b"1.1"}
_HOSTS_REMEMBERED = 4096
_hosts: dict[bytes, str | None] = {}


def _handshake_error(reason: Failure | None) -> str:
    """A failed handshake's reason in a few words: OpenSSL's, else how the client left."""
    value = reason.value if reason is not None else None
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        texts = [str(entry[-1]) for entry in value.args[0] if entry]
        if texts:
            return "TLS error: " + "; ".join(dict.fromkeys(texts))
    return "the client closed the connection during the handshake"


def _request_host(authority: bytes) -> str | None:
    """normalize_request_host, remembered per spelling: clients name the same hosts."""
    try:
        return _hosts[authority]
    except KeyError:
        host = normalize_request_host(authority)
        if len(_hosts) < _HOSTS_REMEMBERED:  # a client inventing hosts cannot grow this
            _hosts[authority] = host
        return host


def _is_chunked(codings: list[bytes]) -> bool:
    """Only one plain "chunked" is forwarded: any other coding is a smuggling shape or
    something no origin behind a CDN should have to guess about."""
    if not codings:
        return False
    if len(codings) > 1 or codings[0].strip().lower() != b"chunked":
        raise BadRequest(ErrorCode.BAD_REQUEST, "unsupported Transfer-Encoding")
    return True


def _expects_continue(values: list[bytes]) -> bool:
    for value in values:
        if value.lower() != b"100-continue":
            raise BadRequest(ErrorCode.BAD_REQUEST, "unsupported Expect")
    return bool(values)


def _absolute_target(
    method: bytes, target: bytes, authority: bytes | None
) -> tuple[bytes | None, bytes]:
    """(authority, origin-form path) of a request target that does not start with "/"."""
    if target == b"*" and method == b"OPTIONS":
        return authority, target
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError as e:
        raise BadRequest(ErrorCode.BAD_REQUEST, "invalid request target") from e
    if url.schema not in (b"http", b"https") or not url.host:
        raise BadRequest(ErrorCode.BAD_REQUEST, "invalid request target")
    authority = url.host + (b":%d" % url.port if url.port else b"")
    return authority, (url.path or b"/") + (b"?" + url.query if url.query else b"")


class DownstreamFactory(Factory):
    """Client connections; the handler is swapped by nobody: it reads the runtime per request."""

    noisy = False

    def __init__(self, handler: RequestHandler, limits: Limits, clock: IReactorTime) -> None:
        self.handler = handler
        self.limits = limits
        self.clock = clock
        self.connections: set[DownstreamProtocol] = set()
        self._closed_waiters: list[Deferred[None]] = []  # when_closed()'s, not fired yet

    def buildProtocol(self, addr: Any) -> DownstreamProtocol:
        return DownstreamProtocol(self)

    def build_tls_protocol(self, addr: Any) -> DownstreamProtocol:
        """A client connection of the HTTPS listener, under a TLSTransport."""
        return DownstreamProtocol(self, tls=True)

    def connection_closed(self, conn: DownstreamProtocol) -> None:
        self.connections.discard(conn)
        if not self.connections and self._closed_waiters:
            waiters, self._closed_waiters = self._closed_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_closed(self) -> Deferred[None]:
        """Fires once no client connection is open (at once if none is): a graceful stop
        waits on it, after `drain`, so that every response leaves whole. Cancelling it (a
        timeout) only stops the wait."""
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._closed_waiters.remove)
        self._closed_waiters.append(waiter)
        return waiter

    def drain(self) -> None:
        for conn in list(self.connections):
            conn.drain()


__all__ = [
    "ClientStream",
    "DownstreamFactory",
    "DownstreamProtocol",
    "HandshakeFailure",
    "RequestHead",
    "RequestSink",
]
