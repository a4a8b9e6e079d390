"""twistd `Options` and `makeService`: the only module of the edge that touches the global
reactor (the command-line tools run theirs through `task.react`).

Three services, each a plain twisted `Service` composed of the same pieces, none a kind
of another:

    EdgeService        DataPath + Reloader(ConfigFile -> DataPath)  + admin site + Signals
    WorkerService      DataPath + Reloader(StateFile  -> DataPath)  + control channel + Signals
    SupervisorService  Workers  + Reloader(ConfigFile -> Workers)   + admin site + Signals

- `DataPath`: what serves clients (runtime holder, origin pool, access log, monitor,
  proxy, client factory) and its drain on stop.
- `Workers`: the supervisor's worker processes, their run directory and metrics.
- `Reloader`: the one reload flow (read, build whole, swap, log, confirm), whose answer is
  a Deferred[ReloadResult] in every service; its source says where the next config comes
  from (`ConfigFile`, `StateFile`), its target applies what the runtime does not carry
  (`DataPath`, `Workers`).
- `admin_site`, `listen_now`, `Signals`: the admin site on the config's token, a listener
  that must bind before twistd goes on, and the process's signals.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from edgenode.accesslog import AccessLog
from edgenode.config import (
    Config,
    apply_overrides,
    load_config_and_text,
    workers_count,
)
from edgenode.control.admin import (
    AdminResource,
    AdminSite,
    ReloadResult,
    ensure_token,
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
from edgenode.datapath.pool import OriginPool
from edgenode.datapath.proxy import Proxy
from edgenode.endpoints import parse_server_endpoint
from edgenode.errors import ConfigError, Problem
from edgenode.reactors import IEdgeReactor, edge_reactor
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
    from twisted.internet import reactor as global_reactor

    reactor = edge_reactor(global_reactor)

    if config.workers > 1:
        twistd_options = getattr(options, "parent", None) or {}
        return SupervisorService(
            config, reactor, overrides, text=text, reactor_name=twistd_options.get("reactor")
        )
    return EdgeService(config, reactor, overrides)


def make_worker_service(state_path: str) -> service.IService:
    """One worker of a supervisor, on the config (and generation) of its state file."""
    from twisted.internet import reactor as global_reactor

    reactor = edge_reactor(global_reactor)

    try:
        state = read_state(state_path)
        config = state.config()
    except (OSError, ValueError, KeyError, ConfigError) as e:
        print(f"edgenode: worker not starting: state {state_path}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    return WorkerService(config, reactor, state, Path(state_path))


def make_demo_service(options: Options) -> service.IService:
    """SPEC §7: the same EdgeService, on a config built in memory, beside a local origin."""
    from twisted.internet import reactor as global_reactor

    reactor = edge_reactor(global_reactor)

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


# --- Where a reload reads the next config ----------------------------------------------------


@attrs.frozen
class Candidate:
    """The config a reload would apply: parsed and validated, its generation, its text."""

    config: Config
    generation: int
    text: str  # the YAML the config came from: a supervisor hands it to its workers


class ConfigSource(Protocol):
    def next(self, old: Runtime) -> Candidate:
        """The config to replace `old` with; raises `ConfigError`."""
        ...


class ConfigFile:
    """An edge's or a supervisor's: the config file it started on, with the command line's
    overrides on top, as the next generation."""

    def __init__(self, source: Path | None, overrides: Mapping[str, str]) -> None:
        self.source = source
        self.overrides = overrides

    def next(self, old: Runtime) -> Candidate:
        if self.source is None:
            raise ConfigError([Problem("", "the running config has no file to re-read")])
        config, text = load_config_and_text(self.source)
        return Candidate(apply_overrides(config, self.overrides), old.generation + 1, text)


class StateFile:
    """A worker's: the state file its supervisor wrote, on the supervisor's generation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def next(self, old: Runtime) -> Candidate:
        try:
            state = read_state(self.path)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError([Problem("", f"cannot read the state file: {e}")]) from None
        return Candidate(state.config(), state.generation, state.text)


# --- The reload flow -------------------------------------------------------------------------

Errors = tuple[dict[str, str], ...]  # ReloadResult.errors
Reports = tuple[dict[str, Any], ...]  # ReloadResult.workers


