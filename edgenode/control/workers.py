"""Worker processes: a supervisor binds the client listener once and N workers serve it.

With `workers: N` (N > 1) the twistd process is a supervisor. It serves no client: it
binds `listen`, spawns N workers (`twistd edgenode --worker STATE`, each a `WorkerService`:
the edge's data path on its socket), restarts a worker that dies, forwards SIGUSR1, stops
them with SIGTERM, and runs the one admin API. A reload is validated here first and only
then announced to every worker, which answers on its control channel.

Per worker process: fd 0 carries the supervisor's commands (one JSON object a line),
fd 3 the worker's answers and events, fd 2 its twistd log (one event a line, which the
supervisor writes into its own log with the worker's number and pid), fd 1 is the
supervisor's stdout (for `access_log: "-"`), and fd 4 its listening socket.
A worker whose control channel closes (the supervisor is gone) stops as on SIGTERM.

The config a worker runs is the text the supervisor validated, with its generation, in
the state file (`RunDir.state`): whatever happens to the config file later, a restarted
worker starts on exactly what the others run. Metrics: each worker publishes its counts
once a second, and a last time when it stops, into prometheus-client's multiprocess files
under `RunDir.metrics`; the supervisor's /metrics adds them up (`WorkerMetrics`). The run
directory is made fresh per run and removed at stop.

How the workers share the port: one listening socket per worker, all bound by the
supervisor with SO_REUSEPORT (one group), each inherited by its worker as fd 4 and
adopted with `adoptStreamPort` (non-blocking). The alternative, one socket inherited by
every worker, was measured against it on this 2-core machine (`bench/workers_spread.py`:
2 workers, plain-HTTP nginx origin, 1 KiB answers; the busiest worker's share of the
requests, 8 runs each):

    scenario                          inherited socket          SO_REUSEPORT group
    wrk, 32 keep-alive connections    52-78 %, and 100 % in     50-59 %
                                      2 of 8 runs (one worker
                                      took all 32 connections)
    wrk, 32 conns, a new one per      51-62 %                   50-51 %
    request (Connection: close)
    one client, 1000 sequential       51-58 %                   50-54 %
    new connections

With one shared socket every worker's epoll wakes for a new connection and Twisted's
accept loop takes all that are queued, so a burst (wrk opening its 32 connections) can
land on one worker and stay there for as long as the connections live. SO_REUSEPORT
hashes each connection to one socket of the group, so the spread is even whatever the
timing; it ignores how busy a worker is, which matters little when workers are alike.

Binding the whole group in the supervisor, rather than in each worker, keeps what the
shared socket had: all binding happens once, at start, before twistd drops privileges
(`-u`), and a port in use stops the start; a worker that dies leaves its socket open
here, so the connections the kernel queued on it wait for its successor (restarted after
0.5 s, doubling up to 30 s while it keeps dying young) instead of being reset.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    formatEventAsClassicLogText,
)
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from edgenode.config import Config, apply_overrides, parse_config
from edgenode.datapath.monitor import supervisor_families
from edgenode.endpoints import ServerEndpoint
from edgenode.reactors import IEdgeReactor

log = Logger()

CONTROL_IN_FD = 0  # worker's stdin: the supervisor's commands
CONTROL_OUT_FD = 3  # the worker's answers and events
LOG_FD = 2  # the worker's twistd log
LISTEN_FD = 4  # the worker's listening socket

RELOAD_TIMEOUT = 5.0  # seconds a worker has to confirm a reload
STARTUP_TIMEOUT = 30.0  # ... or, one still starting (Python and twistd take a while)
RESTART_DELAY = 0.5  # first restart delay; doubles per quick death, up to the maximum
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long died "late": restart it quickly again
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed worker to be reaped
MAX_LINE = 65536  # a longer line from a worker is cut there

# twistd has no `python -m` entry point; this runs what the console script runs.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

# How the workers share the port (see the module docstring): "reuseport" (one socket per
# worker in one SO_REUSEPORT group), or "inherit" (one socket for all), kept only so that
# bench/workers_spread.py can measure both.
SHARE = os.environ.get("EDGENODE_WORKER_SHARE", "reuseport")


# --- The run directory and the state file ----------------------------------------------------


@attrs.frozen
class WorkerState:
    """What a worker starts (and reloads) from: the config the supervisor validated."""

    generation: int
    text: str  # the YAML text the supervisor validated
    source: str  # the config file it came from: relative paths are relative to it
    overrides: Mapping[str, str]
    family: socket.AddressFamily  # of the listening socket on LISTEN_FD

    def config(self) -> Config:
        """The config, parsed as the supervisor parsed it; raises `ConfigError`."""
        config = parse_config(self.text, base_dir=Path(self.source).parent, source=self.source)
        return apply_overrides(config, self.overrides)


class RunDir:
    """The supervisor's directory for one run: the state file and the metrics files."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="edgenode-"))
        self.state = self.path / "state.json"
        self.metrics = self.path / "metrics"
        self.metrics.mkdir()

    def write_state(self, state: WorkerState) -> None:
        """Replace the state file whole (a worker starting right now reads old or new)."""
        data = {
            "generation": state.generation,
            "text": state.text,
            "source": state.source,
            "overrides": dict(state.overrides),
            "family": int(state.family),
        }
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_state(path: str | Path) -> WorkerState:
    data = json.loads(Path(path).read_text())
    return WorkerState(
        generation=data["generation"],
        text=data["text"],
        source=data["source"],
        overrides=data["overrides"],
        family=socket.AddressFamily(data["family"]),
    )


