"""The pure core of tail: bounded counts, nearest-rank percentiles and rates per domain.

Two kinds of line share the access log (SPEC §6, §8): one per request, and one per
client TLS handshake that failed on the HTTPS listener (`error` is `client_tls_*`, no
request id, method or status). The second kind is not a request: it never reaches the
per-domain rows, status classes, latencies or requests/s, and is counted on its own by
the SNI the client sent.
"""

from __future__ import annotations

import collections
from array import array
from collections.abc import Sequence
from typing import Any, Final

import attrs

UNKNOWN_DOMAIN: Final = "_unknown"  # rows for records whose `domain` is null (unknown hosts)
OTHER_DOMAINS: Final = "_other"  # where domains beyond MAX_DOMAINS are counted
TOTAL: Final = "_total"
# The key of the client handshake-failure count in `Rates` (not a domain: names never
# start with "_" except the reserved rows above).
CLIENT_TLS_FAILURES: Final = "_client_tls_failures"
CLIENT_TLS_ERROR_PREFIX: Final = "client_tls_"  # client_tls_failed, client_tls_unknown_sni

LATENCY_SAMPLES: Final = 10_000  # percentile window per domain (and for the total) ...
LATENCY_SECONDS: Final = 60.0  # ... and, when following, at most this old
RATE_WINDOW_SECONDS: Final = 10.0  # the sliding window of the second requests/s column
MAX_DOMAINS: Final = 256  # rows kept; bounds memory if a log holds very many domains
MAX_FAILURE_GROUPS: Final = 1_000
# Client SNI values are chosen by whoever connects (scanners send random names), so the
# groups are capped; failures beyond the cap are still counted, under `other`.
MAX_CLIENT_TLS_GROUPS: Final = 1_000
RECENT_ERRORS: Final = 10
PERCENTILES: Final = (50, 95, 99)
STATUS_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx")


def is_client_tls_failure(record: dict[str, Any]) -> bool:
    """A failed client TLS handshake (SPEC §8), not a request: its error is client_tls_*."""
    error = record.get("error")
    return isinstance(error, str) and error.startswith(CLIENT_TLS_ERROR_PREFIX)


ORIGIN_EVENTS: Final = ("origin_down", "origin_up")
MAX_ORIGINS: Final = 1_000  # origins whose health is remembered


def is_origin_event(record: dict[str, Any]) -> bool:
    """An origin marked down or up by its health (SPEC §10), not a request."""
    return record.get("event") in ORIGIN_EVENTS


def is_https(record: dict[str, Any]) -> bool:
    """The request came over the HTTPS listener; lines older than SPEC §8 have no scheme."""
    return record.get("scheme") == "https"


