"""Tests for edgenode.datapath.upstream: the origin-side HTTP/1.1 client and the route-keyed pool.

The pool runs on a MemoryReactorClock: connects are recorded in `reactor.tcpClients` (a TLS
origin's too, by the harness's `connect_tls`, with the SSL.Connection maker it was given)
and completed by hand over a StringTransport. The exchange side (ConnectionWaiter and
ResponseListener) is the fake at the edge.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import ClientFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgenode.datapath.headers import Headers
from edgenode.datapath.pool import OriginPool
from edgenode.datapath.upstream import (
    MAX_RESPONSE_HEAD_BYTES,
    ConnectionWaiter,
    ResponseListener,
    StaleConnection,
    UpstreamConnection,
)
from edgenode.errors import ErrorCode, OriginError
from edgenode.routes import OriginRoute
from edgenode.tls import OriginTLSCreator, TrustProfile

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

REQUEST = b"GET / HTTP/1.1\r\nHost: origin.example\r\n\r\n"
OK_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def plain_route(
    address: str = "192.0.2.10", port: int = 80, sni: str | None = None, idle: float = 60.0
) -> OriginRoute:
    return OriginRoute(
        address=address,
        port=port,
        tls=False,
        sni=sni,
        verify_name="origin.example",
        verify=False,
        trust_id="",
        min_tls="",
        idle_timeout=idle,
    )


_PROFILE: TrustProfile | None = None


def tls_route(sni: str | None, address: str = "192.0.2.10", port: int = 443) -> OriginRoute:
    """A TLS route with a real creator (system trust store): SNI and verify as configured."""
    global _PROFILE
    if _PROFILE is None:
        _PROFILE = TrustProfile(None, "1.2")
    verify_name = sni or "origin.example"
    return OriginRoute(
        address=address,
        port=port,
        tls=True,
        sni=sni,
        verify_name=verify_name,
        verify=True,
        trust_id=_PROFILE.trust_id,
        min_tls="1.2",
        creator=OriginTLSCreator(_PROFILE, sni, verify_name, True),
    )


class RecordingWaiter:
    """A ConnectionWaiter recording what the pool gave it."""

    def __init__(self) -> None:
        self.ready: list[UpstreamConnection] = []
        self.failed: list[OriginError] = []

    def connection_ready(self, conn: UpstreamConnection) -> None:
        self.ready.append(conn)

    def connection_failed(self, err: OriginError) -> None:
        self.failed.append(err)


class RecordingListener:
    """A ResponseListener recording head, body, end and failure."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.heads: list[tuple[int, bytes, Headers, int | None]] = []
        self.failures: list[OriginError] = []
        self.reads_done = 0

    @property
    def body(self) -> bytes:
        return b"".join(e[1] for e in self.events if e[0] == "body")

    @property
    def kinds(self) -> list[str]:
        return [e[0] for e in self.events if e[0] != "body"]

    def response_head(
        self, status: int, reason: bytes, headers: Headers, length: int | None
    ) -> None:
        self.heads.append((status, reason, headers, length))
        self.events.append(("head", status))

    def response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def response_end(self) -> None:
        self.events.append(("end",))

    def read_done(self) -> None:
        self.reads_done += 1

    def response_failed(self, err: OriginError) -> None:
        self.failures.append(err)
        self.events.append(("failed", err.code))


def _typed_fakes(
    w: RecordingWaiter, r: RecordingListener
) -> tuple[ConnectionWaiter, ResponseListener]:
    return w, r  # mypy checks the fakes against the real protocols


