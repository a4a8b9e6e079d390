"""twistd `Options` and `makeService`: the only module of the edge that touches the global
reactor (the command-line tools run theirs through `task.react`)."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.python import usage

from edgenode.accesslog import AccessLog
from edgenode.config import (
    Config,
    apply_overrides,
    load_config,
    load_config_and_text,
    tcp_listen,
    workers_count,
)
from edgenode.control.admin import (
    AdminResource,
    AdminSite,
    ReloadResult,
    ensure_token,
    is_loopback_endpoint,
)
from edgenode.control.workers import (
    RELOAD_TIMEOUT,
    ControlChannel,
    RunDir,
    WorkerMetrics,
    WorkerPool,
    WorkerState,
    adopt_listener,
    bind_listeners,
    open_control_channel,
    read_state,
    worker_argv,
)
from edgenode.datapath.downstream import DownstreamFactory
from edgenode.datapath.monitor import Monitor, Process
from edgenode.datapath.proxy import Proxy
from edgenode.datapath.pool import OriginPool
from edgenode.errors import ConfigError, Problem
from edgenode.runtime import Runtime, RuntimeHolder, build_runtime, config_diff

log = Logger()

SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish on SIGTERM


class Options(usage.Options):
    synopsis = (
        "(--config FILE | --demo) [--listen ENDPOINT] [--admin-listen ENDPOINT] [--workers N]"
    )
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
        [
            "workers",
            None,
            None,
            "Worker processes sharing the client listener (a number, or 'auto' for one per "
            "CPU core), overriding the config's `workers`.",
        ],
        ["worker", None, None, "Internal: run as a worker; the supervisor passes its state file."],
    ]

    def postOptions(self) -> None:
        if self["worker"]:
            return  # everything else comes from the supervisor's state file
        if self["workers"] is not None:
            value = self["workers"]
            try:
                workers_count(int(value) if value.strip().isdigit() else value)
            except ValueError as e:
                raise usage.UsageError(f"--workers {e}") from None
        if not self["config"] and not self["demo"]:
            raise usage.UsageError("--config FILE is required (or --demo)")
        if self["config"] and self["demo"]:
            raise usage.UsageError("--demo builds its own config; leave out --config")


def makeService(options: Options) -> service.IService:
    if options["demo"]:
        return make_demo_service(options)
    if options["worker"]:
        return make_worker_service(options["worker"])
    overrides: dict[str, str] = {}
    if options["listen"]:
        overrides["listen"] = options["listen"]
    if options["admin-listen"]:
        overrides["admin.listen"] = options["admin-listen"]
    if options["workers"]:
        overrides["workers"] = options["workers"]
    try:
        config, text = load_config_and_text(options["config"])
        config = apply_overrides(config, overrides)
    except ConfigError as e:
        # twistd would print a traceback; an operator wants the problems, like `nginx -t`.
        print(f"edgenode: not starting: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    from twisted.internet import reactor

    if config.workers > 1:
        twistd_options = getattr(options, "parent", None) or {}
        return SupervisorService(
            config, reactor, overrides, text=text, reactor_name=twistd_options.get("reactor")
        )
    return EdgeService(config, reactor, overrides)


def make_worker_service(state_path: str) -> service.IService:
    """One worker of a supervisor, on the config (and generation) of its state file."""
    from twisted.internet import reactor

    try:
        state = read_state(state_path)
        config = state.config()
    except (OSError, ValueError, KeyError, ConfigError) as e:
        print(f"edgenode: worker not starting: state {state_path}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    return WorkerService(config, reactor, state, Path(state_path))


def make_demo_service(options: Options) -> service.IService:
    """SPEC §7: the same EdgeService, on a config built in memory, beside a local origin."""
    from twisted.internet import reactor

    from edgenode.control import demo  # certificates and an origin: only the demo needs them

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
    """Load the config file, then apply the command line's overrides."""
    return apply_overrides(load_config(path), overrides)


