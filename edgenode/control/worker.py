"""A worker process, from its own side: how it is started, its descriptors, its end of the
control channel, its log, and the listening socket it adopts.

A worker is `twistd edgenode --worker STATE` (`worker_argv`), started by its supervisor
(edgenode.control.workerpool) and run as a `WorkerService` (edgenode.control.service) on
the config of the state file (edgenode.control.statefile).

Per worker process: fd 0 carries the supervisor's commands (one JSON object a line),
fd 3 the worker's answers and events, fd 2 its twistd log (one event a line, which the
supervisor writes into its own log with the worker's number and pid), fd 1 is the
supervisor's stdout (for `access_log: "-"`), and fd 4 its listening socket.
A worker whose control channel closes (the supervisor is gone) stops as on SIGTERM.

These descriptors, the line format and the command line are the contract with the
supervisor's end of each worker (`WorkerProcess`), which takes them from here.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.stdio import StandardIO
from twisted.logger import FileLogObserver, ILogObserver, Logger, formatEventAsClassicLogText
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from edgenode.reactors import IEdgeReactor

log = Logger()

CONTROL_IN_FD = 0  # worker's stdin: the supervisor's commands
CONTROL_OUT_FD = 3  # the worker's answers and events
LOG_FD = 2  # the worker's twistd log
LISTEN_FD = 4  # the worker's listening socket
LISTEN_TLS_FD = 5  # the worker's HTTPS listening socket, when there is one (SPEC §8)
MAX_LINE = 65536  # a longer line from a worker is cut there

# twistd has no `python -m` entry point; this runs what the console script runs.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def worker_argv(state: Path, reactor_name: str | None) -> list[str]:
    """The command line of a worker: this Python, its warning options, twistd, the plugin."""
    argv = [sys.executable, *(f"-W{option}" for option in sys.warnoptions), "-c", TWISTD]
    argv += ["-n", "--pidfile=", "--logger", f"{__name__}.worker_log_observer"]
    if reactor_name:
        argv += ["--reactor", reactor_name]
    return [*argv, "edgenode", "--worker", str(state)]


# --- The listening socket it adopts ----------------------------------------------------------


def adopt_listener(
    reactor: IEdgeReactor, family: socket.AddressFamily, factory: Any, fd: int = LISTEN_FD
) -> IListeningPort:
    """A worker's client listener: the socket the supervisor passed as `fd`."""
    os.set_blocking(fd, False)  # it is already; a blocking one would hang the worker
    try:
        port: IListeningPort = reactor.adoptStreamPort(fd, family, factory)
        return port
    finally:
        os.close(fd)  # the port holds its own duplicate


def adopt_tls_listener(family: socket.AddressFamily) -> socket.socket:
    """A worker's HTTPS listener: the socket the supervisor passed as LISTEN_TLS_FD, which
    the TLS transport accepts on itself (tlstransport.TLSListener)."""
    os.set_blocking(LISTEN_TLS_FD, False)  # as adopt_listener
    return socket.socket(family, socket.SOCK_STREAM, fileno=LISTEN_TLS_FD)


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


# --- The worker's log ------------------------------------------------------------------------


def worker_log_observer() -> ILogObserver:
    """twistd `--logger` for workers: one event a line on stderr, without a timestamp (the
    supervisor's log adds its own). Continuation lines of an event start with a tab."""

    def format_event(event: dict[str, Any]) -> str | None:
        text = formatEventAsClassicLogText(event, formatTime=lambda _: "")
        return text.lstrip(" ") if text else None

    return FileLogObserver(sys.stderr, format_event)
