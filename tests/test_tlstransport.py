"""Tests for edgenode.datapath.tlstransport: the TLS client transport under each origin connection.

Two layers. Against real in-process TLS origins (the reactor thread), through the
OriginPool as the edge uses it: SNI and certificates, large uploads and downloads,
close_notify, and handshake failures classified as the SPEC §4 codes. Then the write
path by hand, over a real loopback socket whose buffers are kept small: what goes
straight to the socket, what waits in the TCP transport, and the drain signal.
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edgenode.datapath.headers import Headers
from edgenode.datapath.pool import OriginPool
from edgenode.datapath.socketwriter import HIGH_WATER
from edgenode.datapath.socktls import SocketTLSTransport
from edgenode.datapath.tlstransport import TLSTransport
from edgenode.datapath.upstream import UpstreamConnection
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


@pytest.fixture(params=[False, True], ids=["bio", "socket"])
def pool(reactor_thread: Any, request: Any) -> Iterator[OriginPool]:
    """The pool on each TLS transport: memory BIOs (tlstransport.py), on the socket (socktls.py)."""
    made = OriginPool(reactor_thread, max_per_server=8, queue_timeout=5.0, socket_tls=request.param)
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
        transport = SocketTLSTransport if pool.socket_tls else TLSTransport
        assert conn is not None and isinstance(conn.transport, transport)
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


# --- The write path, by hand over a loopback socket ---------------------------------------


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


class SocketTransport:
    """The TCP transport's part, over a real socket: write() buffers; drain() sends it.

    drain() then tells the registered pull producer, as Twisted's doWrite does once its
    buffer is empty. `events` is what the TLS protocol asked of it, in order.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.producer: Any = None
        self.events: list[Any] = []

    def getHandle(self) -> socket.socket:
        return self.sock

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.events.append(("write", len(data)))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None
        self.producer = producer
        self.events.append(("register", streaming))
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.events.append("unregister")

    def loseConnection(self) -> None:
        self.events.append("loseConnection")

    def abortConnection(self) -> None:
        self.events.append("abortConnection")

    def pauseProducing(self) -> None:
        self.events.append("pauseProducing")

    def resumeProducing(self) -> None:
        self.events.append("resumeProducing")

    def getPeer(self) -> Any:
        return self.sock.getpeername()

    def getHost(self) -> Any:
        return self.sock.getsockname()

    def send_some(self) -> None:
        if self.buffer:
            try:
                sent = self.sock.send(self.buffer)
            except BlockingIOError:
                sent = 0
            del self.buffer[:sent]

    def drained(self) -> None:
        assert not self.buffer
        if self.producer is not None:
            self.producer.resumeProducing()


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