class ReloadTarget(Protocol):
    """What a reload updates besides the runtime holder: a data path, or the workers."""

    restart_note: str  # what becomes of a change that needs a restart, for the log

    def stage(self, candidate: Candidate) -> None:
        """Before the swap: whatever must be in place once the new generation is current."""
        ...

    def applied(self, new: Runtime, old: Runtime) -> str:
        """After the swap: apply what the runtime does not carry; say what was done."""
        ...

    async def confirmed(self, trigger: str, generation: int) -> tuple[Errors, Reports]:
        """Whether every process now runs `generation`: the errors, each worker's report."""
        ...


class Reloader:
    """The one reload flow (POST /reload, SIGHUP, a supervisor's command): read the next
    config, build all of it, swap it in whole, then have the target apply and confirm it.

    Everything is built before the swap (parse, validate, CA files, TLS contexts), so a
    config that fails anywhere changes nothing. The flow runs at once up to the target's
    confirmation (which only a supervisor waits for), so in an edge or a worker reloads
    are serialised by the reactor.
    """

    def __init__(
        self, holder: RuntimeHolder, monitor: Monitor, source: ConfigSource, target: ReloadTarget
    ) -> None:
        self.holder = holder
        self.monitor = monitor
        self.source = source
        self.target = target

    def reload(self, trigger: str) -> defer.Deferred[ReloadResult]:
        """Reload; the Deferred fires with the outcome, applied or not (never fails for a
        bad config: that is a ReloadResult that is not `ok`)."""
        return defer.Deferred.fromCoroutine(self._reload(trigger))

    def reload_logged(self, trigger: str) -> None:
        """A reload nobody waits for (SIGHUP): its outcome goes to the log, a bug too."""
        self.reload(trigger).addErrback(lambda f: log.failure("reload failed", f))

    async def _reload(self, trigger: str) -> ReloadResult:
        old = self.holder.current
        try:
            candidate = self.source.next(old)
            new = build_runtime(candidate.config, candidate.generation, previous=old)
        except ConfigError as e:
            return self._rejected(trigger, old, e)
        changed = config_diff(old.config, candidate.config)
        self.target.stage(candidate)
        self.holder.swap(new)
        self.monitor.reloaded(True, new.generation)
        done = self.target.applied(new, old)
        log.info(
            "reload ({trigger}): generation {gen}: {diff}; {done}",
            trigger=trigger,
            gen=new.generation,
            diff=json.dumps(changed, sort_keys=True),
            done=done,
        )
        for line in cast(list[str], changed["restart_required"]):
            log.warn(
                "reload: {change} needs a restart; {note}",
                change=line,
                note=self.target.restart_note,
            )
        errors, workers = await self.target.confirmed(trigger, new.generation)
        return ReloadResult(
            not errors, new.generation, changed=changed, errors=errors, workers=workers
        )

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


# --- What serves clients: an edge's, or a worker's -------------------------------------------


class DataPath:
    """The serving machinery of an edge or a worker: runtime holder, origin pool, access log,
    monitor, proxy and the client factory. As a reload's target it applies the limits, the
    access log and the pool's routes; on stop it drains."""

    restart_note = "still serving on the old listener"

    def __init__(
        self, config: Config, reactor: IEdgeReactor, *, process: Process, generation: int
    ) -> None:
        self.reactor = reactor
        self.holder = RuntimeHolder(build_runtime(config, generation=generation))
        self.pool = OriginPool(
            reactor,
            max_per_server=config.limits.origin_max_connections,
            queue_timeout=config.limits.origin_queue_timeout,
        )
        self.access_log = AccessLog(config.access_log)
        self.monitor = Monitor(reactor, self.pool, process=process)
        self.monitor.started(generation)
        self.proxy = Proxy(self.holder, self.pool, self.access_log, reactor, self.monitor)
        self.factory = DownstreamFactory(self.proxy, config.limits, reactor)

    def start(self) -> None:
        self.pool.start()
        self.access_log.start(self.reactor)

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
        self.pool.stop()
        self.access_log.close()


# --- The supervisor's workers ----------------------------------------------------------------


