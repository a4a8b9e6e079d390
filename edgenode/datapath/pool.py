"""The origin connection pool: connections keyed by route, a cap per origin server.

Invariants:
- A pooled connection is handed out only to a request whose route has the same
  `pool_key` (address, port, TLS on/off, SNI, verify name, verify on/off, trust, min TLS).
  A connection is never shared across SNI values.
- `limits.origin_max_connections` caps open connections per origin server (address,
  port), whatever the route; beyond it requests wait up to `origin_queue_timeout`.
- Each connection's TLS facts are made here, for the route, and handed both to the TLS
  transport (which fills them in) and to the protocol (which reads them).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.task import LoopingCall

from edgenode.datapath.tlstransport import connect_tls
from edgenode.datapath.upstream import (
    BUSY,
    CLOSED,
    IDLE,
    ConnectionWaiter,
    ConnectTLS,
    UpstreamConnection,
    connect_origin,
)
from edgenode.errors import ErrorCode, OriginError
from edgenode.reactors import IOriginReactor
from edgenode.routes import OriginRoute


@attrs.define(eq=False)
class _Waiting:
    route: OriginRoute
    waiter: ConnectionWaiter
    connect_timeout: float
    handshake_timeout: float
    timer: Any = None
    cancelled: bool = False


class OriginPool:
    """Idle connections by route key; a cap of open connections per origin server."""

    def __init__(
        self,
        reactor: IOriginReactor,
        *,
        max_per_server: int,
        queue_timeout: float,
        connect_timeout: Callable[[OriginRoute], float] | None = None,
        connect_tls: ConnectTLS = connect_tls,
    ) -> None:
        self.reactor = reactor
        self.connect_tls = connect_tls  # TLS origins: tlstransport's, on a socket of its own
        self.clock = reactor
        self.max_per_server = max_per_server
        self.queue_timeout = queue_timeout
        self._idle: dict[tuple[object, ...], list[UpstreamConnection]] = {}
        self._open: collections.Counter[tuple[str, int]] = collections.Counter()
        self._queues: dict[tuple[str, int], collections.deque[_Waiting]] = {}
        self._sweeper = LoopingCall(self._sweep_idle)
        self._sweeper.clock = reactor
        self.handshakes = 0
        self.reuses = 0

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        if not self._sweeper.running:
            self._sweeper.start(1.0, now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close_idle()
        self._idle.clear()
        for queue in self._queues.values():
            for w in queue:
                if w.timer is not None and w.timer.active():
                    w.timer.cancel()
        self._queues.clear()

    # -- acquiring ----------------------------------------------------------

    def acquire(
        self,
        route: OriginRoute,
        waiter: ConnectionWaiter,
        *,
        connect_timeout: float,
        handshake_timeout: float,
        fresh: bool = False,
    ) -> Callable[[], None]:
        """Hand `waiter` a ready connection for `route`; returns a cancel function."""
        if not fresh:
            idle = self._idle.get(route.pool_key)
            while idle:
                conn = idle.pop()
                if conn.state == IDLE:
                    conn.state = BUSY
                    self.reuses += 1
                    waiter.connection_ready(conn)
                    return _noop
        server = route.server
        if self._open[server] >= self.max_per_server and not self._evict_idle_of(server):
            return self._enqueue(route, waiter, connect_timeout, handshake_timeout)
        conn = self._connect(route, connect_timeout, handshake_timeout)
        conn.wait_for_ready(waiter)
        return conn.abandon

    def _connect(
        self, route: OriginRoute, connect_timeout: float, handshake_timeout: float
    ) -> UpstreamConnection:
        tls = route.creator.facts() if route.creator is not None else None
        conn = UpstreamConnection(self, route, self.clock.seconds(), handshake_timeout, tls)
        self._open[route.server] += 1
        if route.tls:
            self.handshakes += 1
        connect_origin(self.reactor, conn, connect_timeout, self.connect_tls)
        return conn

    def _evict_idle_of(self, server: tuple[str, int]) -> bool:
        """Close one idle connection of another route to the same server, to make room."""
        for key, conns in self._idle.items():
            if key[:2] == server and conns:
                conns.pop(0).close_idle()
                return True
        return False

    def _enqueue(
        self,
        route: OriginRoute,
        waiter: ConnectionWaiter,
        connect_timeout: float,
        handshake_timeout: float,
    ) -> Callable[[], None]:
        entry = _Waiting(route, waiter, connect_timeout, handshake_timeout)
        entry.timer = self.clock.callLater(self.queue_timeout, self._queue_timed_out, entry)
        self._queues.setdefault(route.server, collections.deque()).append(entry)

        def cancel() -> None:
            if entry.timer.active():
                entry.timer.cancel()
            self._dequeue(entry)

        return cancel

    def _dequeue(self, entry: _Waiting) -> None:
        entry.cancelled = True
        queue = self._queues.get(entry.route.server)
        if queue is not None and entry in queue:
            queue.remove(entry)
            if not queue:
                del self._queues[entry.route.server]

    def _queue_timed_out(self, entry: _Waiting) -> None:
        self._dequeue(entry)
        entry.waiter.connection_failed(
            OriginError(
                ErrorCode.ORIGIN_BUSY,
                f"no connection slot to {entry.route.label} within {self.queue_timeout:g}s "
                f"({self.max_per_server} connections open)",
            )
        )

    def _serve_queue(self, server: tuple[str, int]) -> None:
        queue = self._queues.get(server)
        while queue and self._open[server] < self.max_per_server:
            entry = queue.popleft()
            if entry.cancelled:
                continue
            entry.timer.cancel()
            self.acquire(
                entry.route,
                entry.waiter,
                connect_timeout=entry.connect_timeout,
                handshake_timeout=entry.handshake_timeout,
            )
        if queue is not None and not queue:
            del self._queues[server]

    # -- returning ----------------------------------------------------------

    def release(self, conn: UpstreamConnection) -> None:
        """A connection whose exchange finished cleanly: keep it, unless it must go."""
        if conn.state == CLOSED:
            return
        # A slow client may have paused it; an idle pooled connection must be read again.
        conn.resume_reading()
        if conn.retired:
            conn.close_idle()
            return
        queue = self._queues.get(conn.route.server)
        if queue:
            for entry in queue:
                if not entry.cancelled and entry.route.pool_key == conn.route.pool_key:
                    queue.remove(entry)
                    entry.timer.cancel()
                    self.reuses += 1
                    entry.waiter.connection_ready(conn)
                    return
        conn.state = IDLE
        conn.idle_since = self.clock.seconds()
        self._idle.setdefault(conn.route.pool_key, []).append(conn)
        if queue:
            # Others wait for this server on another route: give them the slot.
            self._idle[conn.route.pool_key].remove(conn)
            conn.close_idle()

    def connection_closed(self, conn: UpstreamConnection) -> None:
        server = conn.route.server
        self._open[server] -= 1
        if self._open[server] <= 0:
            del self._open[server]
        idle = self._idle.get(conn.route.pool_key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.route.pool_key]
        if server in self._queues:
            self._serve_queue(server)

    def _sweep_idle(self) -> None:
        now = self.clock.seconds()
        for conns in list(self._idle.values()):
            for conn in [c for c in conns if now - c.idle_since >= c.route.idle_timeout]:
                conns.remove(conn)
                conn.close_idle()

    def retain(self, keys: set[tuple[object, ...]]) -> int:
        """After a reload: close idle connections of routes that no longer exist."""
        closed = 0
        for key in [k for k in self._idle if k not in keys]:
            for conn in self._idle.pop(key):
                conn.close_idle()
                closed += 1
        return closed

    def idle_count(self, key: tuple[object, ...] | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def open_count(self, server: tuple[str, int]) -> int:
        return self._open.get(server, 0)

    def open_by_server(self) -> dict[tuple[str, int], int]:
        return dict(self._open)

    def idle_by_server(self) -> dict[tuple[str, int], int]:
        counts: collections.Counter[tuple[str, int]] = collections.Counter()
        for conns in self._idle.values():
            for conn in conns:
                counts[conn.route.server] += 1
        return dict(counts)


def _noop() -> None:
    return None