class Harness:
    """An OriginPool on a MemoryReactorClock, completing connects by hand."""

    def __init__(self, max_per_server: int = 256, queue_timeout: float = 5.0) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = OriginPool(
            self.reactor,
            max_per_server=max_per_server,
            queue_timeout=queue_timeout,
            connect_tls=self._connect_tls,
        )
        self.transports: dict[int, StringTransport] = {}
        self.tls: dict[int, Callable[[socket.socket], SSL.Connection]] = {}

    def _connect_tls(
        self,
        reactor: Any,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float,
        new_connection: Callable[[socket.socket], SSL.Connection],
    ) -> None:
        """tlstransport.connect_tls, recorded as MemoryReactor records connectTCP."""
        assert reactor is self.reactor
        self.tls[len(reactor.tcpClients)] = new_connection
        reactor.tcpClients.append((host, port, factory, timeout, None))

    def client_hello(self, index: int = -1) -> bytes:
        """The ClientHello the TLS connect at `index` would send."""
        new_connection = self.tls[index % len(self.reactor.tcpClients)]
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            tls = new_connection(ours)
            tls.set_connect_state()
            with contextlib.suppress(SSL.WantReadError):
                tls.do_handshake()
            return theirs.recv(65536)

    def acquire(self, route: OriginRoute, *, fresh: bool = False) -> RecordingWaiter:
        waiter = RecordingWaiter()
        self.pool.acquire(route, waiter, connect_timeout=5.0, handshake_timeout=5.0, fresh=fresh)
        return waiter

    @property
    def connects(self) -> int:
        return len(self.reactor.tcpClients)

    def complete_connect(self, index: int = -1) -> StringTransport:
        """The TCP connect at `index` succeeds; returns the connection's transport."""
        factory = self.reactor.tcpClients[index][2]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return transport

    def connection(
        self, route: OriginRoute | None = None
    ) -> tuple[UpstreamConnection, StringTransport]:
        """A ready connection for `route`, freshly connected."""
        waiter = self.acquire(route or plain_route())
        transport = self.complete_connect()
        (conn,) = waiter.ready
        return conn, transport


def lose(conn: UpstreamConnection, reason: type[Exception] = ConnectionDone) -> None:
    """The TCP connection is gone, as the reactor would report it."""
    conn.connectionLost(Failure(reason()))


def exchange(
    conn: UpstreamConnection, response: bytes, *, head_only: bool = False
) -> RecordingListener:
    listener = RecordingListener()
    conn.send_request(REQUEST, listener, head_only=head_only)
    if response:
        conn.dataReceived(response)
    return listener


# --- The connection: responses ---------------------------------------------------------------


def test_request_head_is_written_to_the_origin() -> None:
    """send_request writes the head as given; write_body follows it."""
    h = Harness()
    conn, transport = h.connection()
    conn.send_request(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", RecordingListener(), head_only=False
    )
    conn.write_body(b"abc")
    assert transport.value() == b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    assert conn.requests == 1


def test_content_length_response_is_delivered_as_head_body_end() -> None:
    """A Content-Length response reaches the listener as head, body, end."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, b"HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhel")
    conn.dataReceived(b"lo")
    assert listener.kinds == ["head", "end"]
    status, reason, headers, length = listener.heads[0]
    assert (status, reason, length) == (200, b"Fine", 5)
    assert headers == [(b"Content-Length", b"5"), (b"X-A", b"1")]
    assert listener.body == b"hello"


def test_chunked_response_is_delivered_decoded() -> None:
    """A chunked response reaches the listener without chunk framing and with no length."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(
        conn,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n",
    )
    assert listener.kinds == ["head"]
    conn.dataReceived(b"0\r\n\r\n")
    assert listener.kinds == ["head", "end"]
    assert listener.heads[0][3] is None
    assert listener.body == b"hello world"


def test_each_read_that_leaves_a_response_unfinished_is_reported_done() -> None:
    """read_done follows each origin read after the head that does not end the response
    (the exchange sends what it relayed then); the read that ends it reports the end."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n")
    assert listener.reads_done == 0  # no head yet: nothing was relayed
    conn.dataReceived(b"\r\nab")
    assert (listener.kinds, listener.reads_done) == (["head"], 1)
    conn.dataReceived(b"cd")
    assert listener.reads_done == 2
    conn.dataReceived(b"ef")
    assert (listener.kinds, listener.reads_done) == (["head", "end"], 2)


def test_close_delimited_body_ends_when_the_connection_closes() -> None:
    """A response without length or chunking ends, complete, when the origin closes."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, b"HTTP/1.1 200 OK\r\n\r\nsome ")
    conn.dataReceived(b"bytes")
    assert listener.kinds == ["head"]
    lose(conn)
    assert listener.kinds == ["head", "end"]
    assert listener.body == b"some bytes"
    assert h.pool.open_count(conn.route.server) == 0


