"""The supervisor's worker processes: the pool that starts, restarts, signals, reloads and
stops them (`WorkerPool`), and its end of each one (`WorkerProcess`: commands out, answers
and log lines in, the exit).

A worker that dies is restarted after 0.5 s, doubling up to 30 s while it keeps dying
young; its listening socket stays open in the supervisor meanwhile, so the connections
the kernel queued on it wait for its successor (edgenode.control.supervisor). A reload is
announced to every worker and answered on its control channel; a worker that rejects it
or does not answer is replaced, so every worker ends up on the supervisor's generation.
The descriptors, the line format and the command line are the worker's
(edgenode.control.worker).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from prometheus_client.multiprocess import mark_process_dead
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from edgenode.control.worker import (
    CONTROL_IN_FD,
    CONTROL_OUT_FD,
    LISTEN_FD,
    LISTEN_TLS_FD,
    LOG_FD,
    MAX_LINE,
)
from edgenode.reactors import IEdgeReactor

log = Logger()

RELOAD_TIMEOUT = 5.0  # seconds a worker has to confirm a reload
STARTUP_TIMEOUT = 30.0  # ... or, one still starting (Python and twistd take a while)
RESTART_DELAY = 0.5  # first restart delay; doubles per quick death, up to the maximum
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long died "late": restart it quickly again
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed worker to be reaped


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


# --- The pool --------------------------------------------------------------------------------


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
        tls_fds: list[int] | None = None,
    ) -> None:
        self.reactor = reactor
        self.tls_fds = tls_fds or []  # the HTTPS listener's, likewise (none: no HTTPS)
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
        if self.tls_fds:
            fds[LISTEN_TLS_FD] = self.tls_fds[index]
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
