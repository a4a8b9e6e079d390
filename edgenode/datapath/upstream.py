"""The origin side: one HTTP/1.1 client connection to an origin, parsed with llhttp.

Invariants:
- A connection is "ready" only after its TLS handshake (and our verification) finished,
  so a failure before ready means no request byte reached the origin.
- It goes back to its pool (pool.py) only when the request and the response were both
  fully framed and fully transferred; anything else retires it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import httptools
from OpenSSL import SSL
from twisted.internet import error as neterror
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edgenode.datapath.headers import (
    CONTENT_LENGTH,
    RESPONSE_ACTIONS,
    TRANSFER_ENCODING,
    Headers,
)
from edgenode.datapath.socketwriter import tcp_socket
from edgenode.datapath.tlstransport import connect_tls
from edgenode.datapath.transport import StreamTransport
from edgenode.errors import ErrorCode, OriginError
from edgenode.reactors import IOriginReactor
from edgenode.routes import OriginRoute
from edgenode.tls import ConnectionTLS

MAX_RESPONSE_HEAD_BYTES = 65536


class StaleConnection(OriginError):
    """A reused pooled connection closed before any response byte arrived."""


class ResponseListener(Protocol):
    """What an upstream connection tells the exchange that sent a request on it."""

    def response_head(
        self, status: int, reason: bytes, headers: Headers, length: int | None
    ) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self) -> None: ...

    def read_done(self) -> None:
        """One origin read is handled and the response goes on: relay what it brought."""

    def response_failed(self, err: OriginError) -> None: ...


class ConnectionWaiter(Protocol):
    """Who asked the pool for a connection."""

    def connection_ready(self, conn: UpstreamConnection) -> None: ...

    def connection_failed(self, err: OriginError) -> None: ...


class _HeadersOnly(Exception):
    """Stops the parser after the head of a response that has no body (HEAD)."""


class _Unsolicited(Exception):
    """Stops the parser at a second response in one read: nobody asked for it."""


# A connection's life; the pool moves it between IDLE and BUSY.
CONNECTING, IDLE, BUSY, CLOSED = range(4)


class ConnectionOwner(Protocol):
    """What a connection tells the pool that made it (pool.py)."""

    @property
    def clock(self) -> IReactorTime: ...

    def release(self, conn: UpstreamConnection) -> None:
        """Ready with no requester left, or its exchange finished cleanly."""

    def connection_closed(self, conn: UpstreamConnection) -> None:
        """Gone: its slot is free."""


@implementer(IHandshakeListener)
class UpstreamConnection(TwistedProtocol):
    """One HTTP/1.1 connection to an origin, parsed with httptools (llhttp)."""

    transport: StreamTransport  # type: ignore[assignment]  # set by makeConnection

    def __init__(
        self,
        pool: ConnectionOwner,
        route: OriginRoute,
        now: float,
        handshake_timeout: float,
        tls: ConnectionTLS | None = None,
    ) -> None:
        self.pool = pool
        self.tls = tls  # this connection's TLS facts (None: plain HTTP), filled in by tls.py
        self.route = route
        self.handshake_timeout = handshake_timeout
        self.state = CONNECTING
        self.requests = 0  # requests sent on this connection so far
        self.started = now
        self.connect_ms: float | None = None
        self.handshake_ms: float | None = None
        self.idle_since = 0.0
        self.retired = False
        self._paused = False
        self._chunked_upload = False
        self._uploading = False  # a client's body is the registered producer
        self._had_body = False  # a request body was streamed on this connection
        self._waiter: ConnectionWaiter | None = None
        self._handshake_timer: Any = None
        self._listener: ResponseListener | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reset_response()

    # -- connection setup -------------------------------------------------

    def connectionMade(self) -> None:
        now = self.pool.clock.seconds()
        self.connect_ms = (now - self.started) * 1000.0
        if self.route.tls:
            self._handshake_timer = self.pool.clock.callLater(
                self.handshake_timeout, self._handshake_timed_out, self.handshake_timeout
            )
            self._handshake_started = now
        else:
            tcp_socket(self.transport)  # TCP_NODELAY (the TLS transport sets its own)
            self._became_ready()

    def handshakeCompleted(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self.handshake_ms = (self.pool.clock.seconds() - self._handshake_started) * 1000.0
        if self.tls is not None:
            self.tls.capture_peer()
        self._became_ready()

    def _became_ready(self) -> None:
        self.state = BUSY
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.connection_ready(self)
        else:  # the requester went away while we connected: keep it for the next one
            self.pool.release(self)

    def _handshake_timed_out(self, timeout: float) -> None:
        self._handshake_timer = None
        assert self.tls is not None  # the handshake timer runs for TLS routes only
        self.fail_setup(self.tls.handshake_timed_out(timeout))
        self.transport.abortConnection()

    def wait_for_ready(self, waiter: ConnectionWaiter) -> None:
        """`waiter` gets this connection once it is ready (or its setup failure)."""
        self._waiter = waiter

    def abandon(self) -> None:
        """The requester gave up while this connection was being set up: when ready, it goes
        back to the pool for the next one."""
        self._waiter = None

    def fail_setup(self, err: OriginError) -> None:
        """Connecting failed (the pool's connector reports a TCP connect that did not)."""
        if self.state != CONNECTING:
            return
        self.state = CLOSED
        self.pool.connection_closed(self)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.connection_failed(err)

    # -- sending ----------------------------------------------------------

    def send_request(
        self, head: bytes, listener: ResponseListener, *, head_only: bool, chunked: bool = False
    ) -> None:
        """Write a request head; its body, if any, follows through `write_body` and `end_body`,
        framed here as the head says (`chunked`: the edge's own chunks; else as is, the head
        carrying its Content-Length)."""
        self._listener = listener
        self._head_only = head_only
        self._chunked_upload = chunked
        self.requests += 1
        self.transport.write(head)

    def upload_from(self, producer: IPushProducer) -> None:
        """The request body's source, paused while the origin does not keep up."""
        self.transport.registerProducer(producer, True)
        self._uploading = True
        self._had_body = True

    def _stop_upload(self) -> None:
        if self._uploading:
            self._uploading = False
            self.transport.unregisterProducer()

    def write_body(self, data: bytes) -> None:
        if self._chunked_upload:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def end_body(self) -> None:
        """The request body is complete: its last chunk, and no more pacing by the client."""
        if self._chunked_upload:
            self.transport.write(b"0\r\n\r\n")
        self._stop_upload()

    def pause_reading(self) -> None:
        """Backpressure from the client: stop reading the origin until it drains."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()

    # -- receiving --------------------------------------------------------

    def _reset_response(self) -> None:
        self._status = 0
        self._reason = b""
        self._headers: Headers = []
        self._head_bytes = 0
        self._in_head = True
        self._got_bytes = False
        self._length: int | None = None
        self._chunked = False
        self._complete = False
        self._keep_alive = False
        self._head_only = False
        self._tail = b""  # the last bytes of the head seen so far

    def dataReceived(self, data: bytes) -> None:
        if self.state != BUSY or self._listener is None:
            # An idle connection must be silent; bytes now mean a confused origin.
            self.transport.abortConnection()
            return
        self._got_bytes = True
        if self._in_head:
            if self._head_only:
                self._tail = (self._tail + data[-4:])[-4:]
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
                self._protocol_error(f"response head larger than {MAX_RESPONSE_HEAD_BYTES} bytes")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: the edge never asks for an upgrade (it drops Upgrade as
            # hop-by-hop), so what follows is not HTTP we could frame; never reuse it.
            self._protocol_error("origin switched protocols (101) though no upgrade was asked")
            return
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadersOnly):
                # HEAD: the head is the whole response. Bytes after it would be a body the
                # origin must not send; then the connection is not reusable.
                self._complete = True
                if self._tail != b"\r\n\r\n":
                    self.retired = True
                self._parser = httptools.HttpResponseParser(self)
            elif isinstance(e.__context__, _Unsolicited):
                self.retired = True  # the response we wanted is complete; the rest is not ours
            else:
                raise
        except httptools.HttpParserError as e:
            if not self._complete:
                self._protocol_error(f"malformed response from origin: {e}")
                return
            self.retired = True  # garbage after a complete response: keep the response
        if self._complete:
            self._finish_response()
        elif not self._in_head and self._listener is not None:
            self._listener.read_done()

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Unsolicited()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        action = RESPONSE_ACTIONS[name]
        if action == CONTENT_LENGTH:
            self._length = int(value)
        elif action == TRANSFER_ENCODING and value.lower().endswith(b"chunked"):
            self._chunked = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # Interim responses (100 Continue, 103 Early Hints) are not relayed; the
            # parser goes on to the next message on this connection.
            self._headers = []
            self._reason = b""
            self._length = None
            self._chunked = False
            return
        self._status = status
        self._in_head = False
        if self._chunked:
            self._length = None
        if self.requests == 1 and self.tls is not None and self.route.creator is not None:
            # Response bytes arrived, so a TLS 1.3 ticket has too: keep this route's session.
            self.route.creator.remember_session(self.tls)
        listener = self._listener
        if listener is not None:
            listener.response_head(status, self._reason.strip(), self._headers, self._length)
        if self._head_only:
            self._keep_alive = self._parser.should_keep_alive()
            raise _HeadersOnly()

    def on_body(self, data: bytes) -> None:
        listener = self._listener
        if listener is not None:
            listener.response_body(data)

    def on_message_complete(self) -> None:
        if self._status == 0:  # the end of an interim response
            return
        # Read it now: llhttp clears the message flags once this callback returns.
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True

    def _finish_response(self) -> None:
        keep = self._keep_alive and not self.retired
        listener = self._listener
        self._listener = None
        self._reset_response()
        if not keep:
            self.retired = True
        if listener is not None:
            listener.response_end()

    def _protocol_error(self, detail: str) -> None:
        listener, self._listener = self._listener, None
        self.retired = True
        self.transport.abortConnection()
        if listener is not None:
            listener.response_failed(
                OriginError(ErrorCode.ORIGIN_PROTOCOL_ERROR, detail, request_sent=True)
            )

    # -- teardown ---------------------------------------------------------

    def abort(self) -> None:
        """Drop the connection now (client gone, timeout, an upload cut short): never back
        into the pool."""
        self._listener = None
        self.retired = True
        if self.transport is not None:
            self._stop_upload()
            self.transport.abortConnection()

    def close_idle(self) -> None:
        self.retired = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        state, self.state = self.state, CLOSED
        if state == CLOSED:
            return  # setup already failed (handshake timeout) and was accounted for
        if state == CONNECTING:
            err = setup_failure(self.tls, reason.value if reason is not None else None)
            self.state = CONNECTING
            self.fail_setup(err)
            return
        self.pool.connection_closed(self)
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if not self._in_head and self._length is None and not self._chunked and not self._head_only:
            listener.response_end()  # a body delimited by the connection closing
            return
        reused = self.requests > 1
        if not self._got_bytes and not reused and isinstance(reason_value(reason), SSL.Error):
            # TLS 1.3: an origin refuses our client certificate (or lacks one) only after
            # our side of the handshake is done, with an alert before any response: a TLS
            # failure of this connection's setup, and the request never reached HTTP.
            assert self.tls is not None
            err = self.tls.setup_failure(reason_value(reason))
            # A body already streamed cannot always be replayed: then it counts as sent.
            err.request_sent = self._had_body
            listener.response_failed(err)
            return
        if not self._got_bytes:
            cls = StaleConnection if reused else OriginError
            listener.response_failed(
                cls(
                    ErrorCode.ORIGIN_PROTOCOL_ERROR,
                    "origin closed the connection before responding"
                    + (" (reused keep-alive connection)" if reused else ""),
                    request_sent=True,
                )
            )
        else:
            where = "response head" if self._in_head else "response body"
            listener.response_failed(
                OriginError(
                    ErrorCode.ORIGIN_PROTOCOL_ERROR,
                    f"origin connection lost in the middle of the {where}",
                    request_sent=True,
                )
            )


def reason_value(reason: Failure | None) -> BaseException | None:
    return reason.value if reason is not None else None


def setup_failure(tls: ConnectionTLS | None, exc: BaseException | None) -> OriginError:
    """The SPEC §4 error for a connection lost before it was ready (the edge and probe agree)."""
    if tls is None:
        return OriginError(
            ErrorCode.ORIGIN_CONNECT_FAILED, f"connection lost while connecting: {exc}"
        )
    return tls.setup_failure(exc)


class OneConnectionFactory(ClientFactory):
    """Hands out the one protocol of one connect attempt; a TCP connect that fails reaches
    `failed` as the SPEC §4 error. The edge's pool and the probe connect through it, so
    they report connect failures alike."""

    noisy = False

    def __init__(
        self,
        protocol: TwistedProtocol,
        failed: Callable[[OriginError], None],
        connect_timeout: float,
    ) -> None:
        self.conn = protocol
        self.failed = failed
        self.connect_timeout = connect_timeout

    def buildProtocol(self, addr: Any) -> TwistedProtocol:
        return self.conn

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed(connect_failure(reason.value, self.connect_timeout))


class ConnectTLS(Protocol):
    """How a TLS origin connection is opened: tlstransport's `connect_tls` (tests on a
    MemoryReactorClock bring one that records the connect, as it records connectTCP). As
    with connectTCP, a failure never reaches the factory inside the call: the pool hands
    the connection its waiter after it."""

    def __call__(
        self,
        reactor: IOriginReactor,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float,
        new_connection: Callable[[socket.socket], SSL.Connection],
    ) -> object: ...


def connect_origin(
    reactor: IOriginReactor,
    conn: UpstreamConnection,
    timeout: float,
    connect_tls: ConnectTLS = connect_tls,
) -> None:
    """Open `conn`'s connection to its route's origin within `timeout`: plain TCP through the
    reactor, or TLS on a socket of its own with the route's creator, recording into
    `conn.tls`. A connect that fails reaches `conn.fail_setup` as the SPEC §4 error. The
    pool and the health checks open their connections here."""
    route = conn.route
    factory = OneConnectionFactory(conn, conn.fail_setup, timeout)
    if route.tls:
        assert route.creator is not None and conn.tls is not None
        new_connection = partial(route.creator.new_connection, conn.tls)
        connect_tls(reactor, route.address, route.port, factory, timeout, new_connection)
    else:
        reactor.connectTCP(route.address, route.port, factory, timeout=timeout)


def connect_failure(exc: BaseException, timeout: float) -> OriginError:
    """The SPEC §4 error for a TCP connect that did not succeed."""
    if isinstance(exc, neterror.TimeoutError):
        return OriginError(
            ErrorCode.ORIGIN_TIMEOUT, f"TCP connect did not complete within {timeout:g}s"
        )
    if isinstance(exc, neterror.ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(exc, neterror.DNSLookupError):
        why = f"DNS lookup failed ({exc})"
    else:
        why = str(exc) or type(exc).__name__
    return OriginError(ErrorCode.ORIGIN_CONNECT_FAILED, f"TCP connect failed: {why}")