def test_interim_responses_are_skipped() -> None:
    """100 Continue and 103 Early Hints are not relayed; the final 200 is."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
    conn.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK_5)
    assert listener.kinds == ["head", "end"]
    status, _, headers, _ = listener.heads[0]
    assert status == 200
    assert all(name != b"Link" for name, _ in headers)
    assert listener.body == b"hello"


def test_head_response_completes_without_a_body() -> None:
    """A HEAD response with Content-Length ends at its head; the connection stays reusable."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", head_only=True)
    assert listener.kinds == ["head", "end"]
    assert listener.heads[0][3] == 1000
    assert not conn.retired
    second = exchange(conn, OK_5)
    assert second.kinds == ["head", "end"]
    assert second.body == b"hello"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
    ],
    ids=["204", "304", "304-with-length"],
)
def test_no_body_statuses_complete_at_their_head(response: bytes) -> None:
    """204 and 304 responses end at their head and leave the connection reusable."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, response)
    assert listener.kinds == ["head", "end"]
    assert listener.body == b""
    assert not conn.retired


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"\x00\x00\x12\x04\x00",
    ],
    ids=[
        "status-not-a-number",
        "not-http",
        "conflicting-length",
        "bad-chunk-size",
        "unasked-101-upgrade",
    ],
)
def test_malformed_response_is_a_protocol_error(response: bytes) -> None:
    """A malformed response fails with origin_protocol_error and the connection is dropped."""
    h = Harness()
    conn, transport = h.connection()
    listener = exchange(conn, response)
    assert [f.code for f in listener.failures] == [ErrorCode.ORIGIN_PROTOCOL_ERROR]
    assert listener.failures[0].request_sent
    assert ("end",) not in listener.events
    assert transport.disconnected
    assert conn.retired


def test_oversized_response_head_is_a_protocol_error() -> None:
    """A response head above MAX_RESPONSE_HEAD_BYTES fails without waiting for its end."""
    h = Harness()
    conn, transport = h.connection()
    listener = exchange(conn, b"HTTP/1.1 200 OK\r\n")
    for _ in range(MAX_RESPONSE_HEAD_BYTES // 1000 + 1):
        if listener.failures:
            break
        conn.dataReceived(b"X-Filler: " + b"a" * 990 + b"\r\n")
    assert [f.code for f in listener.failures] == [ErrorCode.ORIGIN_PROTOCOL_ERROR]
    assert listener.heads == []
    assert transport.disconnected


def test_close_before_any_byte_on_a_reused_connection_is_stale() -> None:
    """A reused connection closed before any response byte fails with StaleConnection."""
    h = Harness()
    conn, _ = h.connection()
    exchange(conn, OK_5)
    h.pool.release(conn)
    waiter = h.acquire(conn.route)
    assert waiter.ready == [conn]
    listener = exchange(conn, b"")
    lose(conn, ConnectionLost)
    (err,) = listener.failures
    assert isinstance(err, StaleConnection)
    assert err.request_sent


def test_close_before_any_byte_on_a_fresh_connection_is_not_stale() -> None:
    """A first request whose connection closes unanswered is a protocol error, not stale."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, b"")
    lose(conn)
    (err,) = listener.failures
    assert not isinstance(err, StaleConnection)
    assert err.code is ErrorCode.ORIGIN_PROTOCOL_ERROR


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Len",
    ],
    ids=["short-content-length", "unterminated-chunked", "partial-head"],
)
def test_close_in_the_middle_of_a_response_is_a_protocol_error(partial: bytes) -> None:
    """A response cut short by the connection closing fails; it never looks complete."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, partial)
    lose(conn, ConnectionLost)
    assert [f.code for f in listener.failures] == [ErrorCode.ORIGIN_PROTOCOL_ERROR]
    assert ("end",) not in listener.events
    assert not isinstance(listener.failures[0], StaleConnection)


def test_bytes_on_an_idle_connection_drop_it() -> None:
    """An idle pooled connection that receives bytes is aborted and never handed out."""
    h = Harness()
    conn, transport = h.connection()
    exchange(conn, OK_5)
    h.pool.release(conn)
    conn.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert transport.disconnected
    lose(conn)
    assert h.pool.idle_count() == 0
    h.acquire(conn.route)
    assert h.connects == 2


# --- The pool --------------------------------------------------------------------------------


def test_released_connection_is_reused_for_the_same_route() -> None:
    """After release, an acquire of the same route gets that connection without a connect."""
    h = Harness()
    conn, _ = h.connection()
    exchange(conn, OK_5)
    h.pool.release(conn)
    assert h.pool.idle_count(conn.route.pool_key) == 1
    waiter = h.acquire(plain_route())  # an equal route, built again
    assert waiter.ready == [conn]
    assert h.connects == 1
    assert h.pool.reuses == 1
    second = exchange(conn, OK_5)
    assert second.kinds == ["head", "end"]


def test_fresh_acquire_never_reuses() -> None:
    """acquire(fresh=True) opens a new connection even with one idle for the route."""
    h = Harness()
    conn, _ = h.connection()
    exchange(conn, OK_5)
    h.pool.release(conn)
    h.acquire(conn.route, fresh=True)
    assert h.connects == 2


def test_connection_is_never_reused_across_sni_values() -> None:
    """Same address and port but another SNI: a new connection, never the pooled one."""
    h = Harness()
    a, b = tls_route("a.example"), tls_route("b.example")
    assert a.server == b.server
    waiter = h.acquire(a)
    h.complete_connect()
    assert b"a.example" in h.client_hello()  # the ClientHello names a.example
    assert waiter.ready == []  # not ready before the handshake
    tls_conn = h.reactor.tcpClients[0][2].conn
    tls_conn.handshakeCompleted()
    assert waiter.ready == [tls_conn]
    h.pool.release(tls_conn)

    other = h.acquire(b)
    assert other.ready == []
    assert h.connects == 2
    h.complete_connect()
    assert b"b.example" in h.client_hello()
    assert b"a.example" not in h.client_hello()
    same = h.acquire(a)
    assert same.ready == [tls_conn]
    assert h.connects == 2


def test_connection_close_from_the_origin_is_not_reused() -> None:
    """A response with `Connection: close` retires its connection: release closes it."""
    h = Harness()
    conn, transport = h.connection()
    listener = exchange(
        conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    assert listener.kinds == ["head", "end"]
    h.pool.release(conn)
    assert transport.disconnecting
    assert h.pool.idle_count() == 0
    lose(conn)
    h.acquire(conn.route)
    assert h.connects == 2


def test_http10_origin_without_keep_alive_is_not_reused() -> None:
    """An HTTP/1.0 response without keep-alive retires its connection."""
    h = Harness()
    conn, transport = h.connection()
    exchange(conn, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    h.pool.release(conn)
    assert transport.disconnecting
    assert h.pool.idle_count() == 0


def test_second_acquire_waits_for_the_only_slot_and_gets_the_released_connection() -> None:
    """With origin_max_connections=1 a second request waits, then gets the released connection."""
    h = Harness(max_per_server=1)
    conn, _ = h.connection()
    waiting = h.acquire(plain_route())
    assert waiting.ready == [] and waiting.failed == []
    assert h.connects == 1
    exchange(conn, OK_5)
    h.pool.release(conn)
    assert waiting.ready == [conn]
    h.reactor.advance(10)
    assert waiting.failed == []
    assert h.reactor.getDelayedCalls() == []


def test_waiting_acquire_fails_with_origin_busy_after_queue_timeout() -> None:
    """A request that gets no slot within origin_queue_timeout fails with origin_busy."""
    h = Harness(max_per_server=1, queue_timeout=5.0)
    h.connection()
    waiting = h.acquire(plain_route())
    h.reactor.advance(4.9)
    assert waiting.failed == []
    h.reactor.advance(0.2)
    assert [e.code for e in waiting.failed] == [ErrorCode.ORIGIN_BUSY]
    assert not waiting.failed[0].request_sent
    assert h.connects == 1


def test_closed_connection_frees_its_slot_for_a_waiter() -> None:
    """When a connection to a full server closes, a waiting request gets a new connection."""
    h = Harness(max_per_server=1)
    conn, _ = h.connection()
    waiting = h.acquire(plain_route())
    conn.abort()
    lose(conn)
    assert h.connects == 2
    h.complete_connect()
    assert len(waiting.ready) == 1 and waiting.ready[0] is not conn


def test_slot_cap_is_per_server_not_per_route() -> None:
    """origin_max_connections counts every route to one address and port together."""
    h = Harness(max_per_server=1)
    h.connection(plain_route(sni="a.example"))
    waiting = h.acquire(plain_route(sni="b.example"))
    assert h.connects == 1
    assert waiting.ready == []
    other_server = h.acquire(plain_route(address="192.0.2.99"))
    assert h.connects == 2
    assert other_server.failed == []


def test_idle_connection_of_another_route_is_evicted_to_make_room() -> None:
    """At the cap, an idle connection of another route to the server is closed to make room."""
    h = Harness(max_per_server=1)
    conn, transport = h.connection(plain_route(sni="a.example"))
    exchange(conn, OK_5)
    h.pool.release(conn)
    h.acquire(plain_route(sni="b.example"))
    assert transport.disconnecting
    assert h.connects == 2


def test_idle_connection_is_closed_after_idle_timeout() -> None:
    """The sweeper closes a pooled connection idle for the route's idle timeout."""
    h = Harness()
    h.pool.start()
    conn, transport = h.connection(plain_route(idle=10.0))
    exchange(conn, OK_5)
    h.pool.release(conn)
    for _ in range(9):
        h.reactor.advance(1)
    assert not transport.disconnecting
    assert h.pool.idle_count() == 1
    h.reactor.advance(1)
    h.reactor.advance(1)
    assert transport.disconnecting
    assert h.pool.idle_count() == 0
    h.pool.stop()
    assert h.reactor.getDelayedCalls() == []


