"""Origin health (SPEC §10): active checks, passive ejection, and what the balancer skips.

Health is kept per domain and route (`OriginHealth`): the route is the origin's whole
identity (address, port, SNI, verify name, trust, client certificate), so a check goes
out with exactly the TLS settings the traffic uses, by construction: it connects through
the route's own `OriginTLSCreator`, the one the pool uses. This is the point of an edge
built around origin SNI: HAProxy needs a separate `check-sni`, and Envoy's checks cannot
follow a Host-derived SNI.

Rules:
- Origins start up. An active check is one GET of `health_check.path` with
  `Host: <origin_host>` on a connection of its own (never a pooled one, never counted
  against `origin_max_connections`), closed after the answer. Its status must be in
  `expect_status`; a connect, TLS or certificate failure counts with its SPEC §4 code.
  `unhealthy_threshold` failures in a row mark the origin down, `healthy_threshold`
  successes in a row mark it up again. Checks of one origin are `interval` apart, with
  ±10 % jitter so that origins (and edges) do not check in step.
- Passive ejection: `passive.consecutive_failures` real requests in a row that failed to
  connect, to set up TLS, or timed out eject the origin for `ejection_time`; then it is
  tried again (one more failure ejects it again at once).
- The balancer's order is kept, minus the origins that are down or ejected; when that
  leaves nothing, every origin is tried in the usual order: an edge never refuses on
  stale health alone.
- A reload keeps the state of every (domain, route) it keeps, and stops checking the
  rest; health settings that changed apply from the next check.

With `workers` > 1 each worker checks and ejects on its own (checks are per process, as
passive ejection must be: only a process sees its own traffic); the gauge
`edgenode_origin_up` adds them up as the minimum (an origin any worker finds down shows 0).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edgenode.config import HealthCheck, Passive
from edgenode.datapath.headers import Headers
from edgenode.datapath.upstream import UpstreamConnection, connect_origin
from edgenode.errors import ErrorCode, OriginError
from edgenode.reactors import IOriginReactor
from edgenode.routes import OriginRoute
from edgenode.runtime import DomainRuntime, Runtime

log = Logger()

JITTER = 0.1  # each interval is drawn from ±10 % of the configured one
# Real-traffic failures that count towards passive ejection (SPEC §10: connect, TLS,
# timeout); a certificate that does not verify is a TLS failure.
PASSIVE_CODES = frozenset(
    {
        ErrorCode.ORIGIN_CONNECT_FAILED,
        ErrorCode.ORIGIN_TLS_FAILED,
        ErrorCode.ORIGIN_CERT_UNTRUSTED,
        ErrorCode.ORIGIN_CERT_NAME_MISMATCH,
        ErrorCode.ORIGIN_TIMEOUT,
    }
)
USER_AGENT = b"edgenode-health-check"


class HealthListener(Protocol):
    """Who hears of state changes: the `edgenode_origin_up` gauge and the access log.
    `reason` is None when an origin starts being watched (it starts up)."""

    def origin_state(
        self, domain: str, route: OriginRoute, up: bool, reason: str | None
    ) -> None: ...

    def origin_unwatched(self, domain: str, route: OriginRoute) -> None:
        """A reload removed the route (or its domain's health settings): no state left."""


@attrs.define(eq=False)
class OriginHealth:
    """One origin of one domain: up or down, why, and the counts that decide it."""

    domain: str
    route: OriginRoute
    origin_host: bytes
    check: HealthCheck | None
    passive: Passive | None
    up: bool = True
    reason: str | None = None  # why it is down (or last went down)
    changed_at: float | None = None
    last_check: float | None = None
    last_result: str | None = None  # "ok", or the failure
    successes: int = 0  # active checks in a row
    failures: int = 0
    passive_failures: int = 0  # real requests in a row
    ejected_until: float = 0.0
    timer: Any = None  # the next check's DelayedCall
    running: _Check | None = None

    def available(self, now: float) -> bool:
        return self.up and now >= self.ejected_until

    def describe(self, now: float) -> dict[str, object]:
        ejected = now < self.ejected_until
        return {
            "origin": self.route.label,
            "sni": self.route.sni,
            "state": "up" if self.up and not ejected else "down",
            "reason": self.reason if not self.up or ejected else None,
            "ejected_for_seconds": round(self.ejected_until - now, 3) if ejected else None,
            "last_check": self.last_check,
            "last_check_result": self.last_result,
            "consecutive_check_failures": self.failures,
            "consecutive_request_failures": self.passive_failures,
        }


class Health:
    """Every watched origin's health, the checks that move it, and the order it gives."""

    def __init__(
        self,
        reactor: IOriginReactor,
        listener: HealthListener,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.listener = listener
        self.jitter = jitter
        self._states: dict[tuple[str, tuple[object, ...]], OriginHealth] = {}
        self._stopped = False

    # -- configuration ----------------------------------------------------------

    def apply(self, runtime: Runtime) -> None:
        """Watch the origins of `runtime`'s domains that have health settings; keep the
        state of each (domain, route) that stays, forget (and stop checking) the rest."""
        wanted: dict[tuple[str, tuple[object, ...]], OriginHealth] = {}
        for name, domain in runtime.domains.items():
            settings = domain.config
            if settings.health_check is None and settings.passive is None:
                continue
            for route in domain.routes:
                key = (name, route.pool_key)
                state = self._states.pop(key, None)
                if state is None:
                    state = OriginHealth(name, route, domain.origin_host, None, None)
                    self.listener.origin_state(name, route, True, None)
                state.route = route  # the same identity, this generation's object
                state.origin_host = domain.origin_host
                state.check = settings.health_check
                state.passive = settings.passive
                wanted[key] = state
        for gone in self._states.values():
            self._stop_checking(gone)
            self.listener.origin_unwatched(gone.domain, gone.route)
        self._states = wanted
        for state in wanted.values():
            if state.check is None:
                self._stop_checking(state)
            elif state.timer is None and state.running is None and not self._stopped:
                self._schedule(state, first=True)

    def stop(self) -> None:
        self._stopped = True
        for state in self._states.values():
            self._stop_checking(state)

    # -- the data path's questions ----------------------------------------------

    def order(self, domain: DomainRuntime, plan: list[OriginRoute]) -> list[OriginRoute]:
        """`plan` without the origins that are down; all of them if none is left."""
        now = self.clock.seconds()
        name = domain.config.name
        states = self._states
        usable = []
        for route in plan:
            state = states.get((name, route.pool_key))
            if state is None or state.available(now):
                usable.append(route)
        return usable or plan

    def attempt_done(self, domain: str, route: OriginRoute, err: OriginError | None) -> None:
        """A real request's attempt on `route` ended (passive ejection)."""
        state = self._states.get((domain, route.pool_key))
        if state is None or state.passive is None:
            return
        if err is None:
            state.passive_failures = 0
            return
        if err.code not in PASSIVE_CODES:
            return
        state.passive_failures += 1
        if state.passive_failures < state.passive.consecutive_failures:
            return
        state.passive_failures = 0
        now = self.clock.seconds()
        already = now < state.ejected_until
        state.ejected_until = now + state.passive.ejection_time
        if already:
            return
        state.reason = (
            f"ejected for {state.passive.ejection_time:g}s after "
            f"{state.passive.consecutive_failures} failed requests in a row "
            f"(last: {err.code.value}: {err.detail})"
        )
        if state.up:  # one already down by its checks stays reported as such
            self._report(state, up=False, reason=state.reason)
        self.clock.callLater(state.passive.ejection_time, self._ejection_over, state)

    def describe(self, domain: str) -> list[dict[str, object]] | None:
        """Each watched origin of `domain`, as GET /domains/<name> shows it."""
        now = self.clock.seconds()
        states = [s.describe(now) for (name, _), s in self._states.items() if name == domain]
        return states or None

    def states(self) -> Iterable[OriginHealth]:
        return self._states.values()

    # -- active checks ----------------------------------------------------------

    def _schedule(self, state: OriginHealth, *, first: bool = False) -> None:
        assert state.check is not None
        interval = state.check.interval
        # The first check comes soon, but spread, so a start does not check all at once.
        delay = (
            interval * self.jitter() if first else interval * (1 + JITTER * (2 * self.jitter() - 1))
        )
        state.timer = self.clock.callLater(delay, self._run_check, state)

    def _run_check(self, state: OriginHealth) -> None:
        state.timer = None
        if (
            state.check is None
            or self._states.get((state.domain, state.route.pool_key)) is not state
        ):
            return
        state.running = _Check(self.reactor, state, partial(self._check_done, state))
        state.running.start()

    def _check_done(self, state: OriginHealth, failure: str | None) -> None:
        state.running = None
        state.last_check = self.clock.seconds()
        state.last_result = failure or "ok"
        check = state.check
        if self._states.get((state.domain, state.route.pool_key)) is not state or check is None:
            return  # removed by a reload while it ran
        if failure is None:
            state.successes += 1
            state.failures = 0
            if not state.up and state.successes >= check.healthy_threshold:
                state.up = True
                state.reason = None
                self._report(state, up=True, reason=f"{state.successes} checks in a row succeeded")
        else:
            state.failures += 1
            state.successes = 0
            if state.up and state.failures >= check.unhealthy_threshold:
                state.up = False
                state.reason = f"{state.failures} checks in a row failed: {failure}"
                self._report(state, up=False, reason=state.reason)
        if not self._stopped:
            self._schedule(state)

    def _ejection_over(self, state: OriginHealth) -> None:
        if self._states.get((state.domain, state.route.pool_key)) is not state:
            return
        if self.clock.seconds() < state.ejected_until:
            return  # ejected again meanwhile; that ejection's own call comes later
        if state.up:
            state.reason = None
            self._report(state, up=True, reason="ejection time over; traffic goes there again")

    def _report(self, state: OriginHealth, *, up: bool, reason: str) -> None:
        """An origin went down or came back: the twistd log and the gauge say so."""
        state.changed_at = self.clock.seconds()
        (log.info if up else log.warn)(
            "origin {state} {origin} of {domain} (SNI {sni}): {reason}",
            state="up" if up else "down",
            origin=state.route.label,
            domain=state.domain,
            sni=state.route.sni or "none",
            reason=reason,
        )
        self.listener.origin_state(state.domain, state.route, up, reason)

    def _stop_checking(self, state: OriginHealth) -> None:
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None
        if state.running is not None:
            state.running.cancel()
            state.running = None


class _Check:
    """One active check: its own connection over the route's TLS settings, one GET, the
    verdict (None = healthy, else why not). It is its connection's owner (no pool)."""

    def __init__(
        self, reactor: IOriginReactor, state: OriginHealth, done: Callable[[str | None], None]
    ) -> None:
        assert state.check is not None
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.state = state
        self.check = state.check
        self._done: Callable[[str | None], None] | None = done
        self._conn: UpstreamConnection | None = None
        self._status = 0
        self._timer: Any = None

    def start(self) -> None:
        route, timeout = self.state.route, self.check.timeout
        tls = route.creator.facts() if route.creator is not None else None
        conn = UpstreamConnection(self, route, self.clock.seconds(), timeout, tls)
        self._conn = conn
        conn.wait_for_ready(self)
        self._timer = self.clock.callLater(timeout, self._timed_out)
        connect_origin(self.reactor, conn, timeout)

    def cancel(self) -> None:
        self._done = None
        self._end()

    # -- ConnectionOwner --------------------------------------------------------

    def release(self, conn: UpstreamConnection) -> None:
        conn.close_idle()

    def connection_closed(self, conn: UpstreamConnection) -> None:
        """Nothing to account for: a check holds no pool slot."""

    # -- ConnectionWaiter -------------------------------------------------------

    def connection_ready(self, conn: UpstreamConnection) -> None:
        head = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n" % (
            self.check.path.encode("ascii"),
            self.state.origin_host,
            USER_AGENT,
        )
        conn.send_request(head, self, head_only=False)

    def connection_failed(self, err: OriginError) -> None:
        self._finish(f"{err.code.value}: {err.detail}")

    # -- ResponseListener -------------------------------------------------------

    def response_head(
        self, status: int, reason: bytes, headers: Headers, length: int | None
    ) -> None:
        self._status = status

    def response_body(self, data: bytes) -> None:
        """The body does not matter."""

    def read_done(self) -> None:
        """Nothing to relay."""

    def response_end(self) -> None:
        status = self._status
        if self.check.expects(status):
            self._finish(None)
        else:
            low, high = self.check.expect_status
            expected = str(low) if low == high else f"{low}-{high}"
            self._finish(f"status {status}, expected {expected}")

    def response_failed(self, err: OriginError) -> None:
        self._finish(f"{err.code.value}: {err.detail}")

    # -- ending -----------------------------------------------------------------

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(f"{ErrorCode.ORIGIN_TIMEOUT.value}: no answer within {self.check.timeout:g}s")

    def _finish(self, failure: str | None) -> None:
        done, self._done = self._done, None
        self._end()
        if done is not None:
            done(failure)

    def _end(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abandon()
            if conn.transport is not None:
                conn.abort()
