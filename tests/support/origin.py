"""In-process test origins: the reactor thread, SNI-aware TLS listeners, and a JSON HTTP/1.1 origin.

Design: the global Twisted reactor runs in one daemon thread for the whole
test session; test code stays synchronous and reaches into the reactor only
through `in_reactor` (blockingCallFromThread). Everything an origin observes
(handshakes, requests, connections) is appended in the reactor thread under a
lock and read by the test thread as copies.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IPullProducer,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, eventAsText, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from .net import LOOPBACK
from .pki import CertSource, load_cert_source

# --------------------------------------------------------------------------
# The reactor thread
# --------------------------------------------------------------------------

_reactor_thread: threading.Thread | None = None


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def start_reactor_thread(timeout: float = 10.0) -> Any:
    """Run the global reactor in a daemon thread (idempotent); return the reactor.

    The reactor cannot be restarted in one process, so this is done once per
    test session (the `reactor_thread` fixture).
    """
    global _reactor_thread
    reactor = _reactor()
    if _reactor_thread is not None and _reactor_thread.is_alive():
        return reactor
    if reactor.running:
        raise RuntimeError(
            "the global reactor is already running outside the test reactor thread "
            "(is the pytest-twisted plugin active? edgenode tests do not use it)"
        )
    ready = threading.Event()
    reactor.callWhenRunning(ready.set)  # safe: the reactor is not running yet
    thread = threading.Thread(
        target=reactor.run,
        kwargs={"installSignalHandlers": False},
        name="twisted-reactor",
        daemon=True,
    )
    thread.start()
    if not ready.wait(timeout):
        raise RuntimeError(f"the Twisted reactor did not start within {timeout}s")
    _reactor_thread = thread
    globalLogPublisher.addObserver(_report_errors)
    return reactor


def stop_reactor_thread(timeout: float = 10.0) -> None:
    """Stop the reactor and wait for its thread to end."""
    global _reactor_thread
    thread = _reactor_thread
    if thread is None:
        return
    reactor = _reactor()
    if thread.is_alive():
        reactor.callFromThread(reactor.stop)
        thread.join(timeout)
    globalLogPublisher.removeObserver(_report_errors)
    _reactor_thread = None
    if thread.is_alive():
        raise RuntimeError(f"the Twisted reactor did not stop within {timeout}s")


def reactor_thread_running() -> bool:
    return _reactor_thread is not None and _reactor_thread.is_alive()


def in_reactor(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call f in the reactor thread and return its result (waiting for a Deferred result)."""
    if not reactor_thread_running():
        raise RuntimeError("the reactor thread is not running: use the `reactor_thread` fixture")
    if threading.current_thread() is _reactor_thread:
        raise RuntimeError("in_reactor() called from the reactor thread itself")
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(_reactor(), f, *args, **kwargs)


def _report_errors(event: dict[str, Any]) -> None:
    """Make errors logged inside the reactor thread visible in the test's captured stderr."""
    level = event.get("log_level")
    if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
        sys.stderr.write("[reactor thread] " + eventAsText(event, includeTimestamp=False) + "\n")


# --------------------------------------------------------------------------
# Live listeners: every in-process server, so a test cannot leave one behind
# --------------------------------------------------------------------------

_live_lock = threading.Lock()
_live: set[Listener] = set()


def live_listeners() -> list[Listener]:
    """Listeners started and not yet stopped, in any test."""
    with _live_lock:
        return list(_live)


class _ConnState:
    """What one accepted connection is, as far as the origin's observations go."""

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.tls = False
        self.sni: str | None = None
        self.vhost: str | None = None
        self.tls_version: str | None = None
        self.handshake_done = False
        self.requests = 0