def test_retain_closes_idle_connections_of_removed_routes_only() -> None:
    """retain(keys) closes the idle connections whose route key is gone, and no others."""
    h = Harness()
    kept_route, gone_route = plain_route(address="192.0.2.1"), plain_route(address="192.0.2.2")
    kept, kept_transport = h.connection(kept_route)
    gone, gone_transport = h.connection(gone_route)
    for conn in (kept, gone):
        exchange(conn, OK_5)
        h.pool.release(conn)
    assert h.pool.retain({kept_route.pool_key}) == 1
    assert gone_transport.disconnecting
    assert not kept_transport.disconnecting
    assert h.pool.idle_count(kept_route.pool_key) == 1
    assert h.pool.idle_count(gone_route.pool_key) == 0


def test_stop_closes_idle_connections() -> None:
    """stop() closes every pooled connection and stops the sweeper."""
    h = Harness()
    h.pool.start()
    conn, transport = h.connection()
    exchange(conn, OK_5)
    h.pool.release(conn)
    h.pool.stop()
    assert transport.disconnecting
    assert h.reactor.getDelayedCalls() == []


def test_idle_connection_closed_by_the_origin_leaves_the_pool() -> None:
    """A pooled connection the origin closes is forgotten: the next acquire connects anew."""
    h = Harness()
    conn, _ = h.connection()
    exchange(conn, OK_5)
    h.pool.release(conn)
    lose(conn)
    assert h.pool.idle_count() == 0
    assert h.pool.open_count(conn.route.server) == 0
    waiter = h.acquire(conn.route)
    assert waiter.ready == []
    assert h.connects == 2


