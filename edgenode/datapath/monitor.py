"""What operators watch: Prometheus metrics and the operational events of the twistd log.

Label values come only from the config (domain names, origin addresses, SNI values)
or from fixed sets (status classes, error codes): a client can never create a series.
Hosts that match no domain count under `domain="_unknown"`.

Per-request counts (requests, their durations, origin attempts, reused connections) are
plain dict increments: prometheus-client takes a lock per `inc`, searches the buckets
per `observe`, and in multiprocess mode writes an mmap'd file per update (~4 µs each);
py-spy put ~5 % of the edge's CPU there. A single process shows those counts through
collectors that read them at scrape time, so its /metrics is exact. Rare events
(handshakes, certificate expiry, reloads, the generation) still use prometheus-client's
metrics directly.

With `workers` > 1 the numbers live in several processes. Each worker publishes its
counts once a second (`Monitor.publish`, and a last time when it stops) into
prometheus-client's multiprocess files (the supervisor sets PROMETHEUS_MULTIPROC_DIR for
it); the supervisor counts reloads and the generation itself, and its /metrics adds the
workers' files up (`edgenode.control.workermetrics.WorkerMetrics`, which rebuilds the
duration histogram with `supervisor_families`). Hence the three kinds of process a
`Monitor` is made for.
"""

from __future__ import annotations

import contextlib
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from itertools import accumulate
from typing import Any, Literal, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edgenode.accesslog import AccessRecord
from edgenode.certificates import EdgeCertificate, expiry_warning
from edgenode.datapath.pool import OriginPool
from edgenode.errors import ErrorCode, OriginError
from edgenode.routes import OriginRoute, server_label
from edgenode.tls import CertFacts

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

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BOUNDS = (*map(float, DURATION_BUCKETS), math.inf)  # bisect_left finds a value's bucket
_LE = tuple(floatToGoString(bound) for bound in _BOUNDS)  # the `le` labels, as Histogram's


class Family(NamedTuple):
    """One metric family as /metrics names and describes it."""

    name: str
    help: str
    labels: tuple[str, ...]


REQUESTS = Family("edgenode_requests", "Client requests answered", ("domain", "status_class"))
DURATION = Family(
    "edgenode_request_duration_seconds",
    "Time from request head to the end of the response",
    ("domain",),
)
ATTEMPTS = Family(
    "edgenode_origin_attempts",
    "Back-to-origin attempts by outcome (ok or an error code)",
    ("domain", "origin", "outcome"),
)
REUSED = Family(
    "edgenode_origin_connections_reused",
    "Requests sent on a pooled connection (no new handshake)",
    ("domain", "origin"),
)
# A worker's durations travel to the supervisor as these two: multiprocess files hold
# counters and gauges fine, but a histogram can only be fed one observation at a time.
# `supervisor_families` turns them back into DURATION; /metrics never shows them.
WORKER_DURATION_COUNTS = Family(
    "edgenode_worker_duration_observations",
    "Internal: request durations per histogram bucket (not cumulative), by worker",
    ("domain", "le"),
)
WORKER_DURATION_SUM = Family(
    "edgenode_worker_duration_seconds",
    "Internal: the sum of request durations, by worker",
    ("domain",),
)


def _created_series_wanted() -> bool:
    """prometheus-client's documented switch for `_created` samples, honoured here too."""
    value = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return value.lower() not in ("true", "1", "t")


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


_K = TypeVar("_K", bound=Hashable)


class _Tally(dict[_K, int]):
    """Counts by key: `tally[key] += 1` is one dict lookup and one store. A key's first
    count also notes the time (its series' `_created`), off the common path."""

    __slots__ = ("_clock", "created")

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self._clock = clock
        self.created: dict[_K, float] = {}

    def __missing__(self, key: _K) -> int:
        self.created.setdefault(key, self._clock.seconds())
        return 0

    def take(self) -> list[tuple[_K, int]]:
        """The counts so far, leaving none: what a worker publishes."""
        counts = list(self.items())
        self.clear()
        return counts