def nearest_rank(sorted_values: Sequence[float], percentile: int) -> float | None:
    """The nearest-rank percentile: the smallest value with at least p% of values <= it."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, -(-percentile * n // 100))  # ceil(p/100 * n) in integers
    return sorted_values[rank - 1]


class LatencyWindow:
    """The last `size` durations and when they were seen, in memory fixed by `size`."""

    __slots__ = ("_durations", "_next", "_seen", "size")

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self.size = size
        self._durations = array("d")
        self._seen = array("d")
        self._next = 0  # where the next sample goes once the arrays are full

    def add(self, duration: float, now: float) -> None:
        if len(self._durations) < self.size:
            self._durations.append(duration)
            self._seen.append(now)
        else:
            i = self._next
            self._durations[i] = duration
            self._seen[i] = now
            self._next = (i + 1) % self.size

    def values(self, since: float | None = None) -> list[float]:
        """The durations seen at or after `since` (all kept ones if None), sorted."""
        if since is None:
            return sorted(self._durations)
        return sorted(d for d, t in zip(self._durations, self._seen, strict=True) if t >= since)


class _Counts:
    """Running totals for one row (a domain, or all of them)."""

    __slots__ = ("bytes", "classes", "https", "latency", "requests")

    def __init__(self, latency_samples: int) -> None:
        self.requests = 0
        self.https = 0  # requests that came over TLS from the client
        self.classes = [0, 0, 0, 0, 0, 0]  # index status // 100 for 1xx..5xx; 0 = no status
        self.bytes = 0
        self.latency = LatencyWindow(latency_samples)


@attrs.frozen
class DomainStats:
    """One row of the summary: counts since the start, percentiles over the latency window."""

    domain: str
    requests: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    bytes_sent: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    latency_samples: int  # how many durations the percentiles were taken over
    https: int = 0  # requests that came over HTTPS

    @property
    def https_percent(self) -> float | None:
        """The share of requests that came over HTTPS, in percent; None without requests."""
        return 100 * self.https / self.requests if self.requests else None

    def column(self, name: str) -> object:
        """The value of a column of the --once table (`view.ONCE_COLUMNS`), by its name."""
        if name in STATUS_CLASSES:
            return getattr(self, f"status_{name}")
        if name == "https_%":
            return self.https_percent
        return self.bytes_sent if name == "bytes" else getattr(self, name)


@attrs.frozen
class FailureGroup:
    """Origin failures sharing (domain, origin, sni, error): TLS, certificate, connect, timeout."""

    domain: str
    origin: str | None
    sni: str | None
    error: str
    count: int
    last_ts: str | None
    last_detail: str | None


@attrs.frozen
class ClientTlsGroup:
    """Failed client handshakes sharing (client SNI, error); `other`: SNIs beyond the cap."""

    sni: str | None  # None: the client sent no SNI (or `other` is set)
    error: str
    count: int
    last_ts: str | None
    last_client: str | None
    last_detail: str | None
    other: bool = False


@attrs.frozen
class ClientTlsFailures:
    """Every failed client TLS handshake counted: in total, by error, by (SNI, error)."""

    total: int = 0
    by_error: tuple[tuple[str, int], ...] = ()  # most frequent first
    groups: tuple[ClientTlsGroup, ...] = ()  # most frequent first


class _ClientTlsCounts:
    """The running counts behind `ClientTlsFailures`, bounded by MAX_CLIENT_TLS_GROUPS."""

    def __init__(self, max_groups: int = MAX_CLIENT_TLS_GROUPS) -> None:
        self.max_groups = max_groups
        self.total = 0
        self.by_error: collections.Counter[str] = collections.Counter()
        # (sni, error, other) -> [count, last ts, last client, last detail]
        self.groups: dict[tuple[str | None, str, bool], list[Any]] = {}

    def add(self, record: dict[str, Any]) -> None:
        error = str(record["error"])
        sni = record.get("client_sni")
        key = (sni if isinstance(sni, str) else None, error, False)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= self.max_groups:
                key = (None, error, True)
                group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = [0, None, None, None]
        self.total += 1
        self.by_error[error] += 1
        group[0] += 1
        group[1] = _text(record.get("ts"))
        group[2] = _text(record.get("client"))
        group[3] = _text(record.get("error_detail"))

    def snapshot(self) -> ClientTlsFailures:
        groups = [
            ClientTlsGroup(sni, error, count, ts, client, detail, other=other)
            for (sni, error, other), (count, ts, client, detail) in self.groups.items()
        ]
        groups.sort(key=lambda g: (-g.count, g.other, g.sni or "", g.error))
        by_error = sorted(self.by_error.items(), key=lambda item: (-item[1], item[0]))
        return ClientTlsFailures(self.total, tuple(by_error), tuple(groups))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@attrs.frozen
class RecentError:
    """One of the last records that carried an error code or a 5xx status."""

    ts: str | None
    request_id: str
    domain: str
    status: int | None
    error: str | None
    detail: str | None


@attrs.frozen
class Snapshot:
    """Everything the views show, as plain data."""

    total: DomainStats
    domains: tuple[DomainStats, ...]  # most requests first, then by name
    failures: tuple[FailureGroup, ...]  # most frequent first
    recent_errors: tuple[RecentError, ...]  # newest last
    records: int  # requests and failed client handshakes
    unparsable: int
    skipped: int  # parsed, but outside the filters
    client_tls: ClientTlsFailures = ClientTlsFailures()
    origins_down: tuple[OriginDown, ...] = ()  # their last event said down, oldest first


@attrs.frozen
class OriginDown:
    """An origin whose last health event marked it down: the operator's first question."""

    domain: str
    origin: str
    sni: str | None
    since: str | None
    reason: str | None


