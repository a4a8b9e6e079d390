"""edgenode.datapath.monitor's per-request counts: exact in a single process's /metrics at scrape
time, as prometheus-client's own metrics showed them; and, published by workers into
multiprocess files, the same families with the same numbers in the supervisor's /metrics.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from edgenode.accesslog import AccessRecord
from edgenode.control.workermetrics import WorkerMetrics
from edgenode.datapath.monitor import DURATION_BUCKETS, Monitor
from edgenode.errors import ErrorCode, OriginError
from edgenode.routes import OriginRoute

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

ROOT = Path(__file__).resolve().parent.parent


def _route(address: str, port: int, sni: str | None) -> OriginRoute:
    return OriginRoute(
        address=address,
        port=port,
        tls=True,
        sni=sni,
        verify_name=sni or "origin.test",
        verify=True,
        trust_id="default",
        min_tls="1.2",
    )


A = _route("192.0.2.1", 443, "a.test")
B = _route("2001:db8::1", 8443, None)
REFUSED = OriginError(ErrorCode.ORIGIN_CONNECT_FAILED, "connection refused")

# Durations on bucket bounds (`le` is inclusive), just above them, and beyond the last.
DURATIONS_MS = (0.0, 1.0, 5.0, 5.001, 10.0, 24.9, 50.0, 99.0, 100.0, 250.0, 700.0, 1000.0)
DURATIONS_MS += (2500.0, 4999.0, 10000.0, 30000.0, 30000.5, 120000.0)

Request = tuple[str | None, int | None, float]  # domain, status, duration_ms
REQUESTS: list[Request] = (
    [("a.test", 200, DURATIONS_MS[i % len(DURATIONS_MS)]) for i in range(1000)]
    + [("a.test", 404, DURATIONS_MS[i * 7 % len(DURATIONS_MS)]) for i in range(37)]
    + [(None, 421, 0.2)] * 11  # a host that matches no domain
    + [("b.test", 502, 12.5)] * 5
    + [("b.test", None, 3.0)]  # the client left before any status
)
REUSED = [("a.test", A)] * 400 + [("b.test", B)] * 3
ATTEMPTS = [("a.test", A, None)] * 500 + [("b.test", B, REFUSED)] * 4 + [("b.test", B, None)] * 2


def _feed(
    monitor: Monitor,
    requests: Iterable[Request],
    reused: Iterable[tuple[str, OriginRoute]],
    attempts: Iterable[tuple[str, OriginRoute, OriginError | None]],
) -> None:
    """What proxy.py tells the monitor, for each of these requests, reuses and attempts."""
    for domain, status, ms in requests:
        record = AccessRecord("id", "203.0.113.9", "GET", domain, "/", 0.0, 1)
        record.domain, record.status, record.duration_ms = domain, status, ms
        monitor.request_done(record)
    for domain, route in reused:
        monitor.connection_used(domain, route, reused=True, peer=None)
    for domain, route, err in attempts:
        monitor.attempt_done(domain, route, err)


def _feed_all(monitor: Monitor) -> None:
    _feed(monitor, REQUESTS, REUSED, ATTEMPTS)


def _samples(text: str, families: Iterable[str]) -> dict[tuple[str, tuple[Any, ...]], float]:
    """The samples of `families` in a Prometheus text exposition, by name and labels."""
    wanted = set(families)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        if f.name in wanted
        for s in f.samples
        if not s.name.endswith("_created")
    }


TRAFFIC = (
    "edgenode_requests",
    "edgenode_request_duration_seconds",
    "edgenode_origin_attempts",
    "edgenode_origin_connections_reused",
)


def test_single_process_metrics_are_exact_at_scrape_time() -> None:
    """Right after the last call, /metrics has every request, bucket, sum, attempt and reuse."""
    monitor = Monitor(Clock())
    _feed_all(monitor)
    got = _samples(monitor.render().decode(), TRAFFIC)

    def requests(domain: str, status_class: str) -> float:
        labels = (("domain", domain), ("status_class", status_class))
        return got[("edgenode_requests_total", labels)]

    assert requests("a.test", "2xx") == 1000
    assert requests("a.test", "4xx") == 37
    assert requests("_unknown", "4xx") == 11
    assert requests("b.test", "5xx") == 5
    assert requests("b.test", "none") == 1
    for domain in ("a.test", "_unknown", "b.test"):
        seconds = [ms / 1000.0 for d, _, ms in REQUESTS if (d or "_unknown") == domain]
        name = "edgenode_request_duration_seconds"
        for bound, le in zip((*DURATION_BUCKETS, math.inf), _le_labels(), strict=True):
            labels = (("domain", domain), ("le", le))
            assert got[(f"{name}_bucket", labels)] == sum(s <= bound for s in seconds), le
        assert got[(f"{name}_count", (("domain", domain),))] == len(seconds)
        assert got[(f"{name}_sum", (("domain", domain),))] == pytest.approx(math.fsum(seconds))
    a_port, b_port = (("origin", "192.0.2.1:443"),), (("origin", "[2001:db8::1]:8443"),)
    attempts = "edgenode_origin_attempts_total"
    assert got[(attempts, (("domain", "a.test"), *a_port, ("outcome", "ok")))] == 500
    assert got[(attempts, (("domain", "b.test"), *b_port, ("outcome", "ok")))] == 2
    refused = ("outcome", "origin_connect_failed")
    assert got[(attempts, (("domain", "b.test"), *b_port, refused))] == 4
    reused = "edgenode_origin_connections_reused_total"
    assert got[(reused, (("domain", "a.test"), *a_port))] == 400
    assert got[(reused, (("domain", "b.test"), *b_port))] == 3


def _le_labels() -> list[str]:
    return [str(float(b)) for b in DURATION_BUCKETS] + ["+Inf"]


def _as_prometheus_client_counted(registry: CollectorRegistry) -> None:
    """The same events through prometheus-client's own metrics, as the edge counted before."""
    requests = Counter(
        "edgenode_requests",
        "Client requests answered",
        ["domain", "status_class"],
        registry=registry,
    )
    duration = Histogram(
        "edgenode_request_duration_seconds",
        "Time from request head to the end of the response",
        ["domain"],
        registry=registry,
        buckets=DURATION_BUCKETS,
    )
    attempts = Counter(
        "edgenode_origin_attempts",
        "Back-to-origin attempts by outcome (ok or an error code)",
        ["domain", "origin", "outcome"],
        registry=registry,
    )
    reused = Counter(
        "edgenode_origin_connections_reused",
        "Requests sent on a pooled connection (no new handshake)",
        ["domain", "origin"],
        registry=registry,
    )
    classes = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
    for domain, status, ms in REQUESTS:
        requests.labels(domain or "_unknown", classes.get((status or 0) // 100, "none")).inc()
        duration.labels(domain or "_unknown").observe(ms / 1000.0)
    for domain, route, err in ATTEMPTS:
        attempts.labels(domain, route.label, "ok" if err is None else err.code.value).inc()
    for domain, route in REUSED:
        reused.labels(domain, route.label).inc()


def _traffic_text(text: str) -> str:
    """The traffic families' lines of an exposition, `_created` values masked (times)."""
    lines = [line for line in text.splitlines() if any(name in line for name in TRAFFIC)]
    return "\n".join(re.sub(r"(_created\S*) \S+$", r"\1 T", line) for line in lines)


def test_single_process_exposition_is_what_prometheus_client_printed() -> None:
    """Names, types, help, labels, samples and their order, as Counter and Histogram print
    them for the same events (the `_created` times aside)."""
    monitor = Monitor(Clock())
    _feed_all(monitor)
    reference = CollectorRegistry()
    _as_prometheus_client_counted(reference)
    expected = _traffic_text(generate_latest(reference).decode())
    assert "_created" in expected
    assert _traffic_text(monitor.render().decode()) == expected


def test_created_is_when_a_series_was_first_counted() -> None:
    """A series' `_created` is the clock's time at its first count, as a Counter's is."""
    clock = Clock()
    monitor = Monitor(clock)
    clock.advance(5)
    _feed(monitor, [("a.test", 200, 1.0)], [("a.test", A)], [])
    clock.advance(4)
    _feed(monitor, [("a.test", 200, 1.0), ("a.test", 500, 1.0)], [("a.test", A)], [])
    created = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(monitor.render().decode())
        for s in f.samples
        if s.name.endswith("_created")
    }
    assert (
        created[("edgenode_requests_created", (("domain", "a.test"), ("status_class", "2xx")))] == 5
    )
    assert (
        created[("edgenode_requests_created", (("domain", "a.test"), ("status_class", "5xx")))] == 9
    )
    assert created[("edgenode_request_duration_seconds_created", (("domain", "a.test"),))] == 5
    reused = (
        "edgenode_origin_connections_reused_created",
        (("domain", "a.test"), ("origin", A.label)),
    )
    assert created[reused] == 5


# --- Workers: counts published into multiprocess files, added up by the supervisor -----------

WORKERS = 2


def run_worker(number: int) -> None:
    """A worker process's share of the events (`python -c`, PROMETHEUS_MULTIPROC_DIR set):
    counted, published halfway and at the end, then published again with nothing new."""
    monitor = Monitor(Clock(), process="worker")
    requests, reused, attempts = (
        events[number::WORKERS] for events in (REQUESTS, REUSED, ATTEMPTS)
    )
    halves = (slice(None, len(requests) // 2), slice(len(requests) // 2, None))
    for half in halves:
        _feed(monitor, requests[half], reused[half], attempts[half])
        monitor.publish()
    monitor.publish()


def _run_workers(directory: Path) -> list[int]:
    """Each worker in its own process, as under a supervisor; returns their pids."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    pids = []
    for number in range(WORKERS):
        code = f"from tests.test_monitor import run_worker; run_worker({number})"
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
        assert proc.wait(timeout=60) == 0
        pids.append(proc.pid)
    return pids


def test_workers_published_counts_are_the_single_process_families(tmp_path: Path) -> None:
    """Two workers' published counts, added up by the supervisor: the same families, types,
    help, labels and numbers as one process counting every event, and nothing internal."""
    pids = _run_workers(tmp_path)
    supervisor = WorkerMetrics(lambda: b"", tmp_path).render().decode()
    single = Monitor(Clock())
    _feed_all(single)
    expected = single.render().decode()

    def described(text: str) -> list[str]:
        """HELP and TYPE of the traffic families (their order aside: files have none)."""
        lines = _traffic_text(text).splitlines()
        return sorted(line for line in lines if line.startswith("# ") and "_created" not in line)

    assert described(supervisor) == described(expected)
    assert "edgenode_worker_" not in supervisor
    got, want = _samples(supervisor, TRAFFIC), _samples(expected, TRAFFIC)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == (pytest.approx(value) if key[0].endswith("_sum") else value), key
    metrics = WorkerMetrics(lambda: b"", tmp_path)
    per_worker = [metrics.requests_of(pid) for pid in pids]
    assert per_worker == [len(REQUESTS[n::WORKERS]) for n in range(WORKERS)]
    assert sum(per_worker) == len(REQUESTS)