def test_abandoned_connect_is_kept_for_the_next_request() -> None:
    """A connection whose requester gave up while it connected goes idle into the pool."""
    h = Harness()
    waiter = RecordingWaiter()
    cancel = h.pool.acquire(plain_route(), waiter, connect_timeout=5.0, handshake_timeout=5.0)
    cancel()
    h.complete_connect()
    assert waiter.ready == []
    assert h.pool.idle_count() == 1


# --- Connect failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectionRefusedError(), ErrorCode.ORIGIN_CONNECT_FAILED),
        (ConnectTimeoutError(), ErrorCode.ORIGIN_TIMEOUT),
    ],
    ids=["refused", "timeout"],
)
def test_connect_failure_is_reported_to_the_waiter(exc: Exception, code: ErrorCode) -> None:
    """A failed TCP connect is connect_failed (refused) or origin_timeout, before any byte sent."""
    h = Harness()
    waiter = h.acquire(plain_route())
    factory = h.reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, Failure(exc))
    assert [e.code for e in waiter.failed] == [code]
    assert not waiter.failed[0].request_sent
    assert h.pool.open_count(plain_route().server) == 0


def test_connect_timeout_is_passed_to_connect_tcp() -> None:
    """The route's connect timeout is the one the reactor is asked to enforce."""
    h = Harness()
    route = plain_route(address="192.0.2.7", port=8080)
    h.pool.acquire(route, RecordingWaiter(), connect_timeout=3.5, handshake_timeout=5.0)
    host, port, _, timeout, _ = h.reactor.tcpClients[0]
    assert (host, port, timeout) == ("192.0.2.7", 8080, 3.5)


def test_tls_handshake_timeout_fails_with_origin_timeout() -> None:
    """A TLS handshake that does not finish within the handshake timeout is origin_timeout."""
    h = Harness()
    route = tls_route("a.example")
    waiter = RecordingWaiter()
    h.pool.acquire(route, waiter, connect_timeout=5.0, handshake_timeout=3.0)
    transport = h.complete_connect()
    h.reactor.advance(2.9)
    assert waiter.failed == []
    h.reactor.advance(0.2)
    assert [e.code for e in waiter.failed] == [ErrorCode.ORIGIN_TIMEOUT]
    assert not waiter.failed[0].request_sent
    assert transport.disconnected
    assert waiter.ready == []


def test_handshake_timer_is_cancelled_when_the_handshake_completes() -> None:
    """A completed handshake leaves no handshake timer behind and readies the connection."""
    h = Harness()
    waiter = h.acquire(tls_route("a.example"))
    h.complete_connect()
    conn = h.reactor.tcpClients[0][2].conn
    conn.handshakeCompleted()
    assert waiter.ready == [conn]
    assert h.reactor.getDelayedCalls() == []
