"""Tests for edgenode.datapath.tlstransport: TLS on the socket itself, both ends.

Two layers. Against real in-process TLS origins (the reactor thread), through the
OriginPool as the edge uses it: SNI and certificates, origins by name, large uploads and
downloads, close_notify, and handshake failures classified as the SPEC §4 codes. Then by
hand, over a real loopback socket pair with small buffers: our TLSTransport on one end,
driven through a MemoryReactorClock (its doRead/doWrite called here when the socket is
ready and it is registered), an in-memory TLS peer on the other: eager writes and the
queue, reads, backpressure, the ends; the listener; and the connector (refused, timed
out, names resolved on the reactor).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IHostnameResolver,
    IHostResolution,
    IPushProducer,
    IResolutionReceiver,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgenode.datapath.headers import Headers
from edgenode.datapath.pool import OriginPool
from edgenode.datapath.socketwriter import HIGH_WATER
from edgenode.datapath.tlstransport import TLSListener, TLSTransport, connect_tls
from edgenode.datapath.upstream import UpstreamConnection, connect_failure
from edgenode.errors import ErrorCode, OriginError
from edgenode.routes import OriginRoute
from edgenode.tls import OriginTLSCreator, TrustProfile
from tests.support.faults import ResetOnFirstBytes, Silent
from tests.support.origin import Servers, SNIServerTLS, TLSOrigin, in_reactor, pattern
from tests.support.pki import PKI
from tests.support.waiting import wait_until

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def profile(pki: PKI) -> TrustProfile:
    return TrustProfile(pki.ca_file, "1.2")


def tls_route(
    profile: TrustProfile, port: int, sni: str | None, verify_name: str, address: str = "127.0.0.1"
) -> OriginRoute:
    return OriginRoute(
        address=address,
        port=port,
        tls=True,
        sni=sni,
        verify_name=verify_name,
        verify=True,
        trust_id=profile.trust_id,
        min_tls="1.2",
        creator=OriginTLSCreator(profile, sni, verify_name, True),
    )


# --- Through the pool, against real origins ------------------------------------------------


class Exchange:
    """One request on a pool connection, in the reactor thread; `done` fires when it ends.

    Waiter and listener at once, as the proxy's exchange is. `upload` is a request body
    sent 64 KiB at a time through a producer registered on the origin transport, as the
    proxy does; `pause_once` pauses reading the origin at the first body bytes.
    """

    def __init__(
        self,
        pool: OriginPool,
        head: bytes,
        *,
        upload: bytes = b"",
        pause_once: bool = False,
        release: bool = True,
    ) -> None:
        self.pool = pool
        self.head = head
        self.upload = upload
        self.pause_once = pause_once
        self.release = release
        self.conn: UpstreamConnection | None = None
        self.error: OriginError | None = None
        self.status = 0
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.uploader: Uploader | None = None
        self.done: Deferred[Exchange] = Deferred()

    def connection_ready(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.send_request(self.head, self, head_only=False)
        if self.upload:
            self.uploader = Uploader(conn, self.upload)
            self.uploader.start()

    def connection_failed(self, err: OriginError) -> None:
        self.error = err
        self.done.callback(self)

    def response_head(
        self, status: int, reason: bytes, headers: Headers, length: int | None
    ) -> None:
        self.status = status
        self.headers = headers

    def response_body(self, data: bytes) -> None:
        self.body.append(data)
        if self.pause_once and self.conn is not None:
            self.pause_once = False
            self.conn.pause_reading()
            self.pool.clock.callLater(0.05, self.conn.resume_reading)

    def read_done(self) -> None:
        pass

    def response_end(self) -> None:
        if self.release and self.conn is not None:
            self.pool.release(self.conn)
        self.done.callback(self)

    def response_failed(self, err: OriginError) -> None:
        self.error = err
        self.done.callback(self)


@implementer(IPushProducer)
class Uploader:
    """Writes a body while not paused, a chunk per reactor round (as client reads would)."""

    chunk = 65536

    def __init__(self, conn: UpstreamConnection, data: bytes) -> None:
        self.conn = conn
        self.data = data
        self.offset = 0
        self.paused = False
        self.pauses = 0
        self.resumes = 0

    def start(self) -> None:
        self.conn.transport.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.offset < len(self.data):
            self.conn.write_body(self.data[self.offset : self.offset + self.chunk])
            self.offset += self.chunk
        if self.offset >= len(self.data) and self.conn.transport is not None:
            self.conn.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        self.conn.pool.clock.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.paused = True


@pytest.fixture
def pool(reactor_thread: Any) -> Iterator[OriginPool]:
    made = OriginPool(reactor_thread, max_per_server=8, queue_timeout=5.0)
    yield made
    in_reactor(made.stop)


def run(
    pool: OriginPool, route: OriginRoute, head: bytes, *, handshake_timeout: float = 5.0, **kw: Any
) -> Exchange:
    """Run one exchange in the reactor thread and return it once it ended."""

    def start() -> Deferred[Exchange]:
        ex = Exchange(pool, head, **kw)
        pool.acquire(route, ex, connect_timeout=5.0, handshake_timeout=handshake_timeout)
        return ex.done.addTimeout(30, pool.clock)

    result: Exchange = in_reactor(start)
    return result


def get(path: str, host: str = "a.test") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def test_each_sni_gets_its_own_certificate_and_vhost(
    origin: TLSOrigin, profile: TrustProfile, pool: OriginPool
) -> None:
    """A request through the new transport reaches the vhost of its SNI, verified."""
    for name in ("a.test", "b.test"):
        ex = run(pool, tls_route(profile, origin.port, name, name), get("/", name))
        assert ex.error is None and ex.status == 200
        conn = ex.conn
        assert conn is not None and isinstance(conn.transport, TLSTransport)
        record = json.loads(b"".join(ex.body))
        assert (record["sni"], record["vhost"], record["host"]) == (name, name, name)
        assert conn.tls is not None and conn.tls.peer is not None
        assert conn.tls.peer.dns_names == (name,)
        assert (conn.tls.version, record["tls_version"]) == ("TLSv1.3", "TLSv1.3")
        assert conn.tls.cipher
    assert pool.idle_count() == 2  # both kept, one per route


def test_an_origin_by_name_is_resolved_and_reached(
    origin: TLSOrigin, profile: TrustProfile, pool: OriginPool
) -> None:
    """An origin address that is a DNS name (localhost) is resolved on the reactor."""
    ex = run(pool, tls_route(profile, origin.port, "a.test", "a.test", "localhost"), get("/"))
    assert ex.error is None and ex.status == 200
    assert ex.conn is not None and ex.conn.transport.getPeer().host == "127.0.0.1"


def test_an_origin_name_that_does_not_resolve_is_connect_failed(
    profile: TrustProfile, pool: OriginPool
) -> None:
    ex = run(pool, tls_route(profile, 443, "a.test", "a.test", "nowhere.invalid"), get("/"))
    assert ex.error is not None and ex.error.code is ErrorCode.ORIGIN_CONNECT_FAILED
    assert ex.error.detail == (
        "TCP connect failed: DNS lookup failed (DNS lookup failed: nowhere.invalid.)"
    )
    assert not ex.error.request_sent


def test_a_pooled_connection_carries_the_next_request(
    origin: TLSOrigin, profile: TrustProfile, pool: OriginPool
) -> None:
    route = tls_route(profile, origin.port, "a.test", "a.test")
    first = run(pool, route, get("/"))
    second = run(pool, route, get("/again"))
    assert second.conn is first.conn
    conns = [r["conn_id"] for r in origin.requests]
    assert conns[0] == conns[1] and [r["req_on_conn"] for r in origin.requests] == [1, 2]


def test_large_upload_arrives_intact_and_in_order(
    origin: TLSOrigin, profile: TrustProfile, pool: OriginPool
) -> None:
    """6 MiB through partial sends and the drain path; echoed back as a 6 MiB download."""
    body = pattern(6 * MiB, 7)
    head = f"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    ex = run(pool, tls_route(profile, origin.port, "a.test", "a.test"), head, upload=body)
    assert ex.error is None and ex.status == 200
    (record,) = origin.requests
    assert record["body_len"] == len(body)
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert b"".join(ex.body) == body
    assert ex.uploader is not None
    assert ex.uploader.pauses >= 1 and ex.uploader.resumes >= 1  # backpressure was exercised


def test_large_download_with_reading_paused_and_resumed(
    origin: TLSOrigin, profile: TrustProfile, pool: OriginPool
) -> None:
    n = 8 * MiB + 13
    route = tls_route(profile, origin.port, "a.test", "a.test")
    ex = run(pool, route, get(f"/bytes/{n}"), pause_once=True)
    assert ex.error is None and ex.status == 200
    assert b"".join(ex.body) == pattern(n)
    assert pool.idle_count(route.pool_key) == 1  # complete and reusable


class _ClosingWatcher(Protocol):
    """A TLS origin answering each request with a small response; records how it was closed."""

    ended: list[type[BaseException]] = []

    def dataReceived(self, data: bytes) -> None:
        if data.endswith(b"\r\n\r\n"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        _ClosingWatcher.ended.append(reason.type)  # type: ignore[arg-type]


def test_lose_connection_sends_close_notify_and_closes(
    servers: Servers, pki: PKI, profile: TrustProfile, pool: OriginPool
) -> None:
    """Closing an idle connection is a clean TLS close for the origin, and the slot is freed.

    The origin's TLS layer reports ConnectionDone only after a close_notify; a TCP FIN
    without one is ConnectionLost there.
    """
    _ClosingWatcher.ended = []
    port = servers.listen_tls(_ClosingWatcher, {"a.test": pki.leaf("a.test")})
    route = tls_route(profile, port, "a.test", "a.test")
    ex = run(pool, route, get("/"))
    assert (ex.error, ex.status, b"".join(ex.body)) == (None, 200, b"ok")
    assert pool.idle_count(route.pool_key) == 1
    in_reactor(pool.stop)  # closes idle connections: loseConnection
    wait_until(lambda: _ClosingWatcher.ended and pool.open_count(route.server) == 0)
    assert _ClosingWatcher.ended == [ConnectionDone]


@pytest.mark.parametrize(
    ("case", "code", "detail"),
    [
        ("name_mismatch", ErrorCode.ORIGIN_CERT_NAME_MISMATCH, "it does not cover b.test"),
        ("untrusted", ErrorCode.ORIGIN_CERT_UNTRUSTED, "unable to get local issuer certificate"),
        ("unknown_sni", ErrorCode.ORIGIN_TLS_FAILED, "TLS handshake failed: tlsv1 unrecognized"),
        (
            "reset",
            ErrorCode.ORIGIN_TLS_FAILED,
            "origin closed the connection during the TLS handshake (ConnectionLost)",
        ),
    ],
)
def test_handshake_failures_are_classified_as_before(
    case: str,
    code: ErrorCode,
    detail: str,
    servers: Servers,
    pki: PKI,
    profile: TrustProfile,
    pool: OriginPool,
) -> None:
    sni, verify_name = "a.test", "a.test"
    if case == "name_mismatch":
        port = servers.tls_origin({"a.test": pki.leaf("a.test")}).port
        verify_name = "b.test"
    elif case == "untrusted":
        port = servers.tls_origin({"a.test": pki.untrusted_leaf("a.test")}).port
    elif case == "unknown_sni":
        port = servers.tls_origin({"b.test": pki.leaf("b.test")}).port  # no default: rejected
    else:
        port = servers.listen_tcp(ResetOnFirstBytes)
    route = tls_route(profile, port, sni, verify_name)
    ex = run(pool, route, get("/"))
    assert ex.error is not None and ex.error.code is code
    assert detail in ex.error.detail
    assert not ex.error.request_sent
    if case in ("name_mismatch", "untrusted"):
        assert ex.error.peer is not None and ex.error.peer.dns_names == ("a.test",)
    wait_until(lambda: pool.open_count(route.server) == 0)


def test_handshake_timeout_is_origin_timeout_and_frees_the_slot(
    servers: Servers, profile: TrustProfile, pool: OriginPool
) -> None:
    port = servers.listen_tcp(Silent)
    route = tls_route(profile, port, "a.test", "a.test")
    ex = run(pool, route, get("/"), handshake_timeout=0.3)
    assert ex.error is not None and ex.error.code is ErrorCode.ORIGIN_TIMEOUT
    assert ex.error.detail == "TLS handshake did not complete within 0.3s"
    wait_until(lambda: pool.open_count(route.server) == 0)


# --- By hand: our transport on one end of a loopback socket pair ---------------------------


def _socket_pair(buffer: int) -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair, non-blocking, with small kernel buffers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    client.setblocking(False)
    server.setblocking(False)
    return client, server


@implementer(IHandshakeListener)
class Wrapped(Protocol):
    """The wrapped protocol: records what it is told."""

    tls: Any = None

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.data = bytearray()

    def connectionMade(self) -> None:
        self.events.append("made")

    def handshakeCompleted(self) -> None:
        self.events.append("handshake")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.events.append(("lost", reason.type))  # type: ignore[union-attr]


@implementer(IPushProducer)
class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class Peer:
    """Our transport (client end of TLS) on one socket, an in-memory TLS server on the other."""

    def __init__(self, pki: PKI, profile: TrustProfile, buffer: int = 32768) -> None:
        self.client_sock, self.server_sock = _socket_pair(buffer)
        self.reactor = MemoryReactorClock()
        self.wrapped = Wrapped()
        creator = OriginTLSCreator(profile, "a.test", "a.test", True)
        self.proto = TLSTransport(
            self.reactor,
            self.client_sock,
            partial(creator.new_connection, creator.facts()),
            self.wrapped,
        )
        server = SNIServerTLS({"a.test": pki.leaf("a.test")}, None).serverConnectionForTLS(None)
        server.set_accept_state()
        self.server = server
        self.received = bytearray()
        self.server_closed = False

    def server_read(self) -> None:
        while True:
            try:
                chunk = self.server_sock.recv(1 << 20)
            except (BlockingIOError, ConnectionResetError):
                break
            if not chunk:
                break
            self.server.bio_write(chunk)
        try:
            while True:
                self.received += self.server.recv(1 << 20)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.server_closed = True
        self.server_flush()

    def server_flush(self) -> None:
        try:
            out = self.server.bio_read(1 << 20)
        except SSL.WantReadError:
            return
        self.server_sock.sendall(out)

    def events(self, timeout: float = 0.05) -> None:
        """One reactor turn for our end: doRead/doWrite where ready and registered."""
        if self.proto._closed:
            return
        r, w, _ = select.select([self.client_sock], [self.client_sock], [], timeout)
        if r and self.proto in self.reactor.readers:
            self.proto.doRead()
        if w and self.proto in self.reactor.writers:
            self.proto.doWrite()

    def until(self, predicate: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "not in time"
            self.server_read()
            self.events()
            self.reactor.advance(0)

    def handshake(self) -> None:
        self.proto.start()
        self.until(lambda: "handshake" in self.wrapped.events)
        assert self.wrapped.events == ["made", "handshake"]
        self.until(lambda: self.server.get_peer_finished() is not None)

    def close(self) -> None:
        for s in (self.client_sock, self.server_sock):
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def peer(pki: PKI, profile: TrustProfile) -> Iterator[Peer]:
    made = Peer(pki, profile)
    yield made
    made.close()


def test_writes_go_straight_to_the_socket(peer: Peer) -> None:
    peer.handshake()
    peer.proto.write(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert peer.proto not in peer.reactor.writers  # nothing queued
    peer.until(lambda: peer.received)
    assert bytes(peer.received) == b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"


def test_records_of_one_event_are_one_data_received_up_to_64_kib(peer: Peer) -> None:
    peer.handshake()
    calls: list[int] = []
    peer.wrapped.dataReceived = lambda data: calls.append(len(data))  # type: ignore[method-assign]
    for part in (b"a" * 16384, b"b" * 16384, b"c" * 16384, b"d" * 16384, b"e" * 16384, b"f" * 10):
        peer.server.sendall(part)
    peer.server_flush()
    time.sleep(0.05)
    peer.until(lambda: sum(calls) == 5 * 16384 + 10)
    assert calls == [65536, 16394]


def test_a_full_socket_queues_in_order_pauses_the_upload_and_resumes_on_drain(peer: Peer) -> None:
    peer.handshake()
    upload = Recorder()
    peer.proto.registerProducer(upload, True)
    big = pattern(2 * MiB)
    peer.proto.write(big)
    assert upload.events == ["pause"]
    assert peer.proto in peer.reactor.writers
    peer.proto.write(b"tail")  # queued behind, never overtaking
    peer.until(lambda: len(peer.received) == len(big) + 4)
    assert bytes(peer.received) == big + b"tail"
    assert upload.events == ["pause", "resume"]
    assert peer.proto not in peer.reactor.writers
    peer.proto.write(b"direct again")
    assert peer.proto not in peer.reactor.writers
    peer.until(lambda: bytes(peer.received).endswith(b"tail" + b"direct again"))


def test_producer_registered_above_high_water_starts_paused(peer: Peer) -> None:
    peer.handshake()
    peer.proto.write(pattern(2 * MiB))
    assert peer.proto._queued > HIGH_WATER
    upload = Recorder()
    peer.proto.registerProducer(upload, True)
    assert upload.events == ["pause"]
    peer.proto.unregisterProducer()
    peer.until(lambda: len(peer.received) == 2 * MiB)
    assert upload.events == ["pause"]


def test_lose_connection_sends_queue_then_close_notify_and_reports_later(peer: Peer) -> None:
    peer.handshake()
    big = pattern(MiB)
    peer.proto.write(big)
    peer.proto.loseConnection()
    assert peer.proto not in peer.reactor.readers  # no more reading while it drains
    peer.proto.write(b"dropped")  # after loseConnection, without a producer: dropped
    peer.until(lambda: peer.server_closed)
    assert bytes(peer.received) == big
    peer.reactor.advance(0)
    assert peer.wrapped.events[-1] == ("lost", ConnectionDone)


def test_connection_lost_is_never_reported_inside_the_call_that_closed(peer: Peer) -> None:
    peer.handshake()
    peer.proto.abortConnection()
    assert peer.wrapped.events == ["made", "handshake"]
    peer.reactor.advance(0)
    assert peer.wrapped.events[-1] == ("lost", ConnectionAborted)


def test_lose_connection_waits_for_the_upload_producer(peer: Peer) -> None:
    peer.handshake()
    peer.proto.registerProducer(Recorder(), True)
    peer.proto.loseConnection()
    peer.proto.write(b"last body bytes")  # allowed while the producer is registered
    assert not peer.proto._closed
    peer.proto.unregisterProducer()
    peer.until(lambda: peer.server_closed)
    assert bytes(peer.received) == b"last body bytes"


def test_peer_close_notify_is_answered_and_is_connection_done(peer: Peer) -> None:
    peer.handshake()
    peer.server.shutdown()
    peer.server_flush()
    peer.until(lambda: peer.proto._closed)
    peer.server_read()
    assert peer.server_closed  # our close_notify came back
    peer.reactor.advance(0)
    assert peer.wrapped.events[-1] == ("lost", ConnectionDone)


def test_eof_without_close_notify_is_connection_lost(peer: Peer) -> None:
    peer.handshake()
    peer.server.sendall(b"partial response")
    peer.server_flush()
    peer.server_sock.shutdown(socket.SHUT_WR)
    peer.until(lambda: peer.proto._closed)
    peer.reactor.advance(0)
    assert bytes(peer.wrapped.data) == b"partial response"
    assert peer.wrapped.events[-1] == ("lost", ConnectionLost)


def test_a_fatal_alert_is_the_ssl_error(pki: PKI, profile: TrustProfile) -> None:
    """An origin whose certificate does not verify: our alert goes, the reason is SSL.Error."""
    p = Peer(pki, profile)
    try:
        server = SNIServerTLS({"a.test": pki.untrusted_leaf("a.test")}, None)
        p.server = server.serverConnectionForTLS(None)
        p.server.set_accept_state()
        p.proto.start()
        p.until(lambda: p.proto._closed)
        p.reactor.advance(0)
        assert p.wrapped.events[0] == "made" and p.wrapped.events[-1][0] == "lost"
        assert issubclass(p.wrapped.events[-1][1], SSL.Error)
    finally:
        p.close()


def test_lost_connection_stops_the_upload_producer(peer: Peer) -> None:
    peer.handshake()
    upload = Recorder()
    peer.proto.registerProducer(upload, True)
    peer.proto.abortConnection()
    peer.reactor.advance(0)
    assert upload.events == ["stop"]
    assert peer.wrapped.events[-1][0] == "lost"


def test_reading_backpressure_unregisters_the_reader(peer: Peer) -> None:
    peer.handshake()
    peer.proto.pauseProducing()
    assert peer.proto not in peer.reactor.readers
    peer.server.sendall(b"waits")
    peer.server_flush()
    time.sleep(0.05)
    peer.events()
    assert bytes(peer.wrapped.data) == b""
    peer.proto.resumeProducing()
    peer.until(lambda: bytes(peer.wrapped.data) == b"waits")


def test_the_handle_is_the_tls_connection_and_nodelay_is_set(peer: Peer) -> None:
    peer.handshake()
    assert isinstance(peer.proto.getHandle(), SSL.Connection)
    assert not isinstance(peer.proto.getHandle(), socket.socket)
    assert peer.client_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# --- the server end: the listener ---------------------------------------------------------


def _listener(pki: PKI) -> tuple[MemoryReactorClock, TLSListener, list[Wrapped]]:
    reactor = MemoryReactorClock()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    pki.leaf("a.test").configure_cert(ctx)
    made: list[Wrapped] = []

    def build(addr: Any) -> Wrapped:
        made.append(Wrapped())
        return made[-1]

    listener = TLSListener(reactor, sock, lambda s: SSL.Connection(ctx, s), build)
    listener.startListening()
    return reactor, listener, made


def _turns(reactor: MemoryReactorClock, seconds: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ds = [d for d in list(reactor.readers) + list(reactor.writers) if d.fileno() >= 0]
        r, w, _ = select.select(
            [d for d in ds if d in reactor.readers],
            [d for d in ds if d in reactor.writers],
            [],
            0.02,
        )
        for d in r:
            d.doRead()
        for d in w:
            if d in reactor.writers:
                d.doWrite()
        reactor.advance(0)


def test_a_port_check_is_not_a_handshake_but_a_client_hello_is(pki: PKI) -> None:
    reactor, listener, made = _listener(pki)
    try:
        port = listener.getHost().port
        socket.create_connection(("127.0.0.1", port)).close()  # a port check: no byte
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello")  # a (broken) ClientHello: a byte came
            _turns(reactor)
        _turns(reactor)
        assert len(made) == 2
        transports = [w.transport for w in made]
        assert [t.handshake_started for t in transports] == [False, True]
        assert all(w.events[-1][0] == "lost" for w in made)
    finally:
        listener.stopListening()


def test_a_real_client_is_served(pki: PKI) -> None:
    import ssl
    import threading

    reactor, listener, made = _listener(pki)
    try:
        port = listener.getHost().port
        got: list[bytes] = []

        def client() -> None:
            ctx = ssl.create_default_context(cafile=str(pki.ca_file))
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                ctx.wrap_socket(raw, server_hostname="a.test") as s,
            ):
                s.sendall(b"ping")
                got.append(s.recv(100))

        t = threading.Thread(target=client)
        t.start()
        deadline = time.monotonic() + 5
        while not (made and made[0].data == b"ping"):
            assert time.monotonic() < deadline
            _turns(reactor, 0.05)
        made[0].transport.write(b"pong")
        while t.is_alive():
            assert time.monotonic() < deadline
            _turns(reactor, 0.05)
        assert got == [b"pong"]
        assert made[0].events[:2] == ["made", "handshake"]
    finally:
        listener.stopListening()


# --- connecting ----------------------------------------------------------------------------


class _Failed(ClientFactory):
    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failures.append(reason)


def test_connect_refused_and_timeout_reach_the_factory() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    reactor = MemoryReactorClock()
    factory = _Failed()
    connect_tls(reactor, "127.0.0.1", free, factory, 5.0, lambda s: None)  # type: ignore[arg-type]
    _turns(reactor)
    assert factory.failures and factory.failures[0].check(ConnectionRefusedError)

    reactor = MemoryReactorClock()
    factory = _Failed()
    connect_tls(reactor, "10.255.255.1", 9, factory, 0.01, lambda s: None)  # type: ignore[arg-type]
    reactor.advance(1.0)
    assert factory.failures and factory.failures[0].check(ConnectTimeoutError)


@implementer(IHostResolution)
class Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError


@implementer(IHostnameResolver)
class HostsResolver:
    """Resolves from a table, at once (as a hosts file would); an unknown name has no
    addresses, and a name mapped to None never completes."""

    def __init__(self, table: dict[str, list[str] | None]) -> None:
        self.table = table
        self.pending: list[IResolutionReceiver] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        found = self.table.get(hostName, [])
        if found is None:
            self.pending.append(resolutionReceiver)
            return resolution
        for host in found:
            cls = IPv6Address if ":" in host else IPv4Address
            resolutionReceiver.addressResolved(cls("TCP", host, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class _Built(_Failed):
    def __init__(self) -> None:
        super().__init__()
        self.built: list[Any] = []

    def buildProtocol(self, addr: Any) -> Wrapped:
        self.built.append(addr)
        return Wrapped()


def _resolving_reactor(table: dict[str, list[str] | None]) -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    resolver = HostsResolver(table)
    assert verifyObject(IHostnameResolver, resolver)
    reactor.installNameResolver(resolver)
    return reactor


def _client_tls(sock: socket.socket) -> SSL.Connection:
    return SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), sock)


def test_a_name_is_resolved_on_the_reactor_and_its_addresses_tried_in_order() -> None:
    """The first address fails (nothing listens on ::1), the next takes the connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        reactor = _resolving_reactor({"origin.test": ["::1", "127.0.0.1"]})
        factory = _Built()
        connect_tls(reactor, "origin.test", port, factory, 5.0, _client_tls)
        _turns(reactor)
        assert factory.failures == []
        assert [(a.type, a.host, a.port) for a in factory.built] == [("TCP", "127.0.0.1", port)]