class Link:
    """Our protocol on one end of a socket pair, an in-memory TLS server on the other."""

    def __init__(self, pki: PKI, profile: TrustProfile, buffer: int = 32768) -> None:
        self.client_sock, self.server_sock = _socket_pair(buffer)
        self.tcp = SocketTransport(self.client_sock)
        self.wrapped = Wrapped()
        creator = OriginTLSCreator(profile, "a.test", "a.test", True)
        self.proto = TLSTransport(
            partial(creator.new_connection, creator.facts()), self.wrapped
        )
        server = SNIServerTLS({"a.test": pki.leaf("a.test")}, None).serverConnectionForTLS(None)
        server.set_accept_state()
        self.server = server
        self.received = bytearray()  # plaintext the server decrypted
        self.server_closed = False

    def connect(self) -> None:
        self.proto.makeConnection(self.tcp)

    def server_read(self) -> None:
        """The server reads what reached its socket, decrypts it, and answers."""
        while True:
            try:
                chunk = self.server_sock.recv(1 << 20)
            except BlockingIOError:
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
        try:
            out = self.server.bio_read(1 << 20)
        except SSL.WantReadError:
            return
        self.server_sock.sendall(out)

    def server_read_until(self, predicate: Any, timeout: float = 5.0) -> None:
        """Loopback delivery is not always instant: read until `predicate()` holds."""
        deadline = time.monotonic() + timeout
        self.server_read()
        while not predicate():
            assert time.monotonic() < deadline, "the server did not get it in time"
            select.select([self.server_sock], [], [], 0.05)
            self.server_read()

    def client_read(self) -> None:
        """The client socket's bytes, one dataReceived per recv, as the reactor would."""
        while True:
            try:
                chunk = self.client_sock.recv(1 << 16)
            except BlockingIOError:
                return
            self.proto.dataReceived(chunk)

    def handshake(self) -> None:
        self.connect()
        deadline = time.monotonic() + 5.0
        while "handshake" not in self.wrapped.events:
            assert time.monotonic() < deadline, "the handshake did not complete"
            select.select([self.server_sock, self.client_sock], [], [], 0.05)
            self.server_read()
            self.client_read()
        assert self.wrapped.events == ["made", "handshake"]
        # The server is done once it read the client's Finished; then it may send.
        self.server_read_until(lambda: self.server.get_peer_finished() is not None)

    def pump_until_drained(self) -> None:
        """Let the socket carry what the TCP transport holds, then report the drain."""
        for _ in range(10_000):
            self.tcp.send_some()
            self.server_read()
            if not self.tcp.buffer:
                break
        self.tcp.drained()
        self.server_read()

    def close(self) -> None:
        self.client_sock.close()
        self.server_sock.close()


@pytest.fixture
def link(pki: PKI, profile: TrustProfile) -> Iterator[Link]:
    made = Link(pki, profile)
    yield made
    made.close()


