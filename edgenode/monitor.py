"""What operators watch: Prometheus metrics and the operational events of the twistd log.

Label values come only from the config (domain names, origin addresses, SNI values)
or from fixed sets (status classes, error codes): a client can never create a series.
Hosts that match no domain count under `domain="_unknown"`.

With `workers` > 1 the numbers live in several processes. Each worker counts its traffic
in prometheus-client's multiprocess files (the supervisor sets PROMETHEUS_MULTIPROC_DIR
for it); the supervisor counts reloads and the generation itself, and its /metrics adds
the workers' files up (`edgenode.workers.WorkerMetrics`). Hence the three kinds of
process a `Monitor` is made for.
"""

from __future__ import annotations

from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.logger import Logger

from edgenode.accesslog import AccessRecord
from edgenode.errors import ErrorCode, OriginError
from edgenode.tls import CertFacts
from edgenode.upstream import OriginPool, OriginRoute

log = Logger()

UNKNOWN_DOMAIN = "_unknown"
_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
CERT_FAILURE_LOG_INTERVAL = 60.0  # at most one verification-failure line per origin+SNI per minute

# How a failed connection setup shows in edgenode_origin_tls_handshakes_total{result}.
_HANDSHAKE_RESULT = {
    ErrorCode.ORIGIN_CERT_NAME_MISMATCH: "name_mismatch",
    ErrorCode.ORIGIN_CERT_UNTRUSTED: "untrusted",
    ErrorCode.ORIGIN_TLS_FAILED: "failed",
}