def test_when_every_address_fails_the_last_ones_error_is_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    reactor = _resolving_reactor({"origin.test": ["::1", "127.0.0.1"]})
    factory = _Built()
    connect_tls(reactor, "origin.test", closed, factory, 5.0, _client_tls)
    _turns(reactor)
    assert factory.built == []
    (failure,) = factory.failures
    assert failure.check(ConnectionRefusedError)


def test_a_name_without_addresses_fails_as_twisted_tcp_says_it_in_a_later_turn() -> None:
    reactor = _resolving_reactor({})
    factory = _Built()
    connect_tls(reactor, "nowhere.test", 443, factory, 5.0, _client_tls)
    assert factory.failures == []  # never inside the call that started the connect
    reactor.advance(0)
    (failure,) = factory.failures
    assert failure.check(DNSLookupError)
    assert str(failure.value) == "DNS lookup failed: nowhere.test."
    err = connect_failure(failure.value, 5.0)
    assert (err.code, err.detail) == (
        ErrorCode.ORIGIN_CONNECT_FAILED,
        "TCP connect failed: DNS lookup failed (DNS lookup failed: nowhere.test.)",
    )


def test_the_connect_timeout_covers_the_name_resolution() -> None:
    reactor = _resolving_reactor({"slow.test": None})
    factory = _Built()
    connect_tls(reactor, "slow.test", 443, factory, 3.0, _client_tls)
    reactor.advance(2.9)
    assert factory.failures == []
    reactor.advance(0.2)
    (failure,) = factory.failures
    assert failure.check(ConnectTimeoutError)
    (late,) = reactor.nameResolver.pending
    late.addressResolved(IPv4Address("TCP", "127.0.0.1", 443))
    late.resolutionComplete()  # too late: ignored
    assert factory.built == [] and len(factory.failures) == 1


def test_a_stale_event_does_not_end_a_connect_still_going() -> None:
    """The reactor finds a descriptor by number: an event of an earlier socket with the same
    number (read, write or hang-up) can reach the connector while its connect is still
    going; it changes nothing, and the connect goes on (here, to its timeout)."""
    reactor = MemoryReactorClock()
    factory = _Built()
    connector = connect_tls(reactor, "10.255.255.1", 9, factory, 5.0, _client_tls)
    assert connector in reactor.writers  # still connecting (nothing answers there)
    connector.doRead()
    connector.doWrite()
    reactor.removeWriter(connector)  # what the reactor does before connectionLost
    connector.connectionLost(Failure(ConnectionLost()))
    assert factory.failures == [] and factory.built == []
    assert connector in reactor.writers  # registered again
    reactor.advance(5.0)
    (failure,) = factory.failures
    assert failure.check(ConnectTimeoutError)
    assert connector not in reactor.writers
