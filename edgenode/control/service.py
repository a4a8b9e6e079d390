"""twistd `Options` and `makeService`, and the three services they make: the only module of
the edge that touches the global reactor (the command-line tools run theirs through
`task.react`).

Three services, each a plain twisted `Service` composed of the same pieces, none a kind
of another:

    EdgeService        DataPath + Reloader(ConfigFile -> DataPath)  + admin site + Signals
    WorkerService      DataPath + Reloader(StateFile  -> DataPath)  + control channel + Signals
    SupervisorService  Workers  + Reloader(ConfigFile -> Workers)   + admin site + Signals

- `DataPath` (edgenode.control.serving): what serves clients (runtime holder, origin pool,
  access log, monitor, proxy, client factory) and its drain on stop.
- `Workers` (edgenode.control.supervisor): the supervisor's worker processes on the
  sockets it bound, their run directory and metrics.
- `Reloader` (edgenode.control.reloading): the one reload flow (read, build whole, swap,
  log, confirm), whose answer is a Deferred[ReloadResult] in every service; its source
  says where the next config comes from (`ConfigFile`, `StateFile`), its target applies
  what the runtime does not carry (`DataPath`, `Workers`).
- the control channel (edgenode.control.worker): a worker's commands from its supervisor.
- `Signals` (edgenode.control.signals): the process's signals.
- `admin_site`, `listen` (here): the admin site on the config's token, and a listener
  that must bind before twistd goes on.
- `ClusterSource` (edgenode.control.cluster), for a fleet edge (`cluster.etcd`, SPEC §9),
  in an edge or a supervisor, never in a worker: read from etcd here, in `makeService`,
  before the reactor runs (so that no etcd and no cache exits 1 like a config error); it
  then wraps the reload's source (the file's settings, the cluster's domains) and target,
  and makes each etcd change a reload of its own.
"""

from __future__ import annotations

import gc
import os
import random
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from edgenode import speedups
from edgenode.config import Config, apply_overrides, load_config_and_text, workers_count
from edgenode.control.admin import (
    AdminResource,
    AdminSite,
    ClusterView,
    ReloadResult,
    ensure_token,
)
from edgenode.control.cluster import ClusterSource, ClusterStartError, read_start, read_token
from edgenode.control.etcd import EtcdClient, IEtcdReactor
from edgenode.control.reloading import (
    ConfigFile,
    ConfigSource,
    Reloader,
    ReloadTarget,
    StateFile,
)
from edgenode.control.serving import DataPath
from edgenode.control.signals import Signals
from edgenode.control.statefile import WorkerState, read_state
from edgenode.control.supervisor import Workers, bind_listeners
from edgenode.control.worker import (
    ControlChannel,
    adopt_listener,
    adopt_tls_listener,
    open_control_channel,
)
from edgenode.datapath.monitor import Monitor
from edgenode.endpoints import parse_server_endpoint
from edgenode.errors import ConfigError
from edgenode.reactors import IEdgeReactor, edge_reactor
from edgenode.runtime import RuntimeHolder, build_runtime

log = Logger()

SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish on SIGTERM