# --- The listening socket --------------------------------------------------------------------


def bind_listeners(
    listen: ServerEndpoint, count: int, *, share: str = SHARE
) -> list[socket.socket]:
    """The client listener (a tcp:/tcp6: endpoint), bound here (before twistd drops
    privileges), one socket per worker: with "reuseport" `count` sockets in one SO_REUSEPORT
    group, so the kernel spreads new connections evenly over them; with "inherit" one
    socket, `count` times.

    A worker that dies leaves its socket here: connections the kernel queued on it wait
    for its replacement instead of being reset.
    """
    interface, port, backlog = listen.interface, listen.port, listen.backlog
    # The config refuses workers on any other kind, and a TCP endpoint has all three.
    assert listen.is_tcp and interface is not None and port is not None and backlog is not None
    if share != "reuseport":
        return [_bind(listen.family, (interface, port), backlog, reuseport=False)] * count
    sockets = [_bind(listen.family, (interface, port), backlog, reuseport=True)]
    try:
        port = sockets[0].getsockname()[1]  # the port the kernel chose, for `tcp:0`
        for _ in range(count - 1):
            sockets.append(_bind(listen.family, (interface, port), backlog, reuseport=True))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind(
    family: socket.AddressFamily, address: tuple[str, int], backlog: int, *, reuseport: bool
) -> socket.socket:
    """A listening socket as Twisted makes one (SO_REUSEADDR), but non-blocking from the
    start: a worker's reactor must never block in accept(), where no signal reaches it."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def adopt_listener(
    reactor: IEdgeReactor, family: socket.AddressFamily, factory: Any
) -> IListeningPort:
    """The worker's client listener: the socket the supervisor passed as LISTEN_FD."""
    os.set_blocking(LISTEN_FD, False)  # it is already; a blocking one would hang the worker
    try:
        port: IListeningPort = reactor.adoptStreamPort(LISTEN_FD, family, factory)
        return port
    finally:
        os.close(LISTEN_FD)  # the port holds its own duplicate


# --- The worker's end of the control channel -------------------------------------------------


Answer = dict[str, Any] | defer.Deferred[dict[str, Any]]  # a reload's answer comes when done