class EdgeService(service.Service):
    """The edge: client listener, admin site, origin pool, access log, reload; drains on stop."""

    name = "edgenode"
    process: ClassVar[Process] = "single"

    def __init__(
        self,
        config: Config,
        reactor: Any,
        overrides: dict[str, str] | None = None,
        *,
        generation: int = 1,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.overrides = overrides or {}
        self.first_generation = generation  # a worker starts on its supervisor's
        self.ports: list[Any] = []
        self._stopping = False

    def privilegedStartService(self) -> None:
        self._build()
        admin_site = self._admin_site(self.config)
        self._listen(self.config.listen, self.factory)
        self._listen(self.config.admin.listen, admin_site)
        super().privilegedStartService()

    def _build(self) -> None:
        """The serving machinery: runtime, origin pool, access log, metrics, proxy."""
        config = self.config
        self.holder = RuntimeHolder(build_runtime(config, generation=self.first_generation))
        self.pool = OriginPool(
            self.reactor,
            max_per_server=config.limits.origin_max_connections,
            queue_timeout=config.limits.origin_queue_timeout,
        )
        self.access_log = AccessLog(config.access_log)
        self.monitor = Monitor(self.reactor, self.pool, process=self.process)
        self.monitor.started(self.first_generation)
        self.proxy = Proxy(self.holder, self.pool, self.access_log, self.reactor, self.monitor)
        self.factory = DownstreamFactory(self.proxy, config.limits, self.reactor)

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
        return AdminSite(self._admin_resource(token))

    def _admin_resource(self, token: str) -> AdminResource:
        return AdminResource(self.holder, token, self.reload, metrics=self.monitor.render)

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
        # What is alive once running (modules, config, TLS contexts: most of the heap) lives
        # as long as the process: out of the collector's way, a full collection costs
        # milliseconds less (py-spy had the collector at ~3 % of the CPU under load).
        self.reactor.callWhenRunning(gc.freeze)
        self._log_started()

    def _log_started(self) -> None:
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
        # Once: Ctrl-C signals a supervisor's workers too, and then the supervisor does.
        if self._stopping:
            return
        self._stopping = True
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
        try:
            config, generation = self._next_config(old)
            new = build_runtime(config, generation, previous=old)
        except ConfigError as e:
            return self._rejected(trigger, old, e)
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

    def _next_config(self, old: Runtime) -> tuple[Config, int]:
        """The config a reload would apply, and its generation; raises `ConfigError`."""
        source = self.config.source
        if source is None:
            raise ConfigError([Problem("", "the running config has no file to re-read")])
        return load_with_overrides(source, self.overrides), old.generation + 1

    def _rejected(self, trigger: str, old: Runtime, e: ConfigError) -> ReloadResult:
        log.warn(
            "reload ({trigger}) rejected, still running generation {gen}:\n{problems}",
            trigger=trigger,
            gen=old.generation,
            problems=str(e),
        )
        errors = tuple({"path": p.path, "message": p.message} for p in e.problems)
        self.monitor.reloaded(False, old.generation)
        return ReloadResult(False, old.generation, errors=errors)

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


class WorkerService(EdgeService):
    """One worker under a supervisor (`workers` > 1): the edge on the shared listener.

    It has no admin API (the supervisor's is the only one), reloads to the supervisor's
    state file when told to on its control channel (or on SIGHUP), and stops when the
    control channel closes: a worker never outlives its supervisor.
    """

    process: ClassVar[Process] = "worker"

    def __init__(self, config: Config, reactor: Any, state: WorkerState, state_path: Path) -> None:
        super().__init__(config, reactor, dict(state.overrides), generation=state.generation)
        self.state = state
        self.state_path = state_path

    def privilegedStartService(self) -> None:
        self._build()
        self.ports.append(adopt_listener(self.reactor, self.state.family, self.factory))
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        super().startService()
        # Each second: the counts of the last second and the pool gauges, to the files the
        # supervisor's /metrics reads (a worker cannot be asked at scrape time).
        self._publisher = task.LoopingCall(self._publish)
        self._publisher.clock = self.reactor
        self._publisher.start(1.0)
        self.channel = ControlChannel(self._command, self._supervisor_gone)
        open_control_channel(self.reactor, self.channel)
        self.channel.send({"event": "ready", "generation": self.holder.current.generation})

    def _publish(self) -> None:
        try:
            self.monitor.publish()
        except Exception:
            # A failing write (a full /tmp) must not stop publishing for good: a LoopingCall
            # that raises never runs again, and /metrics would silently freeze.
            log.failure("publishing this worker's metrics failed; trying again in a second")

    def _log_started(self) -> None:
        runtime = self.holder.current
        log.info(
            "edgenode worker started (pid {pid}): serving {listen}, generation {gen}",
            pid=os.getpid(),
            listen=self.config.listen,
            gen=runtime.generation,
        )

    def _command(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("cmd") != "reload":
            problem = {"path": "", "message": f"unknown command {message.get('cmd')!r}"}
            return {"ok": False, "errors": [problem]}
        result = self.reload("supervisor")
        return {"ok": result.ok, "generation": result.generation, "errors": list(result.errors)}

    def _next_config(self, old: Runtime) -> tuple[Config, int]:
        try:
            state = read_state(self.state_path)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError([Problem("", f"cannot read the state file: {e}")]) from None
        return state.config(), state.generation

    def _supervisor_gone(self) -> None:
        if self.running:
            self._stop("the supervisor's control channel closing")

    def stopService(self) -> defer.Deferred[None]:
        # Publishing goes on while requests drain, and once more after the last of them:
        # what a worker counted before SIGTERM reaches /metrics.
        return super().stopService().addBoth(self._publish_last)

    def _publish_last(self, result: Any) -> Any:
        publisher = getattr(self, "_publisher", None)
        if publisher is not None and publisher.running:
            publisher.stop()
        self.monitor.publish()
        return result


class SupervisorService(EdgeService):
    """`workers` > 1: binds the client listener, runs the workers on it, has the admin API.

    It serves no client itself. Its config is the truth: a reload is validated here
    (parsed, CA files read, TLS contexts built) before any worker hears of it, and then
    every worker must confirm it (edgenode.control.workers). SIGHUP reloads the same way,
    SIGUSR1 is forwarded to every worker (each reopens its access log), SIGTERM stops
    every worker gracefully, then this process exits 0.
    """

    process: ClassVar[Process] = "supervisor"

    def __init__(
        self,
        config: Config,
        reactor: Any,
        overrides: dict[str, str],
        *,
        text: str,
        reactor_name: str | None = None,
    ) -> None:
        super().__init__(config, reactor, overrides)
        self.text = text
        self.reactor_name = reactor_name

    def privilegedStartService(self) -> None:
        config = self.config
        address = tcp_listen(config.listen)
        assert address is not None  # apply_overrides refused any other endpoint
        self.holder = RuntimeHolder(build_runtime(config, generation=1))
        self.monitor = Monitor(self.reactor, process="supervisor")
        self.monitor.started(1)
        try:
            self.listeners = bind_listeners(address, config.workers)
        except OSError as e:
            print(f"edgenode: not starting: cannot listen on {config.listen}: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        self.family = address.family
        self._listen(config.admin.listen, self._admin_site(config))
        service.Service.privilegedStartService(self)

    def _admin_resource(self, token: str) -> AdminResource:
        return AdminResource(
            self.holder,
            token,
            self.reload,
            metrics=lambda: self.metrics.render(),
            workers=lambda: self.workers.describe(self.metrics.requests_of),
        )

    def _write_state(self, text: str, generation: int) -> None:
        self.rundir.write_state(
            WorkerState(
                generation=generation,
                text=text,
                source=str(self.config.source),
                overrides=self.overrides,
                family=self.family,
            )
        )

    def startService(self) -> None:
        """Make the run directory and start the workers: after twistd dropped privileges
        (`-u`/`-g`), so that the workers, which run as that user too, can use both."""
        service.Service.startService(self)
        self.rundir = RunDir()
        self._write_state(self.text, 1)
        self.metrics = WorkerMetrics(self.monitor.render, self.rundir.metrics)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.rundir.metrics)}
        self.workers = WorkerPool(
            self.reactor,
            self.config.workers,
            worker_argv(self.rundir.state, self.reactor_name),
            env,
            self.rundir.metrics,
            listen_fds=[sock.fileno() for sock in self.listeners],
        )
        self.workers.start()
        self.reactor.callWhenRunning(self._install_signal_handlers)
        log.info(
            "edgenode supervisor started: {n} workers on {listen}, admin on {admin}, "
            "generation 1, run directory {rundir}",
            n=self.config.workers,
            listen=self.config.listen,
            admin=self.config.admin.listen,
            rundir=str(self.rundir.path),
        )

    def _reload_requested(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reload_logged, "SIGHUP")

    def _reload_logged(self, trigger: str) -> None:
        self.reload(trigger).addErrback(lambda f: log.failure("reload failed", f))

    def reload(self, trigger: str) -> defer.Deferred[ReloadResult]:  # type: ignore[override]
        return defer.Deferred.fromCoroutine(self._reload(trigger))

    async def _reload(self, trigger: str) -> ReloadResult:
        """Validate and build here first (a bad config touches no worker), then have every
        worker apply it; any worker that rejects it or does not answer makes it a failure."""
        old = self.holder.current
        source = self.config.source
        try:
            if source is None:
                raise ConfigError([Problem("", "the running config has no file to re-read")])
            config, text = load_config_and_text(source)
            config = apply_overrides(config, self.overrides)
            new = build_runtime(config, old.generation + 1, previous=old)
        except ConfigError as e:
            return self._rejected(trigger, old, e)
        changed = config_diff(old.config, config)
        self._write_state(text, new.generation)
        self.holder.swap(new)
        self.monitor.reloaded(True, new.generation)
        log.info(
            "reload ({trigger}): generation {gen}: {diff}; telling {n} workers",
            trigger=trigger,
            gen=new.generation,
            diff=json.dumps(changed, sort_keys=True),
            n=len(self.workers.running()),
        )
        for line in changed["restart_required"]:  # type: ignore[union-attr]
            log.warn("reload: {change} needs a restart; not applied", change=line)
        reports = await self.workers.reload(new.generation, RELOAD_TIMEOUT)
        failed = [r for r in reports if not r["ok"]]
        for report in failed:
            log.warn(
                "reload ({trigger}): worker {worker} (pid {pid}) {error}",
                trigger=trigger,
                worker=report["worker"],
                pid=report["pid"],
                error=report["error"],
            )
        errors = tuple(
            {"path": f"workers[{r['worker']}]", "message": f"pid {r['pid']}: {r['error']}"}
            for r in failed
        )
        return ReloadResult(
            not failed, new.generation, changed=changed, errors=errors, workers=tuple(reports)
        )

    def _reopen_access_log(self) -> None:
        n = self.workers.signal_all(signal.SIGUSR1)
        log.info("SIGUSR1 forwarded to {n} workers (each reopens the access log)", n=n)

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_workers())

    async def _stop_workers(self) -> None:
        """SIGTERM every worker, and close our copies of the client sockets: they close
        for good as each worker stops listening, so new connections are refused, not
        left waiting for a worker that will never come."""
        stopped = self.workers.stop(SHUTDOWN_GRACE + 5.0)
        for sock in set(self.listeners):
            sock.close()
        for port in self.ports:
            await port.stopListening()
        await stopped
        self.rundir.remove()
        log.info("edgenode stopped")