class Workers:
    """A supervisor's worker processes on the sockets it bound, their run directory (state
    file, metrics files) and their metrics added up. As a reload's target it writes the new
    state file before the swap, then has every worker apply it and confirm."""

    restart_note = "not applied"

    def __init__(
        self,
        reactor: IEdgeReactor,
        config: Config,
        overrides: Mapping[str, str],
        listeners: list[socket.socket],
        family: socket.AddressFamily,
        *,
        text: str,
        reactor_name: str | None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.overrides = overrides
        self.listeners = listeners
        self.family = family
        self.text = text
        self.reactor_name = reactor_name

    def start(self, monitor: Monitor) -> None:
        """Make the run directory, write generation 1's state and start every worker."""
        self.rundir = RunDir()
        self._write_state(self.text, 1)
        self.metrics = WorkerMetrics(monitor.render, self.rundir.metrics)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.rundir.metrics)}
        self.pool = WorkerPool(
            self.reactor,
            self.config.workers,
            worker_argv(self.rundir.state, self.reactor_name),
            env,
            self.rundir.metrics,
            listen_fds=[sock.fileno() for sock in self.listeners],
        )
        self.pool.start()

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

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def describe(self) -> list[dict[str, Any]]:
        return self.pool.describe(self.metrics.requests_of)

    def reopen_access_logs(self) -> None:
        n = self.pool.signal_all(signal.SIGUSR1)
        log.info("SIGUSR1 forwarded to {n} workers (each reopens the access log)", n=n)

    def stage(self, candidate: Candidate) -> None:
        """The state file first: a worker (re)starting from now on starts on the new config."""
        self._write_state(candidate.text, candidate.generation)

    def applied(self, new: Runtime, old: Runtime) -> str:
        return f"telling {len(self.pool.running())} workers"

    async def confirmed(self, trigger: str, generation: int) -> tuple[Errors, Reports]:
        """Every worker must apply it: any that rejects it or does not answer is a failure."""
        reports = await self.pool.reload(generation, RELOAD_TIMEOUT)
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
        return errors, tuple(reports)

    def stop(self, grace: float) -> defer.Deferred[None]:
        """SIGTERM every worker, and close our copies of the client sockets: they close for
        good as each worker stops listening, so new connections are refused, not left
        waiting for a worker that will never come. Fires once every worker is reaped (after
        SIGKILL for any still running after `grace`) and the run directory is gone."""
        reaped = self.pool.stop(grace)
        for sock in set(self.listeners):
            sock.close()
        return defer.Deferred.fromCoroutine(self._remove_after(reaped))

    async def _remove_after(self, reaped: defer.Deferred[None]) -> None:
        await reaped
        self.rundir.remove()


# --- Shared by the services: admin site, listeners, signals ----------------------------------