class ControlChannel(LineOnlyReceiver):
    """A worker's end: commands in on fd 0, answers and events out on fd 3, JSON lines.

    Each command is answered once its handler's answer is there (at once, or when its
    Deferred fires), with the command's id.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(
        self, handle: Callable[[dict[str, Any]], Answer], lost: Callable[[], None]
    ) -> None:
        self._handle = handle
        self._lost = lost

    def lineReceived(self, line: bytes) -> None:
        message: Any = None
        answer: defer.Deferred[dict[str, Any]]
        try:
            message = json.loads(line)
            handled = self._handle(message)
        except Exception:
            answer = defer.fail()
        else:
            answer = handled if isinstance(handled, defer.Deferred) else defer.succeed(handled)

        def failed(failure: Failure) -> dict[str, Any]:
            log.failure("control command {line!r} failed", failure, line=line[:200])
            return {"ok": False, "errors": [{"path": "", "message": "the worker failed"}]}

        def send(result: dict[str, Any]) -> None:
            self.send({**result, "id": message.get("id") if isinstance(message, dict) else None})

        answer.addErrback(failed).addCallback(send)

    def send(self, message: dict[str, Any]) -> None:
        self.sendLine(json.dumps(message).encode())

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost()


def open_control_channel(reactor: IEdgeReactor, channel: ControlChannel) -> StandardIO:
    # On POSIX StandardIO takes the descriptors; mypy reads the Windows signature.
    return StandardIO(  # type: ignore[call-arg]
        channel, stdin=CONTROL_IN_FD, stdout=CONTROL_OUT_FD, reactor=reactor
    )


def worker_log_observer() -> ILogObserver:
    """twistd `--logger` for workers: one event a line on stderr, without a timestamp (the
    supervisor's log adds its own). Continuation lines of an event start with a tab."""

    def format_event(event: dict[str, Any]) -> str | None:
        text = formatEventAsClassicLogText(event, formatTime=lambda _: "")
        return text.lstrip(" ") if text else None

    return FileLogObserver(sys.stderr, format_event)


# --- The supervisor's end: one worker process ------------------------------------------------


class WorkerGone(Exception):
    """The worker exited before it answered."""


class WorkerProcess(protocol.ProcessProtocol):
    """The supervisor's end of one worker: its commands, its log lines, its exit."""

    def __init__(
        self,
        number: int,
        reactor: IEdgeReactor,
        ended: Callable[[WorkerProcess, Failure], None],
    ) -> None:
        self.number = number
        self.reactor = reactor
        self.started = reactor.seconds()
        self.pid: int | None = None
        self.ready = False
        self.generation: int | None = None
        self._ended = ended
        self._ids = itertools.count(1)
        self._pending: dict[int, defer.Deferred[dict[str, Any]]] = {}
        self._partial = {LOG_FD: b"", CONTROL_OUT_FD: b""}
        self._level = LogLevel.info  # of the last event line: continuation lines share it

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def command(self, message: dict[str, Any], timeout: float) -> defer.Deferred[dict[str, Any]]:
        """Send `message`; the Deferred fires with the answer, or fails (timeout, exit)."""
        request_id = next(self._ids)

        def forget(result: Any) -> Any:
            self._pending.pop(request_id, None)
            return result

        answer: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._pending[request_id] = answer
        line = json.dumps({**message, "id": request_id}).encode() + b"\n"
        self.transport.writeToChild(CONTROL_IN_FD, line)  # type: ignore[union-attr]
        answer.addTimeout(timeout, self.reactor)
        return answer.addBoth(forget)

    def signal(self, signum: int) -> None:
        """Send `signum`; nothing if it has exited already."""
        with contextlib.suppress(error.ProcessExitedAlready, OSError, AttributeError):
            self.transport.signalProcess(signum)  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._partial:
            return
        lines = (self._partial[childFD] + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:  # no newline in sight: cut it, bounded memory
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for line in lines:
            if childFD == CONTROL_OUT_FD:
                self._message(line)
            else:
                self._log_line(line.decode("utf-8", "replace"))

    def _message(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warn(
                "worker {worker}: not a control message: {line!r}",
                worker=self.number,
                line=line[:200],
            )
            return
        if not isinstance(message, dict):
            return
        if message.get("event") == "ready":
            self.ready = True
            self.generation = message.get("generation")
            log.info(
                "worker {worker} (pid {pid}) ready on generation {gen}",
                worker=self.number,
                pid=self.pid,
                gen=self.generation,
            )
            return
        pending = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if pending is not None:
            if message.get("ok"):
                self.generation = message.get("generation", self.generation)
            pending.callback(message)

    def _log_line(self, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("["):
            system, _, _ = line[1:].partition("]")
            level_name = system.rpartition("#")[2]
            try:
                self._level = LogLevel.levelWithName(level_name)
            except Exception:  # InvalidLogLevelError: a foreign line
                self._level = LogLevel.info
        log.emit(
            self._level,
            "worker {worker} (pid {pid}): {line}",
            worker=self.number,
            pid=self.pid,
            line=line,
        )

    def processEnded(self, reason: Failure) -> None:
        if self._partial[LOG_FD]:  # its last words, without a newline
            self._log_line(self._partial[LOG_FD].decode("utf-8", "replace"))
        pending, self._pending = list(self._pending.values()), {}
        for answer in pending:
            answer.errback(WorkerGone())
        self._ended(self, reason)


def describe_exit(reason: Failure) -> str:
    """'exited with status 1', 'was killed by SIGKILL', ..."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


# --- The supervisor's end: the pool ----------------------------------------------------------


class WorkerPool:
    """N worker processes: started, restarted when one dies, signalled, reloaded, stopped."""

    def __init__(
        self,
        reactor: IEdgeReactor,
        count: int,
        argv: list[str],
        env: Mapping[str, str],
        metrics_dir: Path,
        listen_fds: list[int],
    ) -> None:
        self.reactor = reactor
        self.argv = argv
        self.env = dict(env)
        self.metrics_dir = metrics_dir
        self.listen_fds = listen_fds  # one per worker, which each successor inherits too
        self.workers: list[WorkerProcess | None] = [None] * count
        self.restarts = [0] * count
        self._quick_deaths = [0] * count
        self._timers: dict[int, Any] = {}
        self._retiring: set[WorkerProcess] = set()  # replaced, still draining
        self._all_ended: list[defer.Deferred[None]] = []  # stop()'s waits, not fired yet
        self.stopping = False

    def start(self) -> None:
        for index in range(len(self.workers)):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._timers.pop(index, None)
        if self.stopping:
            return
        worker = WorkerProcess(index + 1, self.reactor, self._ended)
        fds: dict[int, int | str] = {CONTROL_IN_FD: "w", 1: 1, LOG_FD: "r", CONTROL_OUT_FD: "r"}
        fds[LISTEN_FD] = self.listen_fds[index]
        try:
            self.reactor.spawnProcess(worker, self.argv[0], self.argv, env=self.env, childFDs=fds)
        except OSError as exc:
            log.error("worker {worker} could not be started: {exc}", worker=index + 1, exc=exc)
            self._schedule(index, self._next_delay(index, quick=True))
            return
        self.workers[index] = worker
        log.info("worker {worker} started (pid {pid})", worker=index + 1, pid=worker.pid)

    def _ended(self, worker: WorkerProcess, reason: Failure) -> None:
        index = worker.number - 1
        if self.workers[index] is worker:
            self.workers[index] = None
        if worker.pid is not None:
            mark_process_dead(worker.pid, str(self.metrics_dir))
        how = describe_exit(reason)
        if self.stopping or worker in self._retiring:
            self._retiring.discard(worker)
            log.info(
                "worker {worker} (pid {pid}) {how}", worker=worker.number, pid=worker.pid, how=how
            )
            if not self.running():
                waiting, self._all_ended = self._all_ended, []
                for ended in waiting:
                    ended.callback(None)
            return
        quick = self.reactor.seconds() - worker.started < STABLE_AFTER
        delay = self._next_delay(index, quick=quick)
        self.restarts[index] += 1
        log.warn(
            "worker {worker} (pid {pid}) {how}; restarting it in {delay:.1f}s",
            worker=worker.number,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self._schedule(index, delay)

    def _next_delay(self, index: int, *, quick: bool) -> float:
        self._quick_deaths[index] = self._quick_deaths[index] + 1 if quick else 0
        return min(RESTART_DELAY * 2 ** max(0, self._quick_deaths[index] - 1), RESTART_DELAY_MAX)

    def _schedule(self, index: int, delay: float) -> None:
        self._timers[index] = self.reactor.callLater(delay, self._spawn, index)

    def replace(self, worker: WorkerProcess, signum: int) -> WorkerProcess | None:
        """Start a successor for `worker` now (on the state file's generation), and send
        `worker` `signum` (SIGTERM: it drains; SIGKILL: it is hung)."""
        index = worker.number - 1
        if self.workers[index] is not worker:
            return self.workers[index]  # it exited meanwhile; the usual restart follows
        self.workers[index] = None
        self._retiring.add(worker)
        worker.signal(signum)
        self.restarts[index] += 1
        self._spawn(index)
        return self.workers[index]

    def running(self) -> list[WorkerProcess]:
        """Every worker process alive, the replaced ones still draining included."""
        return [w for w in self.workers if w is not None] + list(self._retiring)

    def signal_all(self, signum: int) -> int:
        running = self.running()
        for worker in running:
            worker.signal(signum)
        return len(running)

    async def reload(self, generation: int, timeout: float) -> list[dict[str, Any]]:
        """Tell every running worker to reload, and wait (bounded) for every answer.

        A worker that rejects the new generation is replaced at once (a successor starts
        on the state file, it drains), one that does not answer is killed and replaced:
        every worker ends up on the supervisor's generation. Returns one report per worker.
        """
        reports: list[dict[str, Any]] = [
            {"worker": index + 1, "pid": None, "ok": True, "restarting": True}
            for index, worker in enumerate(self.workers)
            if worker is None  # it starts from the state file, on the new generation
        ]
        running = [w for w in self.workers if w is not None]
        limits = [timeout if w.ready else max(timeout, STARTUP_TIMEOUT) for w in running]
        asked = [w.command({"cmd": "reload"}, t) for w, t in zip(running, limits, strict=True)]
        outcomes = await defer.DeferredList(asked, consumeErrors=True)
        for worker, limit, (answered, outcome) in zip(running, limits, outcomes, strict=True):
            report: dict[str, Any] = {"worker": worker.number, "pid": worker.pid}
            # DeferredList gives (True, result) or (False, Failure).
            answer: dict[str, Any] = outcome if answered else {}
            if answered and answer.get("ok") and (answer.get("generation") or 0) >= generation:
                report.update(ok=True, generation=answer["generation"])
            elif answered or not cast(Failure, outcome).check(WorkerGone):
                if answered:
                    errors = answer.get("errors") or []
                    detail = "; ".join(f"{e.get('path')}: {e.get('message')}" for e in errors)
                    problem = f"rejected generation {generation} ({detail or 'no detail'})"
                else:
                    problem = f"did not answer within {limit:g}s"
                successor = self.replace(worker, signal.SIGTERM if answered else signal.SIGKILL)
                new_pid = successor.pid if successor is not None else None
                report.update(ok=False, error=f"{problem}; replaced by pid {new_pid}")
            else:
                report.update(ok=False, error="exited before it answered; it restarts")
            reports.append(report)
        return sorted(reports, key=lambda r: r["worker"])

    def stop(self, grace: float) -> defer.Deferred[None]:
        """SIGTERM every worker (each drains as a single edge does) and restart none;
        SIGKILL any still running after `grace` seconds. Fires when all are reaped."""
        self.stopping = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self.signal_all(signal.SIGTERM)
        return defer.Deferred.fromCoroutine(self._reap(grace))

    async def _reap(self, grace: float) -> None:
        if await self._all_ended_within(grace):
            return
        for worker in self.running():
            log.warn(
                "worker {worker} (pid {pid}) still running {grace:g}s after SIGTERM; killing it",
                worker=worker.number,
                pid=worker.pid,
                grace=grace,
            )
            worker.signal(signal.SIGKILL)
        await self._all_ended_within(KILL_WAIT)

    async def _all_ended_within(self, timeout: float) -> bool:
        """Whether every worker process has ended (been reaped) within `timeout` seconds."""
        if not self.running():
            return True
        ended: defer.Deferred[None] = defer.Deferred(self._forget_wait)
        self._all_ended.append(ended)
        ended.addTimeout(timeout, self.reactor)
        try:
            await ended
        except defer.TimeoutError:
            return False
        return True

    def _forget_wait(self, ended: defer.Deferred[None]) -> None:
        if ended in self._all_ended:
            self._all_ended.remove(ended)

    def describe(self, requests_of: Callable[[int], int]) -> list[dict[str, Any]]:
        now = self.reactor.seconds()
        out: list[dict[str, Any]] = []
        for index, worker in enumerate(self.workers):
            if worker is None:
                out.append(
                    {
                        "worker": index + 1,
                        "pid": None,
                        "ready": False,
                        "restarts": self.restarts[index],
                    }
                )
                continue
            out.append(
                {
                    "worker": worker.number,
                    "pid": worker.pid,
                    "ready": worker.ready,
                    "generation": worker.generation,
                    "up_seconds": round(now - worker.started, 1),
                    "restarts": self.restarts[index],
                    "requests": requests_of(worker.pid) if worker.pid is not None else 0,
                }
            )
        return out


def worker_argv(state: Path, reactor_name: str | None) -> list[str]:
    """The command line of a worker: this Python, its warning options, twistd, the plugin."""
    argv = [sys.executable, *(f"-W{option}" for option in sys.warnoptions), "-c", TWISTD]
    argv += ["-n", "--pidfile=", "--logger", f"{__name__}.worker_log_observer"]
    if reactor_name:
        argv += ["--reactor", reactor_name]
    return [*argv, "edgenode", "--worker", str(state)]


# --- Metrics over all workers ----------------------------------------------------------------


class WorkerMetrics:
    """The supervisor's /metrics: its own registry, then the workers' files added up (each
    worker publishes its counts there once a second, `Monitor.publish`)."""

    def __init__(self, own: Callable[[], bytes], directory: Path) -> None:
        self._own = own
        self.directory = directory
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerFiles(directory))

    def render(self) -> bytes:
        return self._own() + generate_latest(self.registry)

    def requests_of(self, pid: int) -> int:
        """Requests the worker with this pid answered (its own counter file)."""
        path = self.directory / f"counter_{pid}.db"
        if not path.exists():
            return 0
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
            if metric.name == "edgenode_requests":
                total += sum(s.value for s in metric.samples if s.name == "edgenode_requests_total")
        return int(total)


class _WorkerFiles:
    """The workers' multiprocess files added up, with the request-duration histogram rebuilt
    from what the workers published of it (`supervisor_families`)."""

    def __init__(self, directory: Path) -> None:
        self._files = MultiProcessCollector(None, path=str(directory))

    def collect(self) -> Iterator[Metric]:
        return supervisor_families(self._files.collect())