class Options(usage.Options):
    synopsis = (
        "(--config FILE | --demo) [--listen ENDPOINT] [--listen-tls ENDPOINT] "
        "[--admin-listen ENDPOINT] [--workers N]"
    )
    longdesc = (
        "A CDN edge node: HTTP/1.1 clients in, HTTPS back-to-origin with the origin SNI "
        "each domain names. See README.md and etc/edgenode.yaml."
    )
    optFlags = [
        [
            "demo",
            None,
            "Run a self-contained demo: a local TLS origin, three domains, HTTP and HTTPS "
            "listeners (127.0.0.1:8080 and :8443 unless --listen / --listen-tls).",
        ],
    ]
    optParameters = [
        ["config", "c", None, "The YAML config file (see etc/edgenode.yaml)."],
        ["listen", None, None, "Client-facing endpoint, overriding the config's `listen`."],
        [
            "listen-tls",
            None,
            None,
            "HTTPS endpoint (tcp:PORT), overriding the config's `listen_tls`; needs "
            "tls.certificates.",
        ],
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
    if options["listen-tls"]:
        overrides["listen_tls"] = options["listen-tls"]
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

    cluster = None
    if config.cluster is not None:
        cluster = make_cluster(config, cast(IEtcdReactor, global_reactor), text)
        config = cluster.config
    if config.workers > 1:
        twistd_options = getattr(options, "parent", None) or {}
        return SupervisorService(
            config,
            reactor,
            overrides,
            text=text,
            reactor_name=twistd_options.get("reactor"),
            cluster=cluster,
        )
    return EdgeService(config, reactor, overrides, cluster=cluster)


def make_cluster(node: Config, reactor: IEtcdReactor, text: str) -> ClusterSource:
    """A fleet edge's domains (SPEC §9): read from etcd now, blocking, before the reactor
    runs (or from the cache file); with neither, print why and exit 1, as for a config
    error. The source then follows etcd once the service starts."""
    assert node.cluster is not None
    settings = node.cluster.etcd
    try:
        start = read_start(node)
    except ClusterStartError as e:
        print(f"edgenode: not starting: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    # The client keeps to the endpoint that answered last, starting with the first: in a
    # random order, a fleet's long-lived watches spread over the members instead of all
    # landing on the first one listed.
    endpoints = random.sample(settings.endpoints, len(settings.endpoints))
    client = EtcdClient(reactor, endpoints, token=read_token(settings))
    return ClusterSource(reactor, client, settings, start, text=text)


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
    """SPEC §7 (and §8's Demo): the same EdgeService, on a config built in memory, beside a
    local origin."""
    from twisted.internet import reactor as global_reactor

    reactor = edge_reactor(global_reactor)

    from edgenode.control import demo  # certificates and an origin: only the demo needs them

    twistd_options = getattr(options, "parent", None)
    try:
        demo_service = demo.DemoService(
            reactor,
            listen=options["listen"] or demo.DEMO_LISTEN,
            listen_tls=options["listen-tls"] or demo.DEMO_LISTEN_TLS,
            admin_listen=options["admin-listen"] or demo.DEMO_ADMIN_LISTEN,
            echo=not demo.log_reaches_stdout(twistd_options),
        )
    except ConfigError as e:  # e.g. a bad --listen or --listen-tls
        print(f"edgenode: not starting the demo: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    EdgeService(demo_service.config, reactor).setServiceParent(demo_service)
    return demo_service


# --- Shared by the services: admin site, listeners -------------------------------------------


def admin_site(
    config: Config,
    holder: RuntimeHolder,
    reload: Callable[[str], defer.Deferred[ReloadResult]],
    *,
    metrics: Callable[[], bytes],
    workers: Callable[[], list[dict[str, Any]]] | None = None,
    health: Callable[[str], list[dict[str, object]] | None] | None = None,
    cluster: ClusterView | None = None,
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
    return AdminSite(
        AdminResource(
            holder, token, reload, metrics=metrics, workers=workers, health=health, cluster=cluster
        )
    )


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


def listen_tls(data: DataPath, description: str, ports: list[IListeningPort]) -> None:
    """The HTTPS listener (SPEC §8) on a socket bound here (the TLS transport accepts on it
    itself, tlstransport.py), added to `ports`; a failure to bind raises as `listen` does."""
    endpoint = parse_server_endpoint(description)
    try:
        (sock,) = bind_listeners(endpoint, 1, share="inherit")
    except OSError as e:
        raise CannotListenError(endpoint.interface, endpoint.port, e) from None
    ports.append(data.listen_tls(sock))


def https_note(config: Config) -> str:
    """For the start line: the HTTPS listener and its certificates, if any."""
    if config.listen_tls is None:
        return ""
    names = ", ".join(cert.label for cert in config.tls.certificates)
    return f" and HTTPS on {config.listen_tls} ({names})"


def _bind_or_exit(description: str, workers: int) -> list[socket.socket]:
    """The supervisor's sockets for one tcp: listener, one per worker; exit 1 if taken."""
    try:
        return bind_listeners(parse_server_endpoint(description), workers)
    except OSError as e:
        print(f"edgenode: not starting: cannot listen on {description}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def reload_pieces(
    file: ConfigFile, target: ReloadTarget, cluster: ClusterSource | None
) -> tuple[ConfigSource, ReloadTarget]:
    """Where a reload reads the next config and what it updates: the file and `target`;
    for a fleet edge, the file's node-local settings with the cluster's domains, and
    `target` with the cluster told what runs."""
    if cluster is None:
        return file, target
    return cluster.file_source(file), cluster.target(target)


async def stop_listening(ports: list[IListeningPort]) -> None:
    for port in ports:
        await defer.maybeDeferred(port.stopListening)


def start_serving(reactor: IEdgeReactor, data: DataPath, reloader: Reloader) -> Signals:
    """What an edge and a worker do alike once started: serve, and answer the signals
    (installed once the reactor runs), with the heap frozen after start-up."""
    data.start()
    # Compiled or pure Python, and why (speedups.py): the first thing to know about CPU use.
    log.info("data path: {implementation}", implementation=speedups.describe())
    signals = Signals(reactor, reload=reloader.reload_logged, reopen=data.reopen_access_log)
    reactor.callWhenRunning(signals.install)
    reactor.callWhenRunning(_freeze_heap)
    return signals


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
        self,
        config: Config,
        reactor: IEdgeReactor,
        overrides: Mapping[str, str] | None = None,
        *,
        cluster: ClusterSource | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.overrides = dict(overrides or {})
        self.cluster = cluster  # a fleet edge's domains from etcd (SPEC §9)
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        config = self.config
        self.data = DataPath(config, self.reactor, process="single", generation=1)
        source, target = reload_pieces(
            ConfigFile(config.source, self.overrides), self.data, self.cluster
        )
        self.reloader = Reloader(self.data.holder, self.data.monitor, source, target)
        if self.cluster is not None:
            self.cluster.attach(self.reloader, self.data.monitor.registry)
        admin = admin_site(
            config,
            self.data.holder,
            self.reloader.reload,
            metrics=self.data.monitor.render,
            health=self.data.health.describe,
            cluster=self.cluster,
        )
        listen(self.reactor, config.listen, self.data.factory, self.ports)
        if config.listen_tls is not None:
            listen_tls(self.data, config.listen_tls, self.ports)
        listen(self.reactor, config.admin.listen, admin, self.ports)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.signals = start_serving(self.reactor, self.data, self.reloader)
        runtime = self.data.holder.current
        log.info(
            "edgenode started: listening on {listen}{https}, admin on {admin}, {n} domains "
            "({names}), generation {gen}, access log {access_log}",
            listen=self.config.listen,
            https=https_note(self.config),
            admin=self.config.admin.listen,
            n=len(runtime.domains),
            names=", ".join(sorted(runtime.domains)),
            gen=runtime.generation,
            access_log=self.config.access_log,
        )
        if self.cluster is not None:
            self.cluster.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to a bound), then close."""
        if self.cluster is not None:
            await self.cluster.stop()  # no new generation while draining
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
        if self.state.tls_family is not None:
            sock = adopt_tls_listener(self.state.tls_family)
            self.ports.append(self.data.listen_tls(sock))
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.signals = start_serving(self.reactor, self.data, self.reloader)
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
    every worker must confirm it (edgenode.control.supervisor). SIGHUP reloads the same way,
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
        cluster: ClusterSource | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.overrides = dict(overrides)
        self.text = text
        self.reactor_name = reactor_name
        self.cluster = cluster  # the node's one watch on etcd, for every worker (SPEC §9)
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        config = self.config
        client = parse_server_endpoint(config.listen)
        assert client.is_tcp  # apply_overrides refused any other endpoint
        self.holder = RuntimeHolder(build_runtime(config, generation=1))
        self.monitor = Monitor(self.reactor, process="supervisor")
        self.monitor.started(1)
        self.monitor.serving_certificates(config.tls.certificates)
        listeners = _bind_or_exit(config.listen, config.workers)
        tls_listeners = (
            _bind_or_exit(config.listen_tls, config.workers) if config.listen_tls else []
        )
        self.workers = Workers(
            self.reactor,
            config,
            self.overrides,
            listeners,
            client.family,
            text=self.text,
            reactor_name=self.reactor_name,
            tls_listeners=tls_listeners,
            tls_family=parse_server_endpoint(config.listen_tls).family
            if config.listen_tls
            else None,
            domains=self.cluster.domain_set if self.cluster is not None else None,
        )
        source, target = reload_pieces(
            ConfigFile(config.source, self.overrides), self.workers, self.cluster
        )
        self.reloader = Reloader(self.holder, self.monitor, source, target)
        if self.cluster is not None:
            self.cluster.attach(self.reloader, self.monitor.registry)
        admin = admin_site(
            config,
            self.holder,
            self.reloader.reload,
            metrics=self.workers.render_metrics,
            workers=self.workers.describe,
            cluster=self.cluster,
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
            "edgenode supervisor started: {n} workers on {listen}{https}, admin on {admin}, "
            "generation 1, run directory {rundir}",
            n=self.config.workers,
            listen=self.config.listen,
            https=https_note(self.config),
            admin=self.config.admin.listen,
            rundir=str(self.workers.rundir.path),
        )
        if self.cluster is not None:
            self.cluster.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()  # no new generation for workers that are stopping
        stopped = self.workers.stop(SHUTDOWN_GRACE + 5.0)
        await stop_listening(self.ports)
        await stopped
        log.info("edgenode stopped")