class LogSummary:
    """Counts access-log records; every structure is bounded (see the *_MAX constants)."""

    def __init__(
        self,
        *,
        latency_seconds: float | None = LATENCY_SECONDS,
        latency_samples: int = LATENCY_SAMPLES,
        max_domains: int = MAX_DOMAINS,
    ) -> None:
        self.latency_seconds = latency_seconds  # None: percentiles over the last N samples only
        self.latency_samples = latency_samples
        self.max_domains = max_domains
        self.total = _Counts(latency_samples)
        self.domains: dict[str, _Counts] = {}
        self.failures: dict[tuple[str, str | None, str | None, str], list[Any]] = {}
        self.recent: collections.deque[RecentError] = collections.deque(maxlen=RECENT_ERRORS)
        self.client_tls = _ClientTlsCounts()
        # (domain, origin, sni) -> OriginDown while its last event said down
        self.down: dict[tuple[str, str, str | None], OriginDown] = {}
        self.records = 0
        self.unparsable = 0  # lines that are not access-log records (counted by the caller)
        self.skipped = 0  # records outside the filters (counted by the caller)

    def add(self, record: dict[str, Any], now: float = 0.0) -> None:
        """Count one parsed record, seen at `now` (seconds, any monotonic clock)."""
        self.records += 1
        if is_client_tls_failure(record):
            self.client_tls.add(record)  # not a request: no row, class, latency or rate
            return
        if is_origin_event(record):
            self._origin_event(record)
            return
        domain = record.get("domain")
        if not isinstance(domain, str):
            domain = UNKNOWN_DOMAIN
        counts = self.domains.get(domain)
        if counts is None:
            if len(self.domains) >= self.max_domains:
                domain = OTHER_DOMAINS
            counts = self.domains.get(domain)
            if counts is None:
                counts = self.domains[domain] = _Counts(self.latency_samples)
        status = record.get("status")
        cls = status // 100 if type(status) is int and 100 <= status <= 599 else 0
        sent = record.get("bytes_sent")
        sent = sent if type(sent) is int else 0
        https = 1 if is_https(record) else 0
        for row in (counts, self.total):
            row.requests += 1
            row.classes[cls] += 1
            row.bytes += sent
            row.https += https
        duration = record.get("duration_ms")
        if type(duration) is float or type(duration) is int:
            counts.latency.add(duration, now)
            self.total.latency.add(duration, now)
        error = record.get("error")
        if error is not None or cls == 5:
            self._add_error(record, domain, error, status)

    def _origin_event(self, record: dict[str, Any]) -> None:
        domain, origin, sni = (_text(record.get(k)) for k in ("domain", "origin", "sni"))
        key = (domain or UNKNOWN_DOMAIN, origin or "?", sni)
        if record.get("event") == "origin_up":
            self.down.pop(key, None)
        elif key in self.down or len(self.down) < MAX_ORIGINS:
            self.down.pop(key, None)  # re-inserted: the dict's order is the order they fell
            self.down[key] = OriginDown(
                *key, since=_text(record.get("ts")), reason=_text(record.get("error_detail"))
            )

    def _add_error(self, record: dict[str, Any], domain: str, error: Any, status: Any) -> None:
        error = str(error) if error is not None else None
        detail = record.get("error_detail")
        detail = str(detail) if detail is not None else None
        ts = record.get("ts") if isinstance(record.get("ts"), str) else None
        if error is not None and error.startswith("origin_"):
            origin, sni = record.get("origin"), record.get("sni")
            key = (
                domain,
                origin if isinstance(origin, str) else None,
                sni if isinstance(sni, str) else None,
                error,
            )
            group = self.failures.get(key)
            if group is None and len(self.failures) < MAX_FAILURE_GROUPS:
                group = self.failures[key] = [0, None, None]
            if group is not None:  # beyond MAX_FAILURE_GROUPS a new group is not counted
                group[0] += 1
                group[1] = ts
                group[2] = detail
        self.recent.append(
            RecentError(
                ts=ts,
                request_id=str(record.get("request_id")),
                domain=domain,
                status=status if type(status) is int else None,
                error=error,
                detail=detail,
            )
        )

    def snapshot(self, now: float = 0.0) -> Snapshot:
        """The counts so far and percentiles over the window ending at `now`."""
        since = None if self.latency_seconds is None else now - self.latency_seconds
        rows = [self._stats(name, counts, since) for name, counts in self.domains.items()]
        rows.sort(key=lambda row: (-row.requests, row.domain))
        failures = [
            FailureGroup(*key, count=count, last_ts=ts, last_detail=detail)
            for key, (count, ts, detail) in self.failures.items()
        ]
        failures.sort(key=lambda g: (-g.count, g.domain, g.origin or "", g.sni or "", g.error))
        return Snapshot(
            total=self._stats(TOTAL, self.total, since),
            domains=tuple(rows),
            failures=tuple(failures),
            recent_errors=tuple(self.recent),
            records=self.records,
            unparsable=self.unparsable,
            skipped=self.skipped,
            client_tls=self.client_tls.snapshot(),
            origins_down=tuple(self.down.values()),
        )

    @staticmethod
    def _stats(name: str, counts: _Counts, since: float | None) -> DomainStats:
        durations = counts.latency.values(since)
        p50, p95, p99 = (nearest_rank(durations, p) for p in PERCENTILES)
        c = counts.classes
        return DomainStats(
            domain=name,
            requests=counts.requests,
            status_2xx=c[2],
            status_3xx=c[3],
            status_4xx=c[4],
            status_5xx=c[5],
            bytes_sent=counts.bytes,
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            latency_samples=len(durations),
            https=counts.https,
        )


