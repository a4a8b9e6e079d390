"""twistd `Options` and `makeService`: the only module that touches the global reactor."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.python import usage

from edgenode.accesslog import AccessLog
from edgenode.admin import (
    AdminResource,
    AdminSite,
    ReloadResult,
    ensure_token,
    is_loopback_endpoint,
)
from edgenode.config import Config, load_config
from edgenode.downstream import DownstreamFactory
from edgenode.errors import ConfigError, Problem
from edgenode.monitor import Monitor
from edgenode.proxy import Proxy
from edgenode.runtime import RuntimeHolder, build_runtime, config_diff
from edgenode.upstream import OriginPool

log = Logger()

SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish on SIGTERM


class Options(usage.Options):
    synopsis = "(--config FILE | --demo) [--listen ENDPOINT] [--admin-listen ENDPOINT]"
    longdesc = (
        "A CDN edge node: HTTP/1.1 clients in, HTTPS back-to-origin with the origin SNI "
        "each domain names. See README.md and etc/edgenode.yaml."
    )
    optFlags = [
        ["demo", None, "Run a self-contained demo: a local TLS origin and three domains."],
    ]
    optParameters = [
        ["config", "c", None, "The YAML config file (see etc/edgenode.yaml)."],
        ["listen", None, None, "Client-facing endpoint, overriding the config's `listen`."],
        ["admin-listen", None, None, "Admin endpoint, overriding the config's `admin.listen`."],
    ]

    def postOptions(self) -> None:
        if not self["config"] and not self["demo"]:
            raise usage.UsageError("--config FILE is required (or --demo)")
        if self["config"] and self["demo"]:
            raise usage.UsageError("--demo builds its own config; leave out --config")


def makeService(options: Options) -> service.IService:
    if options["demo"]:
        return make_demo_service(options)
    overrides: dict[str, str] = {}
    if options["listen"]:
        overrides["listen"] = options["listen"]
    if options["admin-listen"]:
        overrides["admin.listen"] = options["admin-listen"]
    try:
        config = load_with_overrides(options["config"], overrides)
    except ConfigError as e:
        # twistd would print a traceback; an operator wants the problems, like `nginx -t`.
        print(f"edgenode: not starting: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    from twisted.internet import reactor

    return EdgeService(config, reactor, overrides)


def make_demo_service(options: Options) -> service.IService:
    """SPEC §7: the same EdgeService, on a config built in memory, beside a local origin."""
    from twisted.internet import reactor

    from edgenode import demo  # certificates and an origin: only the demo needs them

    twistd_options = getattr(options, "parent", None)
    try:
        demo_service = demo.DemoService(
            reactor,
            listen=options["listen"] or demo.DEMO_LISTEN,
            admin_listen=options["admin-listen"] or demo.DEMO_ADMIN_LISTEN,
            echo=not demo.log_reaches_stdout(twistd_options),
        )
    except ConfigError as e:  # e.g. a bad --listen
        print(f"edgenode: not starting the demo: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    EdgeService(demo_service.config, reactor).setServiceParent(demo_service)
    return demo_service


def load_with_overrides(path: str | Path, overrides: dict[str, str]) -> Config:
    """Load the config file, then apply the command line's listener overrides."""
    config = load_config(path)
    if "listen" in overrides:
        config = attrs.evolve(config, listen=overrides["listen"])
    if "admin.listen" in overrides:
        config = attrs.evolve(
            config, admin=attrs.evolve(config.admin, listen=overrides["admin.listen"])
        )
    return config