class _Children:
    """labels() of one metric, memoised: prometheus-client's lookup costs a few µs a call."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


Process = Literal["single", "supervisor", "worker"]


class Monitor:
    """Counts what the proxy does and says what operators must hear about, once.

    `process` "single" counts everything; a "worker" counts traffic only (its pool gauges
    sampled each second by `sample_pool`, as nobody can ask it at scrape time); a
    "supervisor" counts config reloads and the generation only.
    """

    def __init__(
        self, clock: Any, pool: OriginPool | None = None, *, process: Process = "single"
    ) -> None:
        self.clock = clock
        self.process = process
        self.registry = CollectorRegistry(auto_describe=True)
        # A supervisor serves no traffic: its traffic metrics stay out of its registry, so
        # that they appear once in /metrics, summed from the workers' files.
        r = None if process == "supervisor" else self.registry
        self.requests = Counter(
            "edgenode_requests", "Client requests answered", ["domain", "status_class"], registry=r
        )
        self.duration = Histogram(
            "edgenode_request_duration_seconds",
            "Time from request head to the end of the response",
            ["domain"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.attempts = Counter(
            "edgenode_origin_attempts",
            "Back-to-origin attempts by outcome (ok or an error code)",
            ["domain", "origin", "outcome"],
            registry=r,
        )
        self.handshakes = Counter(
            "edgenode_origin_tls_handshakes",
            "TLS handshakes with origins by result",
            ["domain", "origin", "sni", "result"],
            registry=r,
        )
        self.reused = Counter(
            "edgenode_origin_connections_reused",
            "Requests sent on a pooled connection (no new handshake)",
            ["domain", "origin"],
            registry=r,
        )
        self.cert_expiry = Gauge(
            "edgenode_origin_cert_expiry_timestamp_seconds",
            "notAfter of the certificate an origin presented at the last handshake",
            ["domain", "origin", "sni"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        if process != "worker":  # a worker's reloads are the supervisor's to count
            self.generation = Gauge(
                "edgenode_config_generation",
                "Generation of the running config",
                registry=self.registry,
            )
            self.reloads = Counter(
                "edgenode_config_reloads",
                "Config reloads by result",
                ["result"],
                registry=self.registry,
            )
        self._pool_gauges: _PoolGauges | None = None
        if pool is not None and process == "worker":
            self._pool_gauges = _PoolGauges(pool, self.registry)
        elif pool is not None:
            self.registry.register(_PoolCollector(pool))
        self._requests = _Children(self.requests)
        self._duration = _Children(self.duration)
        self._attempts = _Children(self.attempts)
        self._reused = _Children(self.reused)
        self._failing: dict[tuple[str, int], str] = {}  # origin server -> first error seen
        self._cert_log_next: dict[tuple[str, str | None], tuple[float, int]] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sample_pool(self) -> None:
        """A worker's open and idle origin connections, written where the supervisor reads."""
        if self._pool_gauges is not None:
            self._pool_gauges.sample()

    # -- per request --------------------------------------------------------------

    def request_done(self, record: AccessRecord) -> None:
        domain = record.domain or UNKNOWN_DOMAIN
        status = record.status or 0
        self._requests(domain, _STATUS_CLASS.get(status // 100, "none")).inc()
        self._duration(domain).observe(record.duration_ms / 1000.0)

    def connection_used(
        self, domain: str, route: OriginRoute, *, reused: bool, peer: CertFacts | None
    ) -> None:
        """A request got a ready connection: a reuse, or a fresh handshake that verified."""
        if reused:
            self._reused(domain, route.label).inc()
        elif route.tls:
            sni = route.sni or ""
            self.handshakes.labels(domain, route.label, sni, "ok").inc()
            if peer is not None:
                self.cert_expiry.labels(domain, route.label, sni).set(peer.not_after_ts)
        self._recovered(route)

    def attempt_done(self, domain: str, route: OriginRoute, err: OriginError | None) -> None:
        self._attempts(domain, route.label, "ok" if err is None else err.code.value).inc()
        if err is None:
            self._recovered(route)
        else:
            self._failing_now(route, err)

    def setup_failed(
        self, domain: str, route: OriginRoute, err: OriginError, peer: CertFacts | None
    ) -> None:
        """Connecting or the handshake failed: count it, and tell the log (rate limited)."""
        if not route.tls:
            return
        result = _HANDSHAKE_RESULT.get(err.code)
        if result is None and err.code is ErrorCode.ORIGIN_TIMEOUT and "TLS" in err.detail:
            result = "timeout"
        if result is None:
            return  # TCP never connected: not a handshake
        sni = route.sni or ""
        self.handshakes.labels(domain, route.label, sni, result).inc()
        if peer is not None:
            self.cert_expiry.labels(domain, route.label, sni).set(peer.not_after_ts)
        if err.code in (ErrorCode.ORIGIN_CERT_NAME_MISMATCH, ErrorCode.ORIGIN_CERT_UNTRUSTED):
            self._log_cert_failure(domain, route, err)

    # -- config -------------------------------------------------------------------

    def started(self, generation: int) -> None:
        if self.process != "worker":
            self.generation.set(generation)

    def reloaded(self, ok: bool, generation: int) -> None:
        if self.process != "worker":
            self.reloads.labels("ok" if ok else "rejected").inc()
            self.generation.set(generation)

    # -- events -------------------------------------------------------------------

    def _failing_now(self, route: OriginRoute, err: OriginError) -> None:
        if err.code is ErrorCode.ORIGIN_BUSY or route.server in self._failing:
            return
        self._failing[route.server] = err.code.value
        log.warn(
            "origin {origin} marked failing: {error}: {detail}",
            origin=route.label,
            error=err.code.value,
            detail=err.detail,
        )

    def _recovered(self, route: OriginRoute) -> None:
        if self._failing.pop(route.server, None) is not None:
            log.info("origin {origin} recovered", origin=route.label)

    def _log_cert_failure(self, domain: str, route: OriginRoute, err: OriginError) -> None:
        key = (route.label, route.sni)
        now = self.clock.seconds()
        next_at, suppressed = self._cert_log_next.get(key, (0.0, 0))
        if now < next_at:
            self._cert_log_next[key] = (next_at, suppressed + 1)
            return
        self._cert_log_next[key] = (now + CERT_FAILURE_LOG_INTERVAL, 0)
        log.warn(
            "certificate verification failed for {domain} at {origin} (SNI {sni}, verify name "
            "{verify_name}): {error}: {detail}{suppressed}",
            domain=domain,
            origin=route.label,
            sni=route.sni or "none",
            verify_name=route.verify_name,
            error=err.code.value,
            detail=err.detail,
            suppressed=f" ({suppressed} more since the last report)" if suppressed else "",
        )


class _PoolCollector:
    """Open and idle origin connections, read from the pool at scrape time."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        open_ = GaugeMetricFamily(
            "edgenode_origin_connections_open", "Open origin connections", labels=["origin"]
        )
        idle = GaugeMetricFamily(
            "edgenode_origin_connections_idle", "Idle pooled origin connections", labels=["origin"]
        )
        for (address, port), count in sorted(self.pool.open_by_server().items()):
            open_.add_metric([_label(address, port)], count)
        for (address, port), count in sorted(self.pool.idle_by_server().items()):
            idle.add_metric([_label(address, port)], count)
        yield open_
        yield idle


class _PoolGauges:
    """The same two gauges for a worker: `livesum`, so /metrics adds up the live workers."""

    def __init__(self, pool: OriginPool, registry: CollectorRegistry) -> None:
        self.pool = pool
        self.open = Gauge(
            "edgenode_origin_connections_open",
            "Open origin connections",
            ["origin"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.idle = Gauge(
            "edgenode_origin_connections_idle",
            "Idle pooled origin connections",
            ["origin"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._known: dict[str, set[str]] = {"open": set(), "idle": set()}

    def sample(self) -> None:
        for which, gauge, counts in (
            ("open", self.open, self.pool.open_by_server()),
            ("idle", self.idle, self.pool.idle_by_server()),
        ):
            now = {_label(address, port): n for (address, port), n in counts.items()}
            known = self._known[which]
            for label in known - now.keys():  # gone from the pool: a file keeps the last value
                gauge.labels(label).set(0)
            for label, n in now.items():
                gauge.labels(label).set(n)
            known |= now.keys()


def _label(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