def test_client_hello_and_request_go_straight_to_the_socket(link: Link) -> None:
    """Nothing queued in the TCP transport: each flight is one socket send, no transport.write."""
    link.handshake()
    assert link.tcp.events == [("register", False)]  # the drain watcher, and nothing written
    link.proto.write(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    link.server_read_until(lambda: link.received)
    assert bytes(link.received) == b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
    assert not any(e[0] == "write" for e in link.tcp.events if isinstance(e, tuple))


def test_one_tcp_read_is_one_data_received(link: Link) -> None:
    """Several TLS records in one TCP read reach the wrapped protocol as one piece."""
    link.handshake()
    calls: list[int] = []
    link.wrapped.dataReceived = lambda data: calls.append(len(data))  # type: ignore[method-assign]
    for part in (b"a" * 20000, b"b" * 20000, b"c" * 100):
        link.server.sendall(part)
    records = link.server.bio_read(1 << 20)
    link.server_sock.sendall(records)
    deadline = time.monotonic() + 5.0
    while len(link.client_sock.recv(1 << 17, socket.MSG_PEEK)) < len(records):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    link.client_read()  # one recv: all four records
    assert calls == [40100]


def test_a_full_socket_queues_in_order_pauses_the_upload_and_resumes_on_drain(
    link: Link,
) -> None:
    link.handshake()
    upload = Recorder()
    link.proto.registerProducer(upload, True)
    big = pattern(2 * MiB)
    link.proto.write(big)  # far more than the socket takes
    writes = [e for e in link.tcp.events if isinstance(e, tuple) and e[0] == "write"]
    assert len(writes) == 1  # the rest of that send, queued
    assert upload.events == ["pause"]  # more than HIGH_WATER handed to the transport
    assert len(link.tcp.buffer) > HIGH_WATER
    link.proto.write(b"tail")  # must queue behind, never overtake
    assert len([e for e in link.tcp.events if isinstance(e, tuple) and e[0] == "write"]) == 2
    link.pump_until_drained()
    assert upload.events == ["pause", "resume"]
    assert bytes(link.received) == big + b"tail"
    events_before = len(link.tcp.events)
    link.proto.write(b"direct again")
    link.server_read_until(lambda: len(link.received) == len(big) + 16)
    assert link.tcp.events[events_before:] == []  # straight to the socket after the drain
    assert bytes(link.received).endswith(b"tail" + b"direct again")


def test_producer_registered_above_high_water_starts_paused(link: Link) -> None:
    link.handshake()
    link.proto.write(pattern(2 * MiB))
    upload = Recorder()
    link.proto.registerProducer(upload, True)
    assert upload.events == ["pause"]
    link.proto.unregisterProducer()
    link.pump_until_drained()
    assert upload.events == ["pause"]  # unregistered: not resumed


def test_lose_connection_unregisters_the_watcher_then_closes_after_close_notify(
    link: Link,
) -> None:
    link.handshake()
    link.proto.loseConnection()
    assert link.tcp.events[-2:] == ["unregister", "loseConnection"]
    link.server_read_until(lambda: link.server_closed)  # close_notify arrived
    link.proto.connectionLost(Failure(ConnectionDone()))
    assert link.wrapped.events[-1] == ("lost", ConnectionDone)


def test_lose_connection_waits_for_the_upload_producer(link: Link) -> None:
    """Twisted's rule: with a producer registered, the close waits until it is unregistered."""
    link.handshake()
    link.proto.registerProducer(Recorder(), True)
    link.proto.loseConnection()
    assert "loseConnection" not in link.tcp.events
    link.proto.write(b"last body bytes")  # still allowed while the producer is registered
    link.proto.unregisterProducer()
    assert link.tcp.events[-2:] == ["unregister", "loseConnection"]
    link.server_read_until(lambda: link.server_closed)
    assert bytes(link.received) == b"last body bytes"


def test_lost_connection_stops_the_upload_producer(link: Link) -> None:
    link.handshake()
    upload = Recorder()
    link.proto.registerProducer(upload, True)
    link.proto.connectionLost(Failure(ConnectionDone()))
    assert upload.events == ["stop"]
    assert link.wrapped.events[-1][0] == "lost"


def test_reading_backpressure_goes_to_the_tcp_transport(link: Link) -> None:
    link.handshake()
    link.proto.pauseProducing()
    link.proto.resumeProducing()
    assert link.tcp.events[-2:] == ["pauseProducing", "resumeProducing"]


def test_the_handle_is_the_tls_connection_never_the_socket(link: Link) -> None:
    """A writer that finds a socket behind a transport sends to it directly
    (socketwriter.py): behind TLS that would put plaintext on the wire."""
    link.handshake()
    assert isinstance(link.proto.getHandle(), SSL.Connection)
    assert link.client_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def _records(*sizes: int) -> bytes:
    return b"".join(b"\x17\x03\x03" + size.to_bytes(2, "big") + b"x" * size for size in sizes)


def test_the_record_framer_counts_each_record_once_whatever_the_split() -> None:
    """Reads stop after as many recv calls as the read completed records (`_read`): a
    framer that miscounted across reads would leave plaintext waiting in OpenSSL."""
    from edgenode.datapath.tlstransport import _RecordFramer

    stream = _records(0, 1, 300, 16384, 4, 2)
    ends = [5, 11, 316, 16705, 16714, 16721]
    for cut_a in range(0, len(stream), 7):
        for cut_b in (cut_a, cut_a + 1, cut_a + 4, cut_a + 5, cut_a + 301, len(stream)):
            cut_b = min(max(cut_b, cut_a), len(stream))
            framer = _RecordFramer()
            counts = [framer.feed(stream[:cut_a]), framer.feed(stream[cut_a:cut_b])]
            counts.append(framer.feed(stream[cut_b:]))
            expected = [
                sum(1 for e in ends if e <= cut_a),
                sum(1 for e in ends if cut_a < e <= cut_b),
                sum(1 for e in ends if e > cut_b),
            ]
            assert counts == expected, (cut_a, cut_b)


def test_the_record_framer_gives_up_on_what_is_not_tls() -> None:
    from edgenode.datapath.tlstransport import _RecordFramer

    framer = _RecordFramer()
    assert framer.feed(b"\x80\x2e\x01\x03\x01") == -1  # an SSLv2-style ClientHello
    assert framer.feed(_records(5)) == -1  # and stays off for the connection
    assert _RecordFramer().feed(b"GET / HTTP/1.1\r\n") == -1
