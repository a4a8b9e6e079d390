"""The supervisor (`workers: N`, N > 1): the client listener bound once, N workers serving
it, and the reload target that has every worker apply and confirm a new config (`Workers`).

With `workers: N` the twistd process is a supervisor. It serves no client: it binds
`listen`, spawns N workers (`twistd edgenode --worker STATE`, each a `WorkerService`: the
edge's data path on its socket), restarts a worker that dies, forwards SIGUSR1, stops
them with SIGTERM, and runs the one admin API. A reload is validated here first and only
then announced to every worker, which answers on its control channel. `Workers` is that
piece as `SupervisorService` composes it: the run directory and its state file
(edgenode.control.statefile), the worker processes (edgenode.control.workerpool) and
their metrics added up (edgenode.control.workermetrics).

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

import os
import signal
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from edgenode.config import Config
from edgenode.control.domainset import DomainSet
from edgenode.control.reloading import Candidate, Errors, Reports
from edgenode.control.statefile import RunDir, WorkerState
from edgenode.control.worker import worker_argv
from edgenode.control.workermetrics import WorkerMetrics
from edgenode.control.workerpool import RELOAD_TIMEOUT, WorkerPool
from edgenode.datapath.monitor import Monitor
from edgenode.endpoints import ServerEndpoint
from edgenode.reactors import IEdgeReactor
from edgenode.runtime import Runtime

log = Logger()

# How the workers share the port (see the module docstring): "reuseport" (one socket per
# worker in one SO_REUSEPORT group), or "inherit" (one socket for all), kept only so that
# bench/workers_spread.py can measure both.
SHARE = os.environ.get("EDGENODE_WORKER_SHARE", "reuseport")


# --- The listening sockets -------------------------------------------------------------------


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
        tls_listeners: list[socket.socket] | None = None,
        tls_family: socket.AddressFamily | None = None,
        domains: DomainSet | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.overrides = overrides
        self.listeners = listeners
        self.family = family
        self.tls_listeners = tls_listeners or []  # the HTTPS listener's (SPEC §8), if any
        self.tls_family = tls_family
        self.text = text
        self.reactor_name = reactor_name
        self.domains = domains  # a fleet's domains from etcd (SPEC §9), for the state file

    def start(self, monitor: Monitor) -> None:
        """Make the run directory, write generation 1's state and start every worker."""
        self.rundir = RunDir()
        self._write_state(self.text, 1, self.domains)
        self.metrics = WorkerMetrics(monitor.render, self.rundir.metrics)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.rundir.metrics)}
        self.pool = WorkerPool(
            self.reactor,
            self.config.workers,
            worker_argv(self.rundir.state, self.reactor_name),
            env,
            self.rundir.metrics,
            listen_fds=[sock.fileno() for sock in self.listeners],
            tls_fds=[sock.fileno() for sock in self.tls_listeners],
        )
        self.pool.start()

    def _write_state(self, text: str, generation: int, domains: DomainSet | None) -> None:
        self.rundir.write_state(
            WorkerState(
                generation=generation,
                text=text,
                source=str(self.config.source),
                overrides=self.overrides,
                family=self.family,
                tls_family=self.tls_family,
                domains=domains,
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
        """The state file first: a worker (re)starting from now on starts on the new config
        (and, in a fleet, on the new domains: the supervisor's one watch feeds them all)."""
        self._write_state(candidate.text, candidate.generation, candidate.domains)

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
        for sock in {*self.listeners, *self.tls_listeners}:
            sock.close()
        return defer.Deferred.fromCoroutine(self._remove_after(reaped))

    async def _remove_after(self, reaped: defer.Deferred[None]) -> None:
        await reaped
        self.rundir.remove()