class _Durations:
    """One domain's request durations: a count per bucket (not cumulative), and the sum."""

    __slots__ = ("counts", "created", "total")

    def __init__(self, created: float) -> None:
        self.counts = [0] * len(_BOUNDS)
        self.total = 0.0
        self.created = created


class _DurationsByDomain(dict[str, _Durations]):
    """`_Durations` by domain, made at a domain's first request (then its `_created`)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self._clock = clock

    def __missing__(self, domain: str) -> _Durations:
        durations = self[domain] = _Durations(self._clock.seconds())
        return durations

    def take(self) -> list[tuple[str, _Durations]]:
        """The durations so far, leaving none: what a worker publishes."""
        durations = list(self.items())
        self.clear()
        return durations


# What a tally's key is, as label values: origins are counted by address and port, and
# named as `route.label` names them only when shown.
def _request_labels(key: tuple[str, str]) -> tuple[str, ...]:
    return key


def _attempt_labels(key: tuple[str, str, int, str]) -> tuple[str, ...]:
    domain, address, port, outcome = key
    return (domain, server_label(address, port), outcome)


def _reused_labels(key: tuple[str, str, int]) -> tuple[str, ...]:
    domain, address, port = key
    return (domain, server_label(address, port))


Process = Literal["single", "supervisor", "worker"]


class Monitor:
    """Counts what the proxy does and says what operators must hear about, once.

    `process` "single" counts everything and shows it at scrape time; a "worker" counts
    traffic only and publishes it (and its pool gauges, as nobody can ask it at scrape
    time) each second by `publish`; a "supervisor" counts config reloads and the
    generation only.
    """

    def __init__(
        self, clock: IReactorTime, pool: OriginPool | None = None, *, process: Process = "single"
    ) -> None:
        self.clock = clock
        self.process = process
        self.registry = CollectorRegistry(auto_describe=True)
        # Per request: plain dicts (see the module docstring).
        self._requests: _Tally[tuple[str, str]] = _Tally(clock)
        self._durations = _DurationsByDomain(clock)
        self._attempts: _Tally[tuple[str, str, int, str]] = _Tally(clock)
        self._reused: _Tally[tuple[str, str, int]] = _Tally(clock)
        self._files: _WorkerFiles | None = None
        created = _created_series_wanted()
        # A supervisor serves no traffic: its traffic metrics stay out of its registry, so
        # that they appear once in /metrics, summed from the workers' files. The families
        # are registered in the order /metrics has always listed them.
        r = None if process == "supervisor" else self.registry
        if process == "single":
            self._show(lambda: _counter_family(REQUESTS, self._requests, _request_labels, created))
            self._show(lambda: _duration_family(self._durations, created))
            self._show(lambda: _counter_family(ATTEMPTS, self._attempts, _attempt_labels, created))
        self.handshakes = Counter(
            "edgenode_origin_tls_handshakes",
            "TLS handshakes with origins by result",
            ["domain", "origin", "sni", "result"],
            registry=r,
        )
        if process == "single":
            self._show(lambda: _counter_family(REUSED, self._reused, _reused_labels, created))
        elif process == "worker":
            self._files = _WorkerFiles(self.registry)
        self.origin_up = Gauge(
            "edgenode_origin_up",
            "1 while an origin is up for its domain (health checks, passive ejection)",
            ["domain", "origin", "sni"],
            registry=r,
            multiprocess_mode="min",  # with workers: down if any worker finds it down
        )
        self.client_handshakes = Counter(
            "edgenode_client_tls_handshakes",
            "TLS handshakes with clients on the HTTPS listener by result",
            ["result"],
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
            self.certificate_expiry = Gauge(
                "edgenode_certificate_expiry_timestamp_seconds",
                "notAfter of each certificate the edge offers its clients",
                ["certificate"],
                registry=self.registry,
            )
        self._pool_gauges: _PoolGauges | None = None
        if pool is not None and process == "worker":
            self._pool_gauges = _PoolGauges(pool, self.registry)
        elif pool is not None:
            self.registry.register(_PoolCollector(pool))
        self._failing: dict[tuple[str, int], str] = {}  # origin server -> first error seen
        self._cert_log_next: dict[tuple[str, str | None], tuple[float, int]] = {}

    def _show(self, family: Callable[[], Metric]) -> None:
        self.registry.register(_FamilyCollector(family))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def publish(self) -> None:
        """A worker's counts since the last call, and its open and idle origin connections,
        written where the supervisor reads them; nothing in other processes. Called each
        second and once more when the worker stops, after its last request."""
        if self._pool_gauges is not None:
            self._pool_gauges.sample()
        if self._files is not None:
            self._files.add(self._requests, self._durations, self._attempts, self._reused)

    # -- per request: plain dict work only ------------------------------------------

    def request_done(self, record: AccessRecord) -> None:
        domain = record.domain or UNKNOWN_DOMAIN
        self._requests[domain, _STATUS_CLASS.get((record.status or 0) // 100, "none")] += 1
        seconds = record.duration_ms / 1000.0
        durations = self._durations[domain]
        durations.counts[bisect_left(_BOUNDS, seconds)] += 1  # le is inclusive, as Histogram's
        durations.total += seconds

    def origin_state(self, domain: str, route: OriginRoute, up: bool, reason: str | None) -> None:
        """An origin's health changed (or is watched from now on): edgenode_origin_up."""
        self.origin_up.labels(domain, route.label, route.sni or "").set(1 if up else 0)

    def origin_unwatched(self, domain: str, route: OriginRoute) -> None:
        """No health is kept for it any more: its series goes, as a removed one must."""
        with contextlib.suppress(KeyError):
            self.origin_up.remove(domain, route.label, route.sni or "")

    def client_handshake(self, result: str) -> None:
        """A client TLS handshake on the HTTPS listener: ok, unknown_sni_rejected, failed."""
        self.client_handshakes.labels(result).inc()

    def serving_certificates(self, certificates: Iterable[EdgeCertificate]) -> None:
        """The certificates now offered to clients: their expiry, the removed ones gone."""
        if self.process == "worker":
            return  # the supervisor reports them, from the same config
        self.certificate_expiry.clear()
        for cert in certificates:
            self.certificate_expiry.labels(cert.label).set(cert.not_after)
            warning = expiry_warning(cert, now=self.clock.seconds())
            if warning is not None:
                log.warn("certificate offered to clients: {warning}", warning=warning)

    def connection_used(
        self, domain: str, route: OriginRoute, *, reused: bool, peer: CertFacts | None
    ) -> None:
        """A request got a ready connection: a reuse, or a fresh handshake that verified."""
        if reused:
            self._reused[domain, route.address, route.port] += 1
        elif route.tls:
            sni = route.sni or ""
            self.handshakes.labels(domain, route.label, sni, "ok").inc()
            if peer is not None:
                self.cert_expiry.labels(domain, route.label, sni).set(peer.not_after_ts)
        if self._failing:
            self._recovered(route)

    def attempt_done(self, domain: str, route: OriginRoute, err: OriginError | None) -> None:
        if err is None:
            self._attempts[domain, route.address, route.port, "ok"] += 1
            if self._failing:
                self._recovered(route)
        else:
            self._attempts[domain, route.address, route.port, err.code.value] += 1
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


