"""What operators watch, through the real edge: access-log lines, rotation, /metrics, events."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from edgenode import speedups
from edgenode.accesslog import FIELDS, AccessLog, AccessRecord
from tests.support.origin import TLSOrigin
from tests.support.pki import PKI
from tests.support.waiting import wait_until

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath


def _config(pki: PKI, origin: TLSOrigin) -> dict[str, Any]:
    def domain(**extra: Any) -> dict[str, Any]:
        return {"origins": [{"address": "127.0.0.1", "port": origin.port}], **extra}

    return {
        "tls": {"ca_file": str(pki.ca_file)},
        "domains": {
            "a.test": domain(origin_sni={"enabled": True}),
            "b.test": domain(origin_sni={"enabled": True}),
            "nosni.test": domain(origin_host="a.test"),  # SNI off: the default cert answers
        },
    }


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_line_has_the_documented_fields(edge_factory, pki, origin) -> None:
    """Each access-log line is one JSON object with every documented field, in order."""
    edge = edge_factory(_config(pki, origin))
    edge.request("GET", "/x?q=1", host="a.test")
    edge.request("GET", "/", host="unknown.test")
    records = edge.access_records(2)
    for rec in records:
        assert list(rec) == list(FIELDS)
    ok, unknown = records
    assert ok["ts"].endswith("Z") and ok["path"] == "/x?q=1"
    assert (ok["status"], ok["origin_status"], ok["error"]) == (200, 200, None)
    assert ok["tls_version"].startswith("TLSv1.") and ok["tls_cipher"]
    assert ok["origin"] == f"127.0.0.1:{origin.port}"
    assert ok["bytes_sent"] > 0 and ok["duration_ms"] > 0
    assert (unknown["status"], unknown["error"], unknown["domain"]) == (421, "unknown_domain", None)


def test_the_start_log_says_which_data_path_runs(edge_factory, pki, origin) -> None:
    """Compiled or pure Python, and why (edgenode/speedups.py), in the twistd log."""
    edge = edge_factory(_config(pki, origin))
    assert f"data path: {speedups.describe()}" in edge.log_text()


def test_name_mismatch_line_explains_itself(edge_factory, pki, origin) -> None:
    """A mismatch line names the certificate's names, the name verified, and a hint."""
    edge = edge_factory(_config(pki, origin))
    r = edge.request("GET", "/", host="nosni.test")
    assert r.status == 502
    (rec,) = edge.access_records(1)
    assert rec["error"] == "origin_cert_name_mismatch"
    assert rec["sni"] is None and rec["verify_name"] == "a.test"
    detail = rec["error_detail"]
    assert "default.test, www.default.test" in detail
    assert "does not cover a.test" in detail
    assert "origin SNI is off" in detail or "no SNI was sent" in detail
    assert rec["origin_cert"]["dns_names"] == ["default.test", "www.default.test"]
    assert "certificate verification failed for nosni.test" in edge.log_text()


def test_reused_connection_shows_in_the_log(edge_factory, pki, origin) -> None:
    """A pooled connection's line says connection_reused and has no handshake time."""
    edge = edge_factory(_config(pki, origin))
    edge.request("GET", "/", host="a.test")
    edge.request("GET", "/", host="a.test")
    first, second = edge.access_records(2)
    assert first["connection_reused"] is False
    assert first["upstream_handshake_ms"] > 0 and first["upstream_connect_ms"] >= 0
    assert second["connection_reused"] is True
    assert second["upstream_handshake_ms"] is None and second["upstream_connect_ms"] is None


def test_rotation_by_mv_and_sigusr1_loses_no_line(edge_factory, pki, origin) -> None:
    """`mv access.log access.log.1` + SIGUSR1 under load: every request id is in one file once."""
    edge = edge_factory(_config(pki, origin))
    log_path = edge.dir / "access.log"
    ids: list[str] = []
    stop = threading.Event()
    errors: list[Any] = []

    def client() -> None:
        conn = edge.connection()
        while not stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": "a.test"})
                resp = conn.getresponse()
                resp.read()
                ids.append(resp.getheader("X-Edge-Request-Id"))
            except Exception as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(ids) >= 100, 10, "100 requests before the rotation")
        os.rename(log_path, edge.dir / "access.log.1")
        edge.signal(signal.SIGUSR1)
        wait_until(
            lambda: log_path.exists() and log_path.stat().st_size > 0,
            10,
            "a new access log after SIGUSR1",
        )
        count = len(ids)
        wait_until(lambda: len(ids) >= count + 100, 10, "100 requests after the rotation")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert edge.stop() == 0
    lines = (edge.dir / "access.log.1").read_text().splitlines() + log_path.read_text().splitlines()
    logged = [json.loads(line)["request_id"] for line in lines]
    assert sorted(logged) == sorted(ids)
    assert len(set(logged)) == len(logged)
    # twistd's own --logfile rotated on the same signal: both handlers ran.
    rotated = (edge.dir / "twistd.log.1").read_text()
    assert "access log reopened" in rotated + edge.log_text()