class Listener:
    """One listening port on 127.0.0.1 in the reactor thread, plain TCP or TLS.

    `stop()` closes the listening port and aborts every connection it accepted.
    """

    address = LOOPBACK

    def __init__(
        self,
        factory: IProtocolFactory,
        *,
        certs: Mapping[str, CertSource] | None = None,
        default: CertSource | None = None,
        tls: bool = False,
        max_tls: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._conn_ids = itertools.count(1)
        self._handshakes: list[dict[str, Any]] = []
        self._rejected: list[dict[str, Any]] = []
        self._connections_opened = 0
        self._open: set[Any] = set()
        self._all_closed: list[defer.Deferred[None]] = []
        self._port: IListeningPort | None = None
        self.tls = tls
        self.sni_tls: SNIServerTLS | None = None
        if tls:
            self.sni_tls = SNIServerTLS(certs or {}, default, max_tls=max_tls, listener=self)
            self._factory: WrappingFactory = _TrackingTLSFactory(self, self.sni_tls, factory)
        else:
            self._factory = _TrackingFactory(self, factory)
        self.port: int = in_reactor(self._listen)
        with _live_lock:
            _live.add(self)

    # -- observations (any thread) --

    @property
    def handshakes(self) -> list[dict[str, Any]]:
        """Completed TLS handshakes: {"conn_id", "sni", "vhost", "tls_version"}."""
        with self._lock:
            return [dict(h) for h in self._handshakes]

    @property
    def rejected_handshakes(self) -> list[dict[str, Any]]:
        """Handshakes refused with an `unrecognized_name` alert: {"conn_id", "sni"}."""
        with self._lock:
            return [dict(h) for h in self._rejected]

    @property
    def connections_opened(self) -> int:
        with self._lock:
            return self._connections_opened

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    @property
    def listening(self) -> bool:
        return self._port is not None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and abort every open connection; wait until all are gone."""
        with _live_lock:
            _live.discard(self)
        if self._port is None or not reactor_thread_running():
            return
        in_reactor(self._stop, timeout)

    # -- reactor thread --

    def _listen(self) -> defer.Deferred[int]:
        endpoint = TCP4ServerEndpoint(_reactor(), 0, backlog=128, interface=LOOPBACK)
        d = endpoint.listen(self._factory)

        def listening(port: IListeningPort) -> int:
            self._port = port
            return port.getHost().port  # type: ignore[attr-defined, no-any-return]

        return d.addCallback(listening)

    def _stop(self, timeout: float) -> defer.Deferred[Any]:
        port, self._port = self._port, None
        stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        with self._lock:
            open_now = list(self._open)
        for proto in open_now:
            proto.transport.abortConnection()
        closed = self._when_all_closed()
        d = defer.gatherResults([stopped, closed], consumeErrors=True)
        return d.addTimeout(timeout, _reactor())

    def _when_all_closed(self) -> defer.Deferred[None]:
        with self._lock:
            if not self._open:
                return defer.succeed(None)
            d: defer.Deferred[None] = defer.Deferred()
            self._all_closed.append(d)
            return d

    def _next_conn_id(self) -> int:
        return next(self._conn_ids)

    def _opened(self, proto: Any) -> None:
        # TLSMemoryBIOProtocol registers itself twice (its own makeConnection and
        # ProtocolWrapper's): count each connection once.
        with self._lock:
            if proto not in self._open:
                self._connections_opened += 1
                self._open.add(proto)

    def _closed(self, proto: Any) -> None:
        with self._lock:
            self._open.discard(proto)
            if self._open:
                return
            waiters, self._all_closed = self._all_closed, []
        for d in waiters:
            d.callback(None)

    def _record_handshake(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._handshakes.append(record)

    def _record_rejection(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._rejected.append(record)


class _TrackedWrapper(ProtocolWrapper):
    """A plain connection, with its state for the origin's observations."""

    state: _ConnState


class _TrackingFactory(WrappingFactory):
    """Counts and remembers plain connections so the listener can close them all."""

    protocol = _TrackedWrapper
    noisy = False

    def __init__(self, listener: Listener, wrapped: IProtocolFactory) -> None:
        super().__init__(wrapped)
        self._listener = listener

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        if proto is not None:
            proto.state = _ConnState(self._listener._next_conn_id())
        return proto

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self._listener._opened(p)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self._listener._closed(p)


class _TrackingTLSFactory(TLSMemoryBIOFactory):
    """TLS server side; counts and remembers connections so the listener can close them all."""

    noisy = False

    def __init__(
        self, listener: Listener, creator: SNIServerTLS, wrapped: IProtocolFactory
    ) -> None:
        super().__init__(creator, False, wrapped)
        self._listener = listener

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self._listener._opened(p)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self._listener._closed(p)


# State of each server-side TLS connection (Twisted keeps the app data slot for itself).
# Touched only in the reactor thread.
_tls_states: weakref.WeakKeyDictionary[SSL.Connection, _ConnState] = weakref.WeakKeyDictionary()


def connection_state(transport: Any) -> _ConnState | None:
    """The state of the connection a protocol's `transport` belongs to (plain or TLS)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        return _tls_states.get(transport.getHandle())
    state = getattr(transport, "state", None)
    return state if isinstance(state, _ConnState) else None


# --------------------------------------------------------------------------
# Server-side TLS with a certificate per SNI name
# --------------------------------------------------------------------------

_TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


class _UnrecognizedName(Exception):
    """Raised in the servername callback: pyOpenSSL answers with a fatal unrecognized_name alert."""


_excepthook_installed = False


def _install_quiet_excepthook() -> None:
    """pyOpenSSL passes exceptions from the SNI callback to sys.excepthook; ours are expected."""
    global _excepthook_installed
    if _excepthook_installed:
        return
    previous = sys.excepthook

    def excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, _UnrecognizedName):
            return
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    _excepthook_installed = True


@implementer(IOpenSSLServerConnectionCreator)
class SNIServerTLS:
    """A TLS server connection creator choosing the certificate by the SNI the client sent.

    `certs` maps an SNI name to its certificate; `default` answers handshakes
    without SNI or with an unknown name, and None rejects those with a fatal
    `unrecognized_name` alert (like nginx `ssl_reject_handshake on`).
    Contexts are built once, fully, before any connection (pyOpenSSL >= 26.2).
    """

    def __init__(
        self,
        certs: Mapping[str, CertSource],
        default: CertSource | None,
        *,
        max_tls: str | None = None,
        listener: Listener | None = None,
    ) -> None:
        if not certs and default is None:
            raise ValueError("a TLS origin needs at least one certificate")
        if max_tls is not None and max_tls not in _TLS_VERSIONS:
            raise ValueError(f"max_tls must be one of {sorted(_TLS_VERSIONS)}, got {max_tls!r}")
        _install_quiet_excepthook()
        self._listener = listener
        self._max_tls = max_tls
        self._by_name = {name.lower(): (name, self._context(src)) for name, src in certs.items()}
        self._default_ctx = self._context(default)
        self._reject_unknown = default is None
        self._default_ctx.set_tlsext_servername_callback(self._servername)

    def _context(self, source: CertSource | None) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        if self._max_tls is not None:
            ctx.set_max_proto_version(_TLS_VERSIONS[self._max_tls])
        if source is not None:
            key, chain = load_cert_source(source)
            ctx.use_certificate(chain[0])
            ctx.use_privatekey(key)
            for extra in chain[1:]:
                ctx.add_extra_chain_cert(extra)
            ctx.check_privatekey()
        return ctx

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn_id = self._listener._next_conn_id() if self._listener else 0
        state = _ConnState(conn_id)
        state.tls = True
        state.vhost = "default"
        conn = SSL.Connection(self._default_ctx, None)
        _tls_states[conn] = state
        conn.set_info_callback(self._info)
        return conn

    def _servername(self, conn: SSL.Connection) -> None:
        state = _tls_states[conn]
        raw = conn.get_servername()
        state.sni = raw.decode("ascii", "replace") if raw is not None else None
        found = self._by_name.get(state.sni.lower()) if state.sni is not None else None
        if found is not None:
            state.vhost, ctx = found
            conn.set_context(ctx)
            return
        state.vhost = "default"
        if self._reject_unknown:
            if self._listener is not None:
                self._listener._record_rejection({"conn_id": state.conn_id, "sni": state.sni})
            raise _UnrecognizedName(state.sni)

    def _info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        state = _tls_states[conn]
        if state.handshake_done:
            return
        state.handshake_done = True
        state.tls_version = conn.get_protocol_version_name()
        if self._listener is not None:
            self._listener._record_handshake(
                {
                    "conn_id": state.conn_id,
                    "sni": state.sni,
                    "vhost": state.vhost,
                    "tls_version": state.tls_version,
                }
            )


def _as_factory(protocol_factory: IProtocolFactory | Callable[[], Protocol]) -> IProtocolFactory:
    if IProtocolFactory.providedBy(protocol_factory):
        return protocol_factory  # type: ignore[return-value]
    return Factory.forProtocol(protocol_factory)  # type: ignore[arg-type]


def listen_tcp(protocol_factory: IProtocolFactory | Callable[[], Protocol]) -> Listener:
    """A plain TCP listener on 127.0.0.1 for a hand-written (misbehaving) origin."""
    return Listener(_as_factory(protocol_factory))


def listen_tls(
    protocol_factory: IProtocolFactory | Callable[[], Protocol],
    certs: Mapping[str, CertSource],
    default: CertSource | None = None,
    *,
    max_tls: str | None = None,
) -> Listener:
    """A TLS listener on 127.0.0.1 with per-SNI certificates for a hand-written origin."""
    return Listener(
        _as_factory(protocol_factory), certs=certs, default=default, tls=True, max_tls=max_tls
    )


# --------------------------------------------------------------------------
# The JSON HTTP/1.1 origin (twisted.web: it is only a test origin)
# --------------------------------------------------------------------------

_PERIOD = bytes(range(251))
_BLOCK = _PERIOD * (65536 // 251 + 2)


def pattern(n: int, offset: int = 0) -> bytes:
    """The deterministic body of `/bytes/<n>` and `/chunked/<n>`: byte i is i % 251."""
    out = bytearray()
    while len(out) < n:
        start = (offset + len(out)) % 251
        take = min(n - len(out), len(_BLOCK) - start)
        out += _BLOCK[start : start + take]
    return bytes(out)


class _OriginRequest(Request):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw_headers: list[list[str]] = []


class _OriginChannel(HTTPChannel):
    """HTTPChannel that keeps every request header line as received, in order."""

    def headerReceived(self, line: bytes) -> bool:
        name, sep, value = line.partition(b":")
        if sep and self.requests:
            request = self.requests[-1]
            request.raw_headers.append(
                [name.decode("latin-1"), value.strip(b" \t").decode("latin-1")]
            )
        return super().headerReceived(line)  # type: ignore[no-any-return]


class _OriginSite(Site):
    protocol = _OriginChannel  # type: ignore[assignment]
    requestFactory = _OriginRequest
    noisy = False

    def log(self, request: Any) -> None:
        """No access log for the test origin: `TLSOrigin.requests` is the record."""


@implementer(IPullProducer)
class _BodyProducer:
    """Writes `size` bytes produced by `read(offset, n)` with backpressure, then finishes."""

    chunk = 65536

    def __init__(self, request: Request, size: int, read: Callable[[int, int], bytes]) -> None:
        self._request: Request | None = request
        self._size = size
        self._offset = 0
        self._read = read
        request.notifyFinish().addErrback(lambda _: self.stopProducing())
        request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        request = self._request
        if request is None:
            return
        n = min(self.chunk, self._size - self._offset)
        if n > 0:
            request.write(self._read(self._offset, n))
            self._offset += n
        if self._offset >= self._size:
            self._request = None
            request.unregisterProducer()
            request.finish()

    def stopProducing(self) -> None:
        self._request = None


class _OriginResource(Resource):
    isLeaf = True

    def __init__(self, origin: TLSOrigin) -> None:
        super().__init__()
        self._origin = origin

    def render(self, request: Any) -> bytes | int:
        origin = self._origin
        transport = request.channel.transport
        state = connection_state(transport)
        if state is None:  # pragma: no cover - every origin connection is tracked
            state = _ConnState(0)
        state.requests += 1
        record = _request_record(request, state)
        origin._record_request(record)
        if state.vhost is not None:
            request.setHeader(b"X-Origin-Vhost", state.vhost.encode("ascii", "replace"))
        request.setHeader(b"X-Origin-Conn", str(state.conn_id).encode())

        # HTTPChannel.loseConnection, not the transport's: the channel is registered as
        # the transport's producer, and a TLS transport waits for that to go first.
        channel = request.channel
        if origin.drop_reused and state.requests > 1:
            channel.loseConnection()
            return NOT_DONE_YET
        if origin.close_after_response:
            request.notifyFinish().addBoth(lambda _: channel.loseConnection())

        path = request.path.decode("latin-1")
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "status" and len(parts) == 2:
                return _status(request, int(parts[1]), record)
            if parts[0] == "bytes" and len(parts) == 2:
                return _stream(request, int(parts[1]), length=True)
            if parts[0] == "chunked" and len(parts) == 2:
                return _stream(request, int(parts[1]), length=False)
            if parts[0] == "delay" and len(parts) == 2:
                return _delay(request, float(parts[1]), record)
        except ValueError:
            request.setResponseCode(400)
            return _json(request, {"error": f"bad path {path!r}"})
        if path == "/echo":
            return _echo(request)
        if path == "/hop":
            request.setHeader(b"Connection", b"X-Hop-Resp")
            request.setHeader(b"X-Hop-Resp", b"1")
            request.setHeader(b"Keep-Alive", b"timeout=5")
            request.setHeader(b"X-Kept", b"yes")
        return _json(request, record)


def _request_record(request: Any, state: _ConnState) -> dict[str, Any]:
    digest = hashlib.sha256()
    body_len = 0
    content = request.content
    content.seek(0)
    while chunk := content.read(65536):
        digest.update(chunk)
        body_len += len(chunk)
    content.seek(0)
    host = request.getHeader(b"host")
    peer = request.getClientAddress()
    return {
        "vhost": state.vhost,
        "sni": state.sni,
        "host": host.decode("latin-1") if host is not None else None,
        "method": request.method.decode("latin-1"),
        "path": request.uri.decode("latin-1"),
        "version": request.clientproto.decode("latin-1"),
        "headers": [list(h) for h in request.raw_headers],
        "body_len": body_len,
        "body_sha256": digest.hexdigest(),
        "conn_id": state.conn_id,
        "req_on_conn": state.requests,
        "tls_version": state.tls_version,
        "peer": f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
    }


def _json(request: Any, obj: Any) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(obj).encode()


def _status(request: Any, code: int, record: dict[str, Any]) -> bytes:
    if not 200 <= code <= 599:
        raise ValueError(code)
    request.setResponseCode(code)
    if code in (204, 304):
        return b""
    return _json(request, record)


def _stream(request: Any, n: int, *, length: bool) -> bytes | int:
    if n < 0:
        raise ValueError(n)
    request.setHeader(b"Content-Type", b"application/octet-stream")
    if length:
        request.setHeader(b"Content-Length", str(n).encode())
    if n == 0:
        return b""
    _BodyProducer(request, n, lambda offset, size: pattern(size, offset))
    return NOT_DONE_YET


def _echo(request: Any) -> bytes | int:
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    request.setHeader(b"Content-Type", b"application/octet-stream")
    request.setHeader(b"Content-Length", str(size).encode())
    if size == 0:
        return b""
    _BodyProducer(request, size, lambda offset, n: content.read(n))
    return NOT_DONE_YET


def _delay(request: Any, seconds: float, record: dict[str, Any]) -> int:
    if seconds < 0:
        raise ValueError(seconds)

    def answer() -> None:
        request.write(_json(request, record))
        request.finish()

    # A client that goes away cancels the answer, so no timer outlives its connection.
    done = request.notifyFinish()
    call = _reactor().callLater(seconds, answer)
    done.addErrback(lambda _: call.cancel() if call.active() else None)
    return NOT_DONE_YET


class TLSOrigin:
    """An HTTP/1.1 origin on 127.0.0.1 that answers JSON about each request it received.

    With `tls` (the default) it presents the certificate of `certs[sni]` and
    `default` for no or unknown SNI (None: reject those handshakes with an
    `unrecognized_name` alert). Paths: `/status/<code>`, `/bytes/<n>`,
    `/chunked/<n>`, `/echo`, `/delay/<seconds>`, `/hop`; anything else gets
    the request record as JSON: vhost, sni, host, method, path (with query),
    version, headers (raw [name, value] pairs in order), body_len,
    body_sha256, conn_id, req_on_conn, tls_version, peer. Every response
    carries `X-Origin-Vhost` (TLS only) and `X-Origin-Conn`.

    `close_after_response`: close each connection once a response is written,
    without `Connection: close`. `drop_reused`: close a connection, without
    answering, when a second request arrives on it (a keep-alive connection
    the origin dropped just as the client reused it).
    """

    address = LOOPBACK

    def __init__(
        self,
        certs: Mapping[str, CertSource] | None = None,
        default: CertSource | None = None,
        *,
        tls: bool = True,
        max_tls: str | None = None,
        close_after_response: bool = False,
        drop_reused: bool = False,
    ) -> None:
        self.close_after_response = close_after_response
        self.drop_reused = drop_reused
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        site = _OriginSite(_OriginResource(self))
        if tls:
            self.listener = Listener(site, certs=certs, default=default, tls=True, max_tls=max_tls)
        else:
            self.listener = Listener(site)
        self.port = self.listener.port
        self.tls = tls

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}:{self.port}"

    @property
    def handshakes(self) -> list[dict[str, Any]]:
        return self.listener.handshakes

    @property
    def rejected_handshakes(self) -> list[dict[str, Any]]:
        return self.listener.rejected_handshakes

    @property
    def connections_opened(self) -> int:
        return self.listener.connections_opened

    @property
    def open_connections(self) -> int:
        return self.listener.open_connections

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received, oldest first, as the JSON records the origin answers."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def _record_request(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(record)

    def stop(self) -> None:
        self.listener.stop()


class Servers:
    """In-process servers made by one test, all stopped at its end (the `servers` fixture)."""

    def __init__(self) -> None:
        self._listeners: dict[int, Listener] = {}

    def tls_origin(
        self,
        certs: Mapping[str, CertSource] | None = None,
        default: CertSource | None = None,
        **kwargs: Any,
    ) -> TLSOrigin:
        origin = TLSOrigin(certs, default, **kwargs)
        self._listeners[origin.port] = origin.listener
        return origin

    def listen_tcp(self, protocol_factory: IProtocolFactory | Callable[[], Protocol]) -> int:
        listener = listen_tcp(protocol_factory)
        self._listeners[listener.port] = listener
        return listener.port

    def listen_tls(
        self,
        protocol_factory: IProtocolFactory | Callable[[], Protocol],
        certs: Mapping[str, CertSource],
        default: CertSource | None = None,
        *,
        max_tls: str | None = None,
    ) -> int:
        listener = listen_tls(protocol_factory, certs, default, max_tls=max_tls)
        self._listeners[listener.port] = listener
        return listener.port

    def listener(self, port: int) -> Listener:
        """The listener on `port`, for its observations (connections, handshakes)."""
        return self._listeners[port]

    def stop_all(self) -> None:
        listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            listener.stop()
