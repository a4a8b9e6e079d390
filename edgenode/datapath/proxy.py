"""One exchange: route a client request, forward it to an origin, relay the answer, log it.

Invariants kept here:
- The runtime is read once, when the request starts; the request finishes on it even
  if a reload swaps in another (SPEC §5).
- Hop-by-hop headers (and the names Connection lists) are dropped both ways
  (RFC 9110 §7.6.1); the edge sets Host (origin_host), X-Forwarded-For/-Proto/-Host
  and Via itself (headers.py).
- Bodies stream both ways with backpressure: the client transport is the producer
  of the upload, the origin transport of the download; nothing is buffered beyond one
  read, except up to REPLAY_BYTES of request body kept to retry on another origin.
- Failover (SPEC §4): a failure before the request reached an origin (connect, TLS,
  verification, busy) moves to the next origin; after that only idempotent requests
  move on. A reused pooled connection found closed before any response byte is retried
  once on a fresh connection to the same origin. No origin is tried twice otherwise.
- Every failure maps through ErrorCode to its status; once the response head went out,
  a failure aborts the client connection instead (never a clean-looking short body).
- An exchange's life is its `Phase` (routing, connecting, waiting, relaying, done), moved
  only along `_MOVES`; the other attributes are data, not state.
"""

from __future__ import annotations

import enum
import os
from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from edgenode.accesslog import AccessLog, AccessRecord, handshake_failure_line
from edgenode.datapath.downstream import ClientStream, HandshakeFailure, RequestHead
from edgenode.datapath.headers import client_response_lines, origin_request_head
from edgenode.datapath.health import Health
from edgenode.datapath.monitor import Monitor
from edgenode.datapath.pool import OriginPool
from edgenode.datapath.upstream import StaleConnection, UpstreamConnection
from edgenode.errors import ErrorCode, OriginError
from edgenode.routes import OriginRoute
from edgenode.runtime import DomainRuntime, RuntimeHolder
from edgenode.servertls import ClientTLSFacts

log = Logger()

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# How often exchanges in flight are checked against their deadlines: a timeout fires
# within this much of its limit. One check for all of them, instead of a DelayedCall per
# request armed and cancelled several times, is most of what a timer costs per request.
DEADLINE_TICK = 0.1
REPLAY_BYTES = 65536
CLIENT_CLOSED = 499  # nginx's status for "the client went away first"


class Proxy:
    """The request handler of every client connection."""

    def __init__(
        self,
        holder: RuntimeHolder,
        pool: OriginPool,
        access_log: AccessLog,
        clock: IReactorTime,
        monitor: Monitor | None = None,
        health: Health | None = None,
    ) -> None:
        self.holder = holder
        self.pool = pool
        self.access_log = access_log
        self.clock = clock
        self.monitor = monitor or Monitor(clock)
        self.health = health or Health(pool.reactor, self.monitor)
        self._id_prefix = os.urandom(4).hex()
        self._counter = 0
        self.exchanges: set[Exchange] = set()  # in flight
        self._ticker = LoopingCall(self._check_deadlines)
        self._ticker.clock = clock

    @property
    def in_flight(self) -> int:
        return len(self.exchanges)

    def began(self, exchange: Exchange) -> None:
        self.exchanges.add(exchange)
        if not self._ticker.running:
            self._ticker.start(DEADLINE_TICK, now=False)

    def ended(self, exchange: Exchange) -> None:
        self.exchanges.discard(exchange)

    def _check_deadlines(self) -> None:
        if not self.exchanges:
            # Nothing in flight: nothing scheduled. Stopping here rather than when the last
            # exchange ends keeps a lightly loaded edge from restarting the tick per request.
            self._ticker.stop()
            return
        now = self.clock.seconds()
        for exchange in [e for e in self.exchanges if e.overdue(now)]:
            try:
                exchange.timed_out()
            except Exception:
                # A bug in one exchange must not stop the tick that every other one relies
                # on for its timeouts (a raising LoopingCall stops for good).
                log.failure(
                    "timing out request {request_id} failed", request_id=exchange.request_id
                )
                exchange.crashed()

    def next_request_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}{self._counter:08x}"

    def start(self, head: RequestHead, stream: ClientStream) -> Exchange:
        return Exchange(self, head, stream)

    def refuse(self, head: RequestHead, stream: ClientStream, code: ErrorCode, detail: str) -> None:
        exchange = Exchange(self, head, stream, route=False)
        exchange.fail(OriginError(code, detail))

    def client_handshake_done(self, facts: ClientTLSFacts) -> None:
        self.monitor.client_handshake("ok")

    def client_handshake_failed(self, failure: HandshakeFailure) -> None:
        result = "unknown_sni_rejected" if failure.refused else "failed"
        self.monitor.client_handshake(result)
        error = "client_tls_unknown_sni" if failure.refused else "client_tls_failed"
        log.debug(
            "client {client}: TLS handshake failed (SNI {sni}): {detail}",
            client=failure.client,
            sni=failure.sni,
            detail=failure.detail,
        )
        self.access_log.write_line(
            handshake_failure_line(
                self.clock.seconds(), failure.client, failure.sni, error, failure.detail
            )
        )