def supervisor_families(families: Iterable[Metric]) -> Iterator[Metric]:
    """The workers' files, added up, as /metrics shows them: what they published of their
    request durations becomes the one `edgenode_request_duration_seconds` histogram a
    single edge shows (same buckets, numbers and labels); every other family passes."""
    counts: dict[str, dict[str, float]] = {}  # domain -> le -> observations in that bucket
    sums: dict[str, float] = {}
    for family in families:
        if family.name == WORKER_DURATION_COUNTS.name:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    by_le = counts.setdefault(sample.labels["domain"], {})
                    le = sample.labels["le"]
                    by_le[le] = by_le.get(le, 0.0) + sample.value
        elif family.name == WORKER_DURATION_SUM.name:
            for sample in family.samples:
                domain = sample.labels["domain"]
                sums[domain] = sums.get(domain, 0.0) + sample.value
        else:
            yield family
    if counts or sums:
        yield _reassembled_durations(counts, sums)


def _reassembled_durations(
    counts: Mapping[str, Mapping[str, float]], sums: Mapping[str, float]
) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(DURATION.name, DURATION.help, labels=DURATION.labels)
    for domain in sorted(counts.keys() | sums.keys()):
        by_le = counts.get(domain, {})
        # Every bucket, also those no worker wrote (one only writes buckets it counted in);
        # the union keeps a bucket this code does not know, should one ever appear.
        les = sorted(set(_LE) | by_le.keys(), key=float)
        cumulative = accumulate(by_le.get(le, 0.0) for le in les)
        histogram.add_metric(
            [domain], list(zip(les, cumulative, strict=True)), sums.get(domain, 0.0)
        )
    return histogram


