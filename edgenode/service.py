"""twistd `Options` and `makeService`: the only module that touches the global reactor."""

from __future__ import annotations

import signal
import sys
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.python import usage

from edgenode.accesslog import AccessLog
from edgenode.config import Config, load_config
from edgenode.downstream import DownstreamFactory
from edgenode.errors import ConfigError
from edgenode.proxy import Proxy
from edgenode.runtime import RuntimeHolder, build_runtime
from edgenode.upstream import OriginPool

log = Logger()

SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish on SIGTERM


class Options(usage.Options):
    synopsis = "--config FILE [--listen ENDPOINT] [--admin-listen ENDPOINT]"
    longdesc = (
        "A CDN edge node: HTTP/1.1 clients in, HTTPS back-to-origin with the origin SNI "
        "each domain names. See README.md and etc/edgenode.yaml."
    )
    optParameters = [
        ["config", "c", None, "The YAML config file (see etc/edgenode.yaml)."],
        ["listen", None, None, "Client-facing endpoint, overriding the config's `listen`."],
        ["admin-listen", None, None, "Admin endpoint, overriding the config's `admin.listen`."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


def makeService(options: Options) -> service.IService:
    try:
        config = load_config(options["config"])
    except ConfigError as e:
        # twistd would print a traceback; an operator wants the problems, like `nginx -t`.
        print(f"edgenode: not starting: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    overrides: dict[str, Any] = {}
    if options["listen"]:
        overrides["listen"] = options["listen"]
    if options["admin-listen"]:
        overrides["admin"] = attrs.evolve(config.admin, listen=options["admin-listen"])
    if overrides:
        config = attrs.evolve(config, **overrides)
    from twisted.internet import reactor

    return EdgeService(config, reactor)


class EdgeService(service.Service):
    """The edge: client listener, origin pool, access log; drains on stop."""

    name = "edgenode"

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.port: Any = None

    def privilegedStartService(self) -> None:
        config = self.config
        self.holder = RuntimeHolder(build_runtime(config, generation=1))
        self.pool = OriginPool(
            self.reactor,
            max_per_server=config.limits.origin_max_connections,
            queue_timeout=config.limits.origin_queue_timeout,
        )
        self.access_log = AccessLog(config.access_log)
        self.proxy = Proxy(self.holder, self.pool, self.access_log, self.reactor)
        self.factory = DownstreamFactory(self.proxy, config.limits, self.reactor)
        endpoint = endpoints.serverFromString(self.reactor, config.listen)
        failures: list[Any] = []
        endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()  # e.g. port in use: twistd must not start
        super().privilegedStartService()

    def _listening(self, port: Any) -> None:
        self.port = port

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        # After reactor.run() installed Twisted's own handlers: ours replace them.
        self.reactor.callWhenRunning(self._install_stop_signals)
        runtime = self.holder.current
        log.info(
            "edgenode started: listening on {listen}, {n} domains ({names}), generation {gen}, "
            "access log {access_log}",
            listen=self.config.listen,
            n=len(runtime.domains),
            names=", ".join(sorted(runtime.domains)),
            gen=runtime.generation,
            access_log=self.config.access_log,
        )

    def _install_stop_signals(self) -> None:
        """SIGTERM/SIGINT stop gracefully and exit 0.

        Twisted's handlers make twistd re-raise the signal at exit (status -15), which
        an init system reads as a crash; a requested stop is not one.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop_requested)

    def _stop_requested(self, signum: int, frame: Any) -> None:
        log.info("edgenode stopping on {signal}", signal=signal.Signals(signum).name)
        self.reactor.callFromThread(self.reactor.stop)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._drain_and_stop())

    async def _drain_and_stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to a bound), then close."""
        if self.port is not None:
            await self.port.stopListening()
        self.factory.drain()
        deadline = self.reactor.seconds() + SHUTDOWN_GRACE
        while self.factory.connections and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, 0.05, lambda: None)
        for conn in list(self.factory.connections):
            conn.abort()
        self.pool.stop()
        self.access_log.close()
        log.info("edgenode stopped")