class Phase(enum.IntEnum):
    """Where an exchange is in its life. `_MOVES` lists every move it makes (h11's
    `_state.py` is the model): a move not listed is a bug, and raises. An IntEnum, so that
    looking a phase up costs an int's hash, not a Python-level Enum.__hash__ (4 a request)."""

    ROUTING = enum.auto()  # created: its domain and origins are being looked up
    CONNECTING = enum.auto()  # waiting for the pool's connection to the current origin
    WAITING = enum.auto()  # the request went out on `conn`; no response head yet
    RELAYING = enum.auto()  # the response head went to the client; the body streams
    DONE = enum.auto()  # answered (or cut off) and logged; nothing more happens


ROUTING, CONNECTING, WAITING, RELAYING, DONE = Phase
_MOVES: dict[Phase, frozenset[Phase]] = {
    ROUTING: frozenset({CONNECTING, DONE}),
    # CONNECTING again: the next origin, or a fresh connection after a stale pooled one.
    CONNECTING: frozenset({CONNECTING, WAITING, DONE}),
    WAITING: frozenset({CONNECTING, RELAYING, DONE}),
    RELAYING: frozenset({DONE}),
    DONE: frozenset(),
}


@implementer(IPushProducer)
class Exchange:
    """One request through the edge, from its head to its access-log line."""

    # Defaults every exchange starts with, as class attributes: an exchange sets only
    # what differs, which is most of the cost of making one per request.
    phase = ROUTING
    conn: UpstreamConnection | None = None
    route: OriginRoute
    _cancel_acquire: Any = None
    _timer_limit: float | None = None
    _last_progress = 0.0
    # The two body lists: empty tuples by default, so that a request without a body costs no
    # allocation; only a request with one gets body() calls, and its __init__ makes lists.
    _body_pending: list[bytes] = ()  # type: ignore[assignment]  # not yet sent: no connection
    _replay: list[bytes] | None = ()  # type: ignore[assignment]  # to retry; None = too big
    _replay_size = 0
    _body_sent = False
    _stale_retried = False
    _no_body = False
    _paused_upload = False
    _last_error: OriginError | None = None

    def __init__(
        self, proxy: Proxy, head: RequestHead, stream: ClientStream, *, route: bool = True
    ) -> None:
        self.proxy = proxy
        self.head = head
        self.stream = stream
        self.runtime = runtime = proxy.holder.current
        self.clock = clock = proxy.clock
        self.t0 = t0 = clock.seconds()
        self.request_id = request_id = proxy.next_request_id()
        self.record = AccessRecord(
            request_id,
            stream.client_ip,
            head.method.decode("latin-1"),
            head.host,
            head.path.decode("latin-1"),
            t0,
            runtime.generation,
        )
        client_tls = stream.client_tls
        if client_tls is not None:
            self.record.scheme = "https"
            self.record.client_tls_version = client_tls.version
            self.record.client_sni = client_tls.sni
        self._body_ended = not head.has_body
        if not self._body_ended:
            self._body_pending = []
            self._replay = []
        proxy.began(self)
        if route:
            self._route()

    def _enter(self, phase: Phase) -> None:
        if phase not in _MOVES[self.phase]:
            raise RuntimeError(f"request {self.request_id}: {self.phase.name} -> {phase.name}")
        self.phase = phase

    # -- routing --------------------------------------------------------------

    def _route(self) -> None:
        head = self.head
        if head.host is None:
            self.fail(OriginError(ErrorCode.BAD_REQUEST, "request has no Host"))
            return
        client_tls = self.stream.client_tls
        if client_tls is not None and not client_tls.certificate.covers(head.host):
            # The connection's handshake never named this host (SPEC §8): no origin of it
            # is reached through a connection made for another domain.
            self.fail(
                OriginError(
                    ErrorCode.MISDIRECTED_REQUEST,
                    f"{head.host} is not covered by the certificate this connection "
                    f"presented ({', '.join(client_tls.certificate.names)})",
                )
            )
            return
        domain = self.runtime.domains.get(head.host)
        if domain is None:
            self.fail(
                OriginError(ErrorCode.UNKNOWN_DOMAIN, f"no domain configured for {head.host}")
            )
            return
        self.domain = domain
        self.record.domain = domain.config.name
        if client_tls is None and domain.config.https_redirect:
            self._redirect_to_https()
            return
        self.timeouts = domain.config.timeouts
        self._origin_head = self._build_origin_head(domain)
        self._plan = domain.balancer.plan()
        if domain.watched:
            self._plan = self.proxy.health.order(domain, self._plan)
        self._try_next_origin()

    def _redirect_to_https(self) -> None:
        """308 to the same host and target over HTTPS; the origin is never contacted."""
        head = self.head
        port = self.runtime.https_port
        host = self.domain.config.name  # the request's host: it selected this domain
        authority = host if port == 443 else f"{host}:{port}"
        location = b"https://" + authority.encode("ascii") + head.path
        if not self._body_ended:
            self.stream.close_after_response()  # the body is not read: the stream is done
        rec = self.record
        rec.status = 308
        rec.bytes_sent = self.stream.send_redirect(location, self.request_id)
        self._finish()

    def _build_origin_head(self, domain: DomainRuntime) -> bytes:
        head = self.head
        if head.chunked:
            framing: bytes | None = b"Transfer-Encoding: chunked"
        elif head.content_length is not None:
            framing = b"Content-Length: %d" % head.content_length
        else:
            framing = None
        return origin_request_head(
            head.method + b" " + head.path + b" HTTP/1.1",
            head.scan,
            client_ip=self.stream.client_ip_bytes,
            origin_host=domain.origin_host,
            forwarded_host=head.host_header,
            body_framing=framing,
            forwarded_proto=b"http" if self.stream.client_tls is None else b"https",
        )

    def _try_next_origin(self) -> None:
        if not self._plan:
            assert self._last_error is not None
            self.fail(self._last_error)
            return
        self._attempt(self._plan.pop(0), fresh=False)

    def _attempt(self, route: OriginRoute, *, fresh: bool) -> None:
        self.route = route
        self.record.attempts += 1
        self.record.origin = route.label
        self.record.sni = route.sni
        self.record.verify_name = route.verify_name if route.verify else None
        t = self.timeouts
        # A backstop: the pool and the connection keep their own timers for each step;
        # this one guarantees a request never waits forever for a connection whatever
        # goes wrong in between (SPEC: never a hang).
        self._arm_timer(t.connect + t.tls_handshake + self.proxy.pool.queue_timeout + 1.0)
        self._enter(CONNECTING)  # before acquire: a pooled connection comes at once
        self._cancel_acquire = self.proxy.pool.acquire(
            route, self, connect_timeout=t.connect, handshake_timeout=t.tls_handshake, fresh=fresh
        )

    # -- ConnectionWaiter -----------------------------------------------------

    def connection_ready(self, conn: UpstreamConnection) -> None:
        self._cancel_acquire = None
        if self.phase is DONE:
            self.proxy.pool.release(conn)
            return
        self._enter(WAITING)
        self.conn = conn
        rec = self.record
        rec.connection_reused = conn.requests > 0
        rec.upstream_connect_ms = None if rec.connection_reused else conn.connect_ms
        rec.upstream_handshake_ms = None if rec.connection_reused else conn.handshake_ms
        peer = None
        if conn.tls is not None:
            peer = conn.tls.peer
            rec.tls_version = conn.tls.version
            rec.tls_cipher = conn.tls.cipher
            rec.tls_resumed = conn.tls.resumed
            # What the origin presented, on the request that made the handshake.
            rec.origin_cert = peer.to_json() if peer and not rec.connection_reused else None
        self.proxy.monitor.connection_used(
            self.record.domain or "", self.route, reused=rec.connection_reused, peer=peer
        )
        head = self.head
        conn.send_request(
            self._origin_head, self, head_only=head.method == b"HEAD", chunked=head.chunked
        )
        if head.has_body:
            conn.upload_from(_UploadProducer(self.stream))
            for chunk in self._body_pending:
                self._send_body_chunk(chunk)
            self._body_pending = []
            if self._body_ended:
                self._send_body_end()
            if self._paused_upload:
                self._paused_upload = False
                self.stream.resume_request_body()
        self._arm_timer(self.timeouts.response_header)

    def connection_failed(self, err: OriginError) -> None:
        self._cancel_acquire = None
        if self.phase is DONE:
            return
        if err.peer is not None:
            self.record.origin_cert = err.peer.to_json()  # type: ignore[attr-defined]
        self.proxy.monitor.setup_failed(
            self.record.domain or "",
            self.route,
            err,
            err.peer,  # type: ignore[arg-type]
        )
        self._attempt_failed(err)

    def _attempt_failed(self, err: OriginError) -> None:
        self._last_error = err
        if err.code is not ErrorCode.ORIGIN_BUSY:
            self.proxy.monitor.attempt_done(self.record.domain or "", self.route, err)
            if self.domain.watched:
                self.proxy.health.attempt_done(self.domain.config.name, self.route, err)
        self.conn = None
        self._cancel_timer()
        if self.phase is RELAYING:
            self._abort_client(err)
            return
        if (
            isinstance(err, StaleConnection)
            and not self._stale_retried
            and (self._idempotent or not self._body_sent)
        ):
            self._stale_retried = True  # the retry counts in `attempts` like any other
            self._restart_body()
            self._attempt(self.route, fresh=True)
            return
        if err.code is ErrorCode.ORIGIN_BUSY:
            self.fail(err)
            return
        if not err.request_sent or (self._idempotent and self._replay is not None):
            self._restart_body()
            self._try_next_origin()
            return
        self.fail(err)

    @property
    def _idempotent(self) -> bool:
        return self.head.method in IDEMPOTENT

    def _restart_body(self) -> None:
        """Queue the kept body again for the next attempt."""
        if self._body_sent:
            assert self._replay is not None
            self._body_pending = list(self._replay)
            self._body_sent = False

    # -- RequestSink: the client's body ----------------------------------------

    def body(self, data: bytes) -> None:
        if self.phase is DONE:
            return
        if self._replay is not None:
            self._replay_size += len(data)
            if self._replay_size <= REPLAY_BYTES:
                self._replay.append(data)
            else:
                self._replay = None
        if self.conn is None:
            self._body_pending.append(data)
            if not self._paused_upload:
                # No origin connection yet: stop reading the client until there is one.
                self._paused_upload = True
                self.stream.pause_request_body()
            return
        self._send_body_chunk(data)

    def _send_body_chunk(self, data: bytes) -> None:
        assert self.conn is not None
        self._body_sent = True
        self.conn.write_body(data)
        self._last_progress = self.clock.seconds()

    def _send_body_end(self) -> None:
        assert self.conn is not None
        self.conn.end_body()

    def end(self) -> None:
        if self.phase is DONE or self._body_ended:
            return
        self._body_ended = True
        if self.conn is not None:
            self._send_body_end()

    def client_lost(self) -> None:
        if self.phase is DONE:
            return
        if self.record.status is None:
            self.record.status = CLIENT_CLOSED
        self._drop_origin()
        self._finish()

    def reject(self, code: ErrorCode, detail: str) -> None:
        if self.phase is DONE:
            return
        self._drop_origin()
        self.fail(OriginError(code, detail))

    # -- ResponseListener -------------------------------------------------------

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> None:
        if self.phase is DONE:
            return
        self._enter(RELAYING)
        self.record.origin_status = status
        self.record.status = status
        self._no_body = self.head.method == b"HEAD" or status in (204, 304)
        lines = client_response_lines(headers)
        lines.append(b"X-Edge-Request-Id: " + self.request_id.encode())
        self.stream.start_response(status, reason, lines, length, no_body=self._no_body)
        if not self._no_body:
            self.stream.register_producer(self)
            self._arm_timer(self.timeouts.body_idle)

    def response_body(self, data: bytes) -> None:
        if self.phase is DONE:
            return
        self.record.bytes_sent += len(data)
        self._last_progress = self.clock.seconds()
        self.stream.send_body(data)

    def read_done(self) -> None:
        if self.phase is not DONE:
            self.stream.flush()

    def response_end(self) -> None:
        if self.phase is DONE:
            return
        conn, self.conn = self.conn, None
        self._cancel_timer()
        if not self._no_body:
            self.stream.unregister_producer()
        if (
            conn is not None
            and conn.transport is not None
            and self.head.has_body
            and not self._body_ended
        ):
            # The origin answered before the upload finished: that connection is spent.
            conn.abort()
        elif conn is not None:
            self.proxy.pool.release(conn)
        self.proxy.monitor.attempt_done(self.record.domain or "", self.route, None)
        if self.domain.watched:
            self.proxy.health.attempt_done(self.domain.config.name, self.route, None)
        self.stream.end_response()
        self._finish()

    def response_failed(self, err: OriginError) -> None:
        if self.phase is DONE:
            return
        self._attempt_failed(err)

    # -- IPushProducer: the client's socket tells the origin to wait -------------

    def pauseProducing(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def resumeProducing(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def stopProducing(self) -> None:
        self.client_lost()

    # -- timeouts -------------------------------------------------------------------

    def _arm_timer(self, seconds: float) -> None:
        """Fail the attempt after `seconds` without progress (the proxy's tick checks)."""
        self._last_progress = self.clock.seconds()
        self._timer_limit = seconds

    def _cancel_timer(self) -> None:
        self._timer_limit = None

    def overdue(self, now: float) -> bool:
        limit = self._timer_limit
        return limit is not None and now - self._last_progress >= limit

    def timed_out(self) -> None:
        """No progress for the current limit: fail this attempt as a timeout."""
        limit = self._timer_limit
        self._timer_limit = None
        sent = True
        if self.phase is RELAYING:
            detail = f"origin sent no body bytes for {limit:g}s (body_idle)"
        elif self.phase is CONNECTING:
            detail = f"no usable origin connection within {limit:g}s"
            sent = False
            if self._cancel_acquire is not None:
                self._cancel_acquire()
                self._cancel_acquire = None
        else:
            detail = f"origin sent no response headers within {limit:g}s"
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self._attempt_failed(OriginError(ErrorCode.ORIGIN_TIMEOUT, detail, request_sent=sent))

    # -- endings ---------------------------------------------------------------------

    def crashed(self) -> None:
        """An exception escaped this exchange's own code: end it (500, or a cut-off once
        the head went out) and never leave it in flight, whatever else fails."""
        try:
            self._drop_origin()
            self.fail(OriginError(ErrorCode.INTERNAL_ERROR, "internal error (see the edge's log)"))
        except Exception:
            log.failure("ending request {request_id} failed", request_id=self.request_id)
        finally:
            self.phase = DONE  # whatever phase it was in: it must not stay in flight
            self.proxy.ended(self)

    def fail(self, err: OriginError) -> None:
        """Answer the client with the error's status, or cut it off if that is too late."""
        if self.phase is DONE:
            return
        self.record.error = err.code.value
        self.record.error_detail = err.detail
        if self.phase is RELAYING or self.stream.started:
            self._abort_client(err)
            return
        if self.stream.connected:
            if not self._body_ended:
                # The rest of the request body is still on its way (or, with Expect, will
                # never come): the stream cannot be trusted for a next request.
                self.stream.close_after_response()
            self.record.status = err.code.status
            self.record.bytes_sent = self.stream.send_error(err.code, self.request_id)
        self._finish()

    def _abort_client(self, err: OriginError) -> None:
        self.record.error = err.code.value
        self.record.error_detail = err.detail
        self._drop_origin()
        self.stream.abort()
        self._finish()

    def _drop_origin(self) -> None:
        self._cancel_timer()
        if self._cancel_acquire is not None:
            self._cancel_acquire()
            self._cancel_acquire = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def _finish(self) -> None:
        if self.phase is DONE:
            return
        self._enter(DONE)
        self._cancel_timer()
        self.proxy.ended(self)
        rec = self.record
        rec.duration_ms = (self.clock.seconds() - self.t0) * 1000.0
        if rec.error is not None:
            level = log.warn if rec.error.startswith("origin_") else log.debug
            level(
                "{request_id} {host}{path} -> {status} {error}: {detail}",
                request_id=rec.request_id,
                host=rec.host,
                path=rec.path,
                status=rec.status,
                error=rec.error,
                detail=rec.error_detail,
            )
        self.proxy.monitor.request_done(rec)
        self.proxy.access_log.write(rec)


@implementer(IPushProducer)
class _UploadProducer:
    """The origin's socket tells the client to wait: pauses reading the request body."""

    def __init__(self, stream: ClientStream) -> None:
        self.stream = stream

    def pauseProducing(self) -> None:
        self.stream.pause_request_body()

    def resumeProducing(self) -> None:
        self.stream.resume_request_body()

    def stopProducing(self) -> None:
        self.stream.resume_request_body()