@attrs.frozen
class Rate:
    """Requests/s and bytes/s of one row, over the last refresh and the sliding window."""

    requests_now: float
    requests_window: float
    bytes_now: float
    bytes_window: float


class Rates:
    """Per-second rates from successive snapshots' running totals (no per-record cost)."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.history: collections.deque[tuple[float, dict[str, tuple[int, int]]]] = (
            collections.deque()
        )

    def update(self, now: float, snapshot: Snapshot) -> dict[str, Rate]:
        """Record `snapshot` taken at `now`; return the rates per domain and for TOTAL.

        Failed client handshakes are rated under CLIENT_TLS_FAILURES (as `requests_*`,
        their bytes 0), so the view can show them per second like requests.
        """
        totals = {row.domain: (row.requests, row.bytes_sent) for row in snapshot.domains}
        totals[TOTAL] = (snapshot.total.requests, snapshot.total.bytes_sent)
        totals[CLIENT_TLS_FAILURES] = (snapshot.client_tls.total, 0)
        previous = self.history[-1] if self.history else None
        self.history.append((now, totals))
        while len(self.history) > 2 and self.history[1][0] <= now - self.window:
            self.history.popleft()
        oldest = self.history[0] if len(self.history) > 1 else None
        rates: dict[str, Rate] = {}
        for name, (requests, sent) in totals.items():
            now_r, now_b = _per_second(previous, now, name, requests, sent)
            win_r, win_b = _per_second(oldest, now, name, requests, sent)
            rates[name] = Rate(now_r, win_r, now_b, win_b)
        return rates


def _per_second(
    then: tuple[float, dict[str, tuple[int, int]]] | None,
    now: float,
    name: str,
    requests: int,
    sent: int,
) -> tuple[float, float]:
    if then is None or now <= then[0]:
        return 0.0, 0.0
    before_r, before_b = then[1].get(name, (0, 0))
    elapsed = now - then[0]
    return (requests - before_r) / elapsed, (sent - before_b) / elapsed
