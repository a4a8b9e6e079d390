"""A process's signals (`Signals`): SIGHUP reloads, SIGTERM and SIGINT stop it gracefully
with exit status 0, SIGUSR1 reopens the access log (a supervisor's workers reopen theirs).
Each service installs one when the reactor runs."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from edgenode.reactors import IEdgeReactor

log = Logger()


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