def test_a_full_disk_loses_access_log_lines_not_requests(edge_factory, pki, origin) -> None:
    """An access log the OS refuses to write (/dev/full: ENOSPC) costs its lines, never a
    request: every client gets its answer, the twistd log says lines were lost (once, not
    per line), and the edge keeps serving after the flusher met the error."""
    config = _config(pki, origin)
    config["access_log"] = "/dev/full"
    edge = edge_factory(config)
    for _ in range(5):
        assert edge.request("GET", "/", host="a.test").status == 200
    # The flusher runs once a second.
    wait_until(lambda: "lines lost" in edge.log_text(), 10, "the report of lost lines")
    text = edge.log_text()
    assert "access log /dev/full: 5 lines lost (OSError: No space left on device)" in text
    for _ in range(5):
        assert edge.request("GET", "/", host="b.test").status == 200
    assert edge.log_text().count("lines lost") == 1


def test_lost_access_log_lines_are_reported_at_most_once_a_minute() -> None:
    """Each failed flush costs its lines; the twistd log hears of them once a minute, with
    the count of every line lost since the last report (the reactor's clock, not the wall's)."""
    clock = Clock()
    access_log = AccessLog(Path("/dev/full"))
    access_log.start(clock)
    reports: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if "lines lost" in text:
            reports.append(text)

    globalLogPublisher.addObserver(observe)
    try:
        for seconds in (0.0, 30.0, 29.0, 2.0):
            clock.advance(seconds)
            for i in range(3):
                access_log.write(AccessRecord(f"id{i}", "127.0.0.1", "GET", "a.test", "/", 0.0, 1))
            access_log.flush()
    finally:
        globalLogPublisher.removeObserver(observe)
        access_log.close()
    assert access_log.lines_lost == 12
    assert [re.search(r"(\d+) lines lost", r).group(1) for r in reports] == ["3", "9"]


def test_metrics_parse_and_move(edge_factory, pki, origin) -> None:
    """/metrics parses with prometheus-client's parser and its counters follow the requests."""
    edge = edge_factory(_config(pki, origin))
    before = _samples(edge.admin_request("GET", "/metrics").text)
    for _ in range(3):
        edge.request("GET", "/", host="a.test")
    edge.request("GET", "/", host="nosni.test")
    edge.request("GET", "/", host="evil-client-chosen.test")
    r = edge.admin_request("GET", "/metrics")
    assert r.status == 200
    assert r.header("Content-Type").startswith("text/plain")
    after = _samples(r.text)
    port = f"127.0.0.1:{origin.port}"
    assert after[("edgenode_requests_total", (("domain", "a.test"), ("status_class", "2xx")))] == 3
    assert (
        after[("edgenode_requests_total", (("domain", "nosni.test"), ("status_class", "5xx")))] == 1
    )
    assert (
        after[("edgenode_requests_total", (("domain", "_unknown"), ("status_class", "4xx")))] == 1
    )
    assert not any("evil" in str(key) for key in after)
    hs = "edgenode_origin_tls_handshakes_total"
    assert (
        after[(hs, (("domain", "a.test"), ("origin", port), ("result", "ok"), ("sni", "a.test")))]
        == 1
    )
    assert (
        after[
            (
                hs,
                (
                    ("domain", "nosni.test"),
                    ("origin", port),
                    ("result", "name_mismatch"),
                    ("sni", ""),
                ),
            )
        ]
        == 1
    )
    reused = ("edgenode_origin_connections_reused_total", (("domain", "a.test"), ("origin", port)))
    assert after[reused] == 2
    attempts = (
        "edgenode_origin_attempts_total",
        (("domain", "a.test"), ("origin", port), ("outcome", "ok")),
    )
    assert after[attempts] == 3
    assert after[("edgenode_config_generation", ())] == 1
    expiry = (
        "edgenode_origin_cert_expiry_timestamp_seconds",
        (("domain", "a.test"), ("origin", port), ("sni", "a.test")),
    )
    assert after[expiry] > time.time()
    assert after[("edgenode_request_duration_seconds_count", (("domain", "a.test"),))] == 3
    assert before.get(reused, 0) == 0
    assert edge.admin_request("GET", "/metrics", token=None).status == 401


def test_reload_metrics_and_failing_origin_events(edge_factory, pki, origin, servers) -> None:
    """Reloads count by result; an origin that fails is logged once as failing, then recovered."""
    edge = edge_factory(_config(pki, origin))
    assert edge.admin_request("POST", "/reload").status == 200
    edge.config_path.write_text("not: [valid")
    assert edge.admin_request("POST", "/reload").status == 422
    samples = _samples(edge.admin_request("GET", "/metrics").text)
    assert samples[("edgenode_config_reloads_total", (("result", "ok"),))] == 1
    assert samples[("edgenode_config_reloads_total", (("result", "rejected"),))] == 1
    assert samples[("edgenode_config_generation", ())] == 2
    port = f"127.0.0.1:{origin.port}"
    edge.request("GET", "/", host="nosni.test")
    edge.request("GET", "/", host="nosni.test")
    assert edge.log_text().count(f"origin {port} marked failing") == 1
    edge.request("GET", "/", host="a.test")
    assert f"origin {port} recovered" in edge.log_text()