class EdgeService(service.Service):
    """The edge: client listener, admin site, origin pool, access log, reload; drains on stop."""

    name = "edgenode"

    def __init__(
        self, config: Config, reactor: Any, overrides: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.overrides = overrides or {}
        self.ports: list[Any] = []

    def privilegedStartService(self) -> None:
        config = self.config
        self.holder = RuntimeHolder(build_runtime(config, generation=1))
        self.pool = OriginPool(
            self.reactor,
            max_per_server=config.limits.origin_max_connections,
            queue_timeout=config.limits.origin_queue_timeout,
        )
        self.access_log = AccessLog(config.access_log)
        self.monitor = Monitor(self.reactor, self.pool)
        self.monitor.generation.set(1)
        self.proxy = Proxy(self.holder, self.pool, self.access_log, self.reactor, self.monitor)
        self.factory = DownstreamFactory(self.proxy, config.limits, self.reactor)
        admin_site = self._admin_site(config)
        self._listen(config.listen, self.factory)
        self._listen(config.admin.listen, admin_site)
        super().privilegedStartService()

    def _admin_site(self, config: Config) -> AdminSite:
        try:
            token = ensure_token(config.admin.token_file)
        except (OSError, ValueError) as e:
            print(f"edgenode: not starting: admin token: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        if not is_loopback_endpoint(config.admin.listen):
            log.warn(
                "admin API listens on {listen}, which is not loopback-only; "
                "it is protected by the token in {path} alone",
                listen=config.admin.listen,
                path=str(config.admin.token_file),
            )
        return AdminSite(
            AdminResource(self.holder, token, self.reload, metrics=self.monitor.render)
        )

    def _listen(self, description: str, factory: Any) -> None:
        endpoint = endpoints.serverFromString(self.reactor, description)
        failures: list[Any] = []
        endpoint.listen(factory).addCallbacks(self.ports.append, failures.append)
        if failures:
            failures[0].raiseException()  # e.g. port in use: twistd must not start

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        self.access_log.start(self.reactor)
        # After reactor.run() installed Twisted's own handlers: ours replace them.
        self.reactor.callWhenRunning(self._install_signal_handlers)
        runtime = self.holder.current
        log.info(
            "edgenode started: listening on {listen}, admin on {admin}, {n} domains ({names}), "
            "generation {gen}, access log {access_log}",
            listen=self.config.listen,
            admin=self.config.admin.listen,
            n=len(runtime.domains),
            names=", ".join(sorted(runtime.domains)),
            gen=runtime.generation,
            access_log=self.config.access_log,
        )

    def _install_signal_handlers(self) -> None:
        """SIGHUP reloads; SIGTERM/SIGINT stop gracefully and exit 0.

        Twisted's handlers make twistd re-raise the stop signal at exit (status -15),
        which an init system reads as a crash; a requested stop is not one. Handlers
        only schedule work: they may run between any two bytecodes of reactor code.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop_requested)
        signal.signal(signal.SIGHUP, self._reload_requested)
        # twistd rotates its own --logfile on SIGUSR1; keep doing that, and also reopen
        # the access log (after `mv access.log access.log.1`, the way logrotate works).
        self._twistd_usr1 = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, self._reopen_requested)

    def _reopen_requested(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reopen_access_log)
        if callable(self._twistd_usr1):
            self._twistd_usr1(signum, frame)

    def _reopen_access_log(self) -> None:
        self.access_log.reopen()
        log.info("access log reopened: {path}", path=str(self.access_log.target))

    def _stop_requested(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._stop, signal.Signals(signum).name)

    def _stop(self, why: str) -> None:
        log.info("edgenode stopping on {signal}", signal=why)
        self.reactor.stop()

    def _reload_requested(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload, "SIGHUP")

    def reload(self, trigger: str) -> ReloadResult:
        """Re-read the config file and swap it in whole, or change nothing at all.

        Everything is built before the swap (parse, validate, CA files, TLS contexts);
        the reactor runs one reload at a time, so concurrent reloads are serialised.
        """
        old = self.holder.current
        source = self.config.source
        try:
            if source is None:
                raise ConfigError([Problem("", "the running config has no file to re-read")])
            config = load_with_overrides(source, self.overrides)
            new = build_runtime(config, old.generation + 1, previous=old)
        except ConfigError as e:
            log.warn(
                "reload ({trigger}) rejected, still running generation {gen}:\n{problems}",
                trigger=trigger,
                gen=old.generation,
                problems=str(e),
            )
            errors = tuple({"path": p.path, "message": p.message} for p in e.problems)
            self.monitor.reloaded(False, old.generation)
            return ReloadResult(False, old.generation, errors=errors)
        changed = config_diff(old.config, config)
        self.holder.swap(new)
        self.monitor.reloaded(True, new.generation)
        self.factory.limits = config.limits
        self.pool.max_per_server = config.limits.origin_max_connections
        self.pool.queue_timeout = config.limits.origin_queue_timeout
        if config.access_log != old.config.access_log:
            self.access_log.target = config.access_log
            self.access_log.reopen()
        retired = self.pool.retain(new.pool_keys())
        log.info(
            "reload ({trigger}): generation {gen}: {diff}; {retired} idle origin connections "
            "of removed routes closed",
            trigger=trigger,
            gen=new.generation,
            diff=json.dumps(changed, sort_keys=True),
            retired=retired,
        )
        for line in changed["restart_required"]:  # type: ignore[union-attr]
            log.warn(
                "reload: {change} needs a restart; still serving on the old listener", change=line
            )
        return ReloadResult(True, new.generation, changed=changed)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._drain_and_stop())

    async def _drain_and_stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to a bound), then close."""
        for port in self.ports:
            await port.stopListening()
        self.factory.drain()
        deadline = self.reactor.seconds() + SHUTDOWN_GRACE
        while self.factory.connections and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, 0.05, lambda: None)
        for conn in list(self.factory.connections):
            conn.abort()
        self.pool.stop()
        self.access_log.close()
        log.info("edgenode stopped")
