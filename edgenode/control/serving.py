"""What serves clients in an edge or a worker (`DataPath`): the runtime holder, origin pool,
access log, monitor, proxy and client factory, wired in one place; as a reload's target it
applies what the runtime does not carry, and on stop it drains.

It is apart from the twistd services so that one wiring serves the edge, each worker, and
the tests, which build it on a MemoryReactorClock.
"""

from __future__ import annotations

import contextlib
import socket

from OpenSSL import SSL
from twisted.internet import defer
from twisted.logger import Logger

from edgenode.accesslog import AccessLog, origin_state_line
from edgenode.config import Config
from edgenode.control.reloading import Candidate, Errors, Reports
from edgenode.datapath.downstream import DownstreamFactory
from edgenode.datapath.health import Health
from edgenode.datapath.monitor import Monitor, Process
from edgenode.datapath.pool import OriginPool
from edgenode.datapath.proxy import Proxy
from edgenode.datapath.tlstransport import TLSListener
from edgenode.reactors import IEdgeReactor
from edgenode.routes import OriginRoute
from edgenode.runtime import Runtime, RuntimeHolder, build_runtime
from edgenode.servertls import ServerTLS

log = Logger()


class DataPath:
    """The serving machinery of an edge or a worker: runtime holder, origin pool, access log,
    monitor, proxy and the client factory. As a reload's target it applies the limits, the
    access log and the pool's routes; on stop it drains."""

    restart_note = "still serving on the old listener"

    def __init__(
        self,
        config: Config,
        reactor: IEdgeReactor,
        *,
        process: Process,
        generation: int,
        access_log: AccessLog | None = None,
    ) -> None:
        self.reactor = reactor
        self.holder = RuntimeHolder(build_runtime(config, generation=generation))
        self.pool = OriginPool(
            reactor,
            max_per_server=config.limits.origin_max_connections,
            queue_timeout=config.limits.origin_queue_timeout,
        )
        # The config's access log, unless the caller brings one (a test keeps the records).
        self.access_log = AccessLog(config.access_log) if access_log is None else access_log
        self.monitor = Monitor(reactor, self.pool, process=process)
        self.monitor.started(generation)
        self.monitor.serving_certificates(config.tls.certificates)
        self.health = Health(reactor, self)
        self.proxy = Proxy(
            self.holder, self.pool, self.access_log, reactor, self.monitor, self.health
        )
        self.factory = DownstreamFactory(self.proxy, config.limits, reactor)
        self._server_tls: ServerTLS | None = self.holder.current.server_tls

    def listen_tls(self, sock: socket.socket) -> TLSListener:
        """The HTTPS listener (SPEC §8) on a bound, listening socket: the same client
        protocol as `factory`, under TLS on each accepted socket, on the running
        certificates."""
        listener = TLSListener(
            self.reactor, sock, self._new_client_tls, self.factory.build_tls_protocol
        )
        listener.startListening()
        return listener

    def _new_client_tls(self, sock: socket.socket) -> SSL.Connection:
        """A connection on the running certificates, read per accept: a reload's apply to
        the next handshake. A reload that drops every certificate keeps the last ones for a
        listener that is still open (it goes away at the restart the reload asks for)."""
        server_tls = self.holder.current.server_tls or self._server_tls
        assert server_tls is not None  # the config refuses listen_tls without certificates
        self._server_tls = server_tls
        return server_tls.new_connection(sock)

    def origin_state(self, domain: str, route: OriginRoute, up: bool, reason: str | None) -> None:
        """Health says an origin changed: the gauge, and a line in the access log."""
        self.monitor.origin_state(domain, route, up, reason)
        if reason is not None:
            line = origin_state_line(
                self.reactor.seconds(), domain, route.label, route.sni, up, reason
            )
            self.access_log.write_line(line)

    def origin_unwatched(self, domain: str, route: OriginRoute) -> None:
        self.monitor.origin_unwatched(domain, route)

    def start(self) -> None:
        self.pool.start()
        self.access_log.start(self.reactor)
        self.health.apply(self.holder.current)

    def reopen_access_log(self) -> None:
        """After `mv access.log access.log.1`, the way logrotate works (SIGUSR1)."""
        self.access_log.reopen()
        log.info("access log reopened: {path}", path=str(self.access_log.target))

    def stage(self, candidate: Candidate) -> None:
        """Nothing: routes, TLS contexts and timeouts all come with the new runtime."""

    def applied(self, new: Runtime, old: Runtime) -> str:
        config = new.config
        self.factory.limits = config.limits
        self.pool.max_per_server = config.limits.origin_max_connections
        self.pool.queue_timeout = config.limits.origin_queue_timeout
        if config.access_log != old.config.access_log:
            self.access_log.target = config.access_log
            self.access_log.reopen()
        self.health.apply(new)
        retired = self.pool.retain(new.pool_keys())
        return f"{retired} idle origin connections of removed routes closed"

    async def confirmed(self, trigger: str, generation: int) -> tuple[Errors, Reports]:
        return (), ()  # applied, in the only process there is

    async def drain(self, grace: float) -> None:
        """Let the requests in flight finish (for up to `grace` seconds), then close.

        Draining closes every idle client connection at once and each busy one once its
        response is sent; the wait (a Deferred, no polling) ends when no client connection
        is left, or at the grace's end. Then whatever is still open is cut: requests still
        running, and clients too slow to take their last response in time.
        """
        self.factory.drain()
        closed = self.factory.when_closed()
        closed.addTimeout(grace, self.reactor)
        with contextlib.suppress(defer.TimeoutError):  # the grace is over
            await closed
        for conn in list(self.factory.connections):
            conn.abort()
        self.health.stop()
        self.pool.stop()
        self.access_log.close()