class _FamilyCollector:
    """One family, built from the counts when scraped (prometheus-client's custom-collector
    protocol; without `describe`, the registry calls `collect` once to learn its names)."""

    def __init__(self, family: Callable[[], Metric]) -> None:
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family()


def _counter_family(
    family: Family,
    tally: _Tally[Any],
    labels_of: Callable[[Any], tuple[str, ...]],
    created: bool,
) -> CounterMetricFamily:
    counter = CounterMetricFamily(family.name, family.help, labels=family.labels)
    for key, n in tally.items():
        counter.add_metric(labels_of(key), n, created=tally.created[key] if created else None)
    return counter


def _duration_family(durations: Mapping[str, _Durations], created: bool) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(DURATION.name, DURATION.help, labels=DURATION.labels)
    for domain, d in durations.items():
        histogram.add_metric([domain], list(zip(_LE, accumulate(d.counts), strict=True)), d.total)
        if created:  # as Histogram shows it, after the domain's _count and _sum
            histogram.add_sample(f"{DURATION.name}_created", {"domain": domain}, d.created)
    return histogram


class _WorkerFiles:
    """A worker's per-request counts as prometheus-client multiprocess metrics, whose files
    the supervisor adds up: `add` moves the counts there, once a second, so that the file
    writes (~4 µs each) are one per series a second rather than several per request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = _Children(_counter(REQUESTS, registry))
        self._attempts = _Children(_counter(ATTEMPTS, registry))
        self._reused = _Children(_counter(REUSED, registry))
        self._duration_counts = _Children(_counter(WORKER_DURATION_COUNTS, registry))
        # A gauge adding up over processes: a counter refuses a negative amount, and a
        # duration measured across a wall-clock step back can be one, as Histogram allows.
        total = WORKER_DURATION_SUM
        self._duration_sum = _Children(
            Gauge(total.name, total.help, total.labels, registry=registry, multiprocess_mode="sum")
        )

    def add(
        self,
        requests: _Tally[tuple[str, str]],
        durations: _DurationsByDomain,
        attempts: _Tally[tuple[str, str, int, str]],
        reused: _Tally[tuple[str, str, int]],
    ) -> None:
        _add(requests, self._requests, _request_labels)
        _add(attempts, self._attempts, _attempt_labels)
        _add(reused, self._reused, _reused_labels)
        for domain, d in durations.take():
            for le, n in zip(_LE, d.counts, strict=True):
                if n:
                    self._duration_counts(domain, le).inc(n)
            self._duration_sum(domain).inc(d.total)


def _counter(family: Family, registry: CollectorRegistry) -> Counter:
    return Counter(family.name, family.help, family.labels, registry=registry)


def _add(
    tally: _Tally[Any], counter: _Children, labels_of: Callable[[Any], tuple[str, ...]]
) -> None:
    for key, n in tally.take():
        counter(*labels_of(key)).inc(n)


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
            open_.add_metric([server_label(address, port)], count)
        for (address, port), count in sorted(self.pool.idle_by_server().items()):
            idle.add_metric([server_label(address, port)], count)
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
            now = {server_label(address, port): n for (address, port), n in counts.items()}
            known = self._known[which]
            for label in known - now.keys():  # gone from the pool: a file keeps the last value
                gauge.labels(label).set(0)
            for label, n in now.items():
                gauge.labels(label).set(n)
            known |= now.keys()