def admin_site(
    config: Config,
    holder: RuntimeHolder,
    reload: Callable[[str], defer.Deferred[ReloadResult]],
    *,
    metrics: Callable[[], bytes],
    workers: Callable[[], list[dict[str, Any]]] | None = None,
) -> AdminSite:
    """The admin site on the config's token file (made if missing); warns when hosts other
    than this one can reach it."""
    try:
        token = ensure_token(config.admin.token_file)
    except (OSError, ValueError) as e:
        print(f"edgenode: not starting: admin token: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if not parse_server_endpoint(config.admin.listen).is_loopback:
        log.warn(
            "admin API listens on {listen}, which is not loopback-only; "
            "it is protected by the token in {path} alone",
            listen=config.admin.listen,
            path=str(config.admin.token_file),
        )
    return AdminSite(AdminResource(holder, token, reload, metrics=metrics, workers=workers))


def listen(
    reactor: IEdgeReactor, description: str, factory: IProtocolFactory, ports: list[IListeningPort]
) -> None:
    """Listen on `description`, adding the port to `ports`; a failure to bind (a port in
    use) raises here and now: twistd must not start."""
    failures: list[Failure] = []
    parse_server_endpoint(description).listen(reactor, factory).addCallbacks(
        ports.append, failures.append
    )
    if failures:
        failures[0].raiseException()


async def stop_listening(ports: list[IListeningPort]) -> None:
    for port in ports:
        await defer.maybeDeferred(port.stopListening)


class Signals:
    """A process's signals: SIGHUP reloads; SIGTERM/SIGINT stop gracefully and exit 0;
    SIGUSR1 reopens the access log, and still rotates twistd's own --logfile.

    Twisted's handlers make twistd re-raise the stop signal at exit (status -15), which an
    init system reads as a crash; a requested stop is not one. Handlers only schedule work:
    they may run between any two bytecodes of reactor code.
    """

    def __init__(
        self, reactor: IEdgeReactor, *, reload: Callable[[str], None], reopen: Callable[[], None]
    ) -> None:
        self.reactor = reactor
        self._reload = reload
        self._reopen = reopen
        self._stopping = False
        self._twistd_usr1: Any = None

    def install(self) -> None:
        """Once the reactor runs (it installs Twisted's own handlers): ours replace them."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop_requested)
        signal.signal(signal.SIGHUP, self._reload_requested)
        self._twistd_usr1 = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, self._reopen_requested)

    def stop(self, why: str) -> None:
        """Stop the process, once: Ctrl-C signals a supervisor's workers too, and then the
        supervisor does."""
        if self._stopping:
            return
        self._stopping = True
        log.info("edgenode stopping on {signal}", signal=why)
        self.reactor.stop()

    def _stop_requested(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.stop, signal.Signals(signum).name)

    def _reload_requested(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reload, "SIGHUP")

    def _reopen_requested(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reopen)
        if callable(self._twistd_usr1):
            self._twistd_usr1(signum, frame)


def _freeze_heap() -> None:
    """What is alive once running (modules, config, TLS contexts: most of the heap) lives as
    long as the process: out of the collector's way, a full collection costs milliseconds
    less (py-spy had the collector at ~3 % of the CPU under load)."""
    gc.freeze()


# --- The services ----------------------------------------------------------------------------


class EdgeService(service.Service):
    """The edge (`workers: 1`): client listener, admin site, reload; drains on stop."""

    name = "edgenode"  # type: ignore[assignment]  # twisted types Service.name as None

    def __init__(
        self, config: Config, reactor: IEdgeReactor, overrides: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.overrides = dict(overrides or {})
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        config = self.config
        self.data = DataPath(config, self.reactor, process="single", generation=1)
        self.reloader = Reloader(
            self.data.holder,
            self.data.monitor,
            ConfigFile(config.source, self.overrides),
            self.data,
        )
        admin = admin_site(
            config, self.data.holder, self.reloader.reload, metrics=self.data.monitor.render
        )
        listen(self.reactor, config.listen, self.data.factory, self.ports)
        listen(self.reactor, config.admin.listen, admin, self.ports)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.data.start()
        self.signals = Signals(
            self.reactor, reload=self.reloader.reload_logged, reopen=self.data.reopen_access_log
        )
        self.reactor.callWhenRunning(self.signals.install)
        self.reactor.callWhenRunning(_freeze_heap)
        runtime = self.data.holder.current
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

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to a bound), then close."""
        await stop_listening(self.ports)
        await self.data.drain(SHUTDOWN_GRACE)
        log.info("edgenode stopped")


class WorkerService(service.Service):
    """One worker under a supervisor (`workers` > 1): the data path on the shared listener.

    It has no admin API (the supervisor's is the only one), reloads to the supervisor's
    state file when told to on its control channel (or on SIGHUP), and stops when the
    control channel closes: a worker never outlives its supervisor.
    """

    name = "edgenode"  # type: ignore[assignment]  # twisted types Service.name as None

    def __init__(
        self, config: Config, reactor: IEdgeReactor, state: WorkerState, state_path: Path
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.state = state
        self.state_path = state_path
        self.ports: list[IListeningPort] = []
        self._publisher: task.LoopingCall | None = None

    def privilegedStartService(self) -> None:
        self.data = DataPath(
            self.config, self.reactor, process="worker", generation=self.state.generation
        )
        self.reloader = Reloader(
            self.data.holder, self.data.monitor, StateFile(self.state_path), self.data
        )
        self.ports.append(adopt_listener(self.reactor, self.state.family, self.data.factory))
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.data.start()
        self.signals = Signals(
            self.reactor, reload=self.reloader.reload_logged, reopen=self.data.reopen_access_log
        )
        self.reactor.callWhenRunning(self.signals.install)
        self.reactor.callWhenRunning(_freeze_heap)
        log.info(
            "edgenode worker started (pid {pid}): serving {listen}, generation {gen}",
            pid=os.getpid(),
            listen=self.config.listen,
            gen=self.data.holder.current.generation,
        )
        # Each second: the counts of the last second and the pool gauges, to the files the
        # supervisor's /metrics reads (a worker cannot be asked at scrape time).
        self._publisher = task.LoopingCall(self._publish)
        self._publisher.clock = self.reactor
        self._publisher.start(1.0)
        self.channel = ControlChannel(self._command, self._supervisor_gone)
        open_control_channel(self.reactor, self.channel)
        self.channel.send({"event": "ready", "generation": self.data.holder.current.generation})

    def _publish(self) -> None:
        try:
            self.data.monitor.publish()
        except Exception:
            # A failing write (a full /tmp) must not stop publishing for good: a LoopingCall
            # that raises never runs again, and /metrics would silently freeze.
            log.failure("publishing this worker's metrics failed; trying again in a second")

    def _command(self, message: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        if message.get("cmd") != "reload":
            problem = {"path": "", "message": f"unknown command {message.get('cmd')!r}"}
            return defer.succeed({"ok": False, "errors": [problem]})
        return self.reloader.reload("supervisor").addCallback(
            lambda result: {
                "ok": result.ok,
                "generation": result.generation,
                "errors": list(result.errors),
            }
        )

    def _supervisor_gone(self) -> None:
        if self.running:
            self.signals.stop("the supervisor's control channel closing")

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            await stop_listening(self.ports)
            await self.data.drain(SHUTDOWN_GRACE)
            log.info("edgenode stopped")
        finally:
            # Publishing goes on while requests drain, and once more after the last of them:
            # what a worker counted before SIGTERM reaches /metrics.
            if self._publisher is not None and self._publisher.running:
                self._publisher.stop()
            self.data.monitor.publish()


class SupervisorService(service.Service):
    """`workers` > 1: binds the client listener, runs the workers on it, has the admin API.

    It serves no client itself. Its config is the truth: a reload is validated here
    (parsed, CA files read, TLS contexts built) before any worker hears of it, and then
    every worker must confirm it (edgenode.control.workers). SIGHUP reloads the same way,
    SIGUSR1 is forwarded to every worker (each reopens its access log), SIGTERM stops
    every worker gracefully, then this process exits 0.
    """

    name = "edgenode"  # type: ignore[assignment]  # twisted types Service.name as None

    def __init__(
        self,
        config: Config,
        reactor: IEdgeReactor,
        overrides: Mapping[str, str],
        *,
        text: str,
        reactor_name: str | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.overrides = dict(overrides)
        self.text = text
        self.reactor_name = reactor_name
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        config = self.config
        client = parse_server_endpoint(config.listen)
        assert client.is_tcp  # apply_overrides refused any other endpoint
        self.holder = RuntimeHolder(build_runtime(config, generation=1))
        self.monitor = Monitor(self.reactor, process="supervisor")
        self.monitor.started(1)
        try:
            listeners = bind_listeners(client, config.workers)
        except OSError as e:
            print(f"edgenode: not starting: cannot listen on {config.listen}: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        self.workers = Workers(
            self.reactor,
            config,
            self.overrides,
            listeners,
            client.family,
            text=self.text,
            reactor_name=self.reactor_name,
        )
        self.reloader = Reloader(
            self.holder, self.monitor, ConfigFile(config.source, self.overrides), self.workers
        )
        admin = admin_site(
            config,
            self.holder,
            self.reloader.reload,
            metrics=self.workers.render_metrics,
            workers=self.workers.describe,
        )
        listen(self.reactor, config.admin.listen, admin, self.ports)
        super().privilegedStartService()

    def startService(self) -> None:
        """Start the workers: after twistd dropped privileges (`-u`/`-g`), so that the
        workers, which run as that user too, can use the run directory."""
        super().startService()
        self.workers.start(self.monitor)
        self.signals = Signals(
            self.reactor,
            reload=self.reloader.reload_logged,
            reopen=self.workers.reopen_access_logs,
        )
        self.reactor.callWhenRunning(self.signals.install)
        log.info(
            "edgenode supervisor started: {n} workers on {listen}, admin on {admin}, "
            "generation 1, run directory {rundir}",
            n=self.config.workers,
            listen=self.config.listen,
            admin=self.config.admin.listen,
            rundir=str(self.workers.rundir.path),
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        stopped = self.workers.stop(SHUTDOWN_GRACE + 5.0)
        await stop_listening(self.ports)
        await stopped
        log.info("edgenode stopped")
