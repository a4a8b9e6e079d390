"""Integration: failover, retries, timeouts, error codes and graceful stop (SPEC §2, §4).

Origins that refuse, hang, stall or answer garbage are real sockets on 127.0.0.1
(tests.support.faults); timeouts are configured small (0.5 s) and the tests assert
the status and error code the client and the access log see, never durations.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.edge import EdgeProcess, Response
from tests.support.faults import FaultyOrigin, Silent
from tests.support.net import LOOPBACK, free_port
from tests.support.origin import Servers, TLSOrigin
from tests.support.pki import PKI
from tests.support.waiting import wait_until

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

EdgeFactory = Callable[..., EdgeProcess]


def edge_config(pki: PKI, origins: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One domain a.test (origin SNI on) over `origins`, trusting the test CA."""
    config: dict[str, Any] = {
        "tls": {"ca_file": str(pki.ca_file)},
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 10, "body_idle": 10},
        "domains": {"a.test": {"origin_sni": {"enabled": True}, "origins": origins}},
    }
    config.update(extra)
    return config


def at(port: int, **settings: Any) -> dict[str, Any]:
    """An `origins[]` entry for 127.0.0.1:port."""
    return {"address": LOOPBACK, "port": port, **settings}


def start(edge_factory: EdgeFactory, config: dict[str, Any]) -> EdgeProcess:
    return edge_factory(config, wait_admin=False)


def only_record(edge: EdgeProcess) -> dict[str, Any]:
    """The access log's single record (for responses whose head never reached the client)."""
    records = edge.access_records(1)
    assert len(records) == 1, records
    return records[0]


class Background:
    """One request run on a thread; `result()` joins it and returns the response."""

    def __init__(self, edge: EdgeProcess, path: str, host: str = "a.test") -> None:
        self._response: Response | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(edge, path, host))
        self._thread.start()

    def _run(self, edge: EdgeProcess, path: str, host: str) -> None:
        try:
            self._response = edge.request("GET", path, host=host, timeout=20)
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = 20.0) -> Response:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background request did not finish"
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response


@pytest.fixture
def a_leaf(pki: PKI) -> dict[str, Any]:
    return {"a.test": pki.leaf("a.test")}


# -- failover and balancing -----------------------------------------------------------


def test_refused_primary_fails_over_to_the_backup(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """A priority-1 origin that refuses connections is skipped; the priority-2 origin answers."""
    backup = servers.tls_origin(a_leaf, None)
    edge = start(
        edge_factory, edge_config(pki, [at(free_port(), priority=1), at(backup.port, priority=2)])
    )
    resp = edge.request("GET", "/failover", host="a.test")
    assert resp.status == 200, resp.text
    assert resp.json()["path"] == "/failover"
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert record["attempts"] == 2
    assert record["origin"] == f"{LOOPBACK}:{backup.port}"
    assert record["error"] is None


def test_all_origins_refusing_is_origin_connect_failed(edge_factory: EdgeFactory, pki: PKI):
    """When every origin refuses the TCP connection the client gets 502 origin_connect_failed."""
    edge = start(
        edge_factory, edge_config(pki, [at(free_port(), priority=1), at(free_port(), priority=2)])
    )
    resp = edge.request("GET", "/", host="a.test")
    assert resp.status == 502
    assert "origin_connect_failed" in resp.text
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert (record["error"], record["attempts"]) == ("origin_connect_failed", 2)
    assert "refused" in record["error_detail"]


def test_weighted_round_robin_within_one_priority(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """Two origins of weights 3 and 1 share 40 requests 30/10 (smooth weighted round robin)."""
    heavy = servers.tls_origin(a_leaf, None)
    light = servers.tls_origin(a_leaf, None)
    edge = start(
        edge_factory, edge_config(pki, [at(heavy.port, weight=3), at(light.port, weight=1)])
    )
    conn = edge.connection()
    try:
        for i in range(40):
            conn.request("GET", f"/w{i}", headers={"Host": "a.test"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
    finally:
        conn.close()
    assert (len(heavy.requests), len(light.requests)) == (30, 10)


# -- stale pooled connections ----------------------------------------------------------


def test_pooled_connection_dropped_on_reuse_is_retried_on_a_fresh_one(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """An origin dropping each reused connection unanswered is invisible: a fresh one retries."""
    origin = servers.tls_origin(a_leaf, None, drop_reused=True)
    edge = start(edge_factory, edge_config(pki, [at(origin.port)]))
    responses = [edge.request("GET", f"/s{i}", host="a.test") for i in range(4)]
    assert [r.status for r in responses] == [200] * 4, [r.text for r in responses]
    assert [r.json()["path"] for r in responses] == ["/s0", "/s1", "/s2", "/s3"]
    records = [edge.record(r.header("X-Edge-Request-Id")) for r in responses]
    assert [r["attempts"] for r in records] == [1, 2, 2, 2]
    assert [r["error"] for r in records] == [None] * 4
    assert [r["connection_reused"] for r in records] == [False] * 4  # the answering connection


def test_origin_closing_after_each_response_causes_no_client_error(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """An origin closing each connection after answering, without saying so, is invisible."""
    origin = servers.tls_origin(a_leaf, None, close_after_response=True)
    edge = start(edge_factory, edge_config(pki, [at(origin.port)]))
    responses = [edge.request("GET", f"/c{i}", host="a.test") for i in range(5)]
    assert [r.status for r in responses] == [200] * 5, [r.text for r in responses]
    records = [edge.record(r.header("X-Edge-Request-Id")) for r in responses]
    assert all(r["attempts"] in (1, 2) and r["error"] is None for r in records), records
    assert {r.json()["req_on_conn"] for r in responses} == {1}


# -- requests that reached an origin which then failed ---------------------------------


def test_post_is_not_retried_after_the_origin_hangs_up(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """A POST the origin received then dropped unanswered gets 502 and goes to no other origin."""
    hangup = FaultyOrigin(close=True)
    port = servers.listen_tls(hangup, a_leaf)
    backup = servers.tls_origin(a_leaf, None)
    edge = start(
        edge_factory, edge_config(pki, [at(port, priority=1), at(backup.port, priority=2)])
    )
    resp = edge.request("POST", "/order", host="a.test", body=b"pay once")
    assert resp.status == 502
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert (record["error"], record["attempts"]) == ("origin_protocol_error", 1)
    assert len(hangup.heads) == 1 and hangup.heads[0].startswith(b"POST /order ")
    assert backup.requests == []


def test_get_is_retried_on_the_next_origin_after_the_origin_hangs_up(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """A GET the origin received and then dropped unanswered moves on to the next origin: 200."""
    hangup = FaultyOrigin(close=True)
    port = servers.listen_tls(hangup, a_leaf)
    backup = servers.tls_origin(a_leaf, None)
    edge = start(
        edge_factory, edge_config(pki, [at(port, priority=1), at(backup.port, priority=2)])
    )
    resp = edge.request("GET", "/idempotent", host="a.test")
    assert resp.status == 200, resp.text
    assert resp.json()["path"] == "/idempotent"
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert (record["attempts"], record["error"]) == (2, None)
    assert record["origin"] == f"{LOOPBACK}:{backup.port}"
    assert len(hangup.heads) == 1


# -- timeouts --------------------------------------------------------------------------


def test_origin_that_never_handshakes_is_a_timeout(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """An origin that accepts TCP but never answers the ClientHello gets 504 origin_timeout."""
    port = servers.listen_tcp(Silent)
    config = edge_config(pki, [at(port)])
    config["timeouts"]["tls_handshake"] = 0.5
    edge = start(edge_factory, config)
    resp = edge.request("GET", "/", host="a.test")
    assert resp.status == 504
    assert "origin_timeout" in resp.text
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert record["error"] == "origin_timeout"
    assert "handshake" in record["error_detail"]


def test_origin_that_never_sends_response_headers_is_a_timeout(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """An origin slower than timeouts.response_header gets 504 origin_timeout."""
    origin = servers.tls_origin(a_leaf, None)
    config = edge_config(pki, [at(origin.port)])
    config["timeouts"]["response_header"] = 0.5
    edge = start(edge_factory, config)
    resp = edge.request("GET", "/delay/5", host="a.test")
    assert resp.status == 504
    assert "origin_timeout" in resp.text
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert record["error"] == "origin_timeout"
    assert "response headers" in record["error_detail"]
    assert [r["path"] for r in origin.requests] == ["/delay/5"]


def test_body_stalling_past_body_idle_aborts_the_client_connection(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """Head, 10 of 1000 bytes, then silence: the client gets the 200 head and an aborted body."""
    stall = FaultyOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    port = servers.listen_tls(stall, a_leaf)
    config = edge_config(pki, [at(port)])
    config["timeouts"]["body_idle"] = 0.5
    edge = start(edge_factory, config)
    conn = edge.connection()
    try:
        conn.request("GET", "/stall", headers={"Host": "a.test"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == "1000"
        with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
            resp.read()
    finally:
        conn.close()
    record = only_record(edge)
    assert (record["status"], record["error"]) == (200, "origin_timeout")
    assert record["bytes_sent"] < 1000


def test_body_shorter_than_content_length_aborts_the_client_connection(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """An origin that closes after 10 of 1000 promised bytes makes the edge abort the client."""
    short = FaultyOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, close=True)
    port = servers.listen_tls(short, a_leaf)
    edge = start(edge_factory, edge_config(pki, [at(port)]))
    conn = edge.connection()
    try:
        conn.request("GET", "/short", headers={"Host": "a.test"})
        # The abort may come before the client read the head (it then sees a bare reset),
        # never as a complete-looking response.
        with pytest.raises((http.client.HTTPException, ConnectionResetError)):
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()
    record = only_record(edge)
    assert (record["status"], record["error"]) == (200, "origin_protocol_error")


def test_malformed_status_line_is_a_protocol_error(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """An origin answering `HTTP/1.1 abc` gets the client 502 origin_protocol_error."""
    garbage = FaultyOrigin(b"HTTP/1.1 abc\r\n\r\n")
    port = servers.listen_tls(garbage, a_leaf)
    edge = start(edge_factory, edge_config(pki, [at(port)]))
    resp = edge.request("GET", "/", host="a.test")
    assert resp.status == 502
    assert "origin_protocol_error" in resp.text
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert record["error"] == "origin_protocol_error"
    assert len(garbage.heads) == 1


def test_no_connection_slot_within_the_queue_timeout_is_origin_busy(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """With origin_max_connections 1 busy, a second request waits origin_queue_timeout, then 503."""
    origin = servers.tls_origin(a_leaf, None)
    config = edge_config(
        pki, [at(origin.port)], limits={"origin_max_connections": 1, "origin_queue_timeout": 0.5}
    )
    edge = start(edge_factory, config)
    slow = Background(edge, "/delay/3")
    wait_until(lambda: len(origin.requests) == 1, what="the slow request to reach the origin")
    resp = edge.request("GET", "/second", host="a.test")
    assert resp.status == 503
    assert "origin_busy" in resp.text
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert record["error"] == "origin_busy"
    assert slow.result().status == 200
    assert [r["path"] for r in origin.requests] == ["/delay/3"]


# -- graceful stop ---------------------------------------------------------------------


def test_sigterm_while_idle_exits_0(edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI):
    """SIGTERM stops an idle edge with exit status 0."""
    edge = start(edge_factory, edge_config(pki, [at(origin.port)]))
    assert edge.request("GET", "/", host="a.test").status == 200
    assert edge.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """SIGTERM during a request lets it complete with 200, then the edge exits 0."""
    edge = start(edge_factory, edge_config(pki, [at(origin.port)]))
    slow = Background(edge, "/delay/1")
    wait_until(lambda: len(origin.requests) == 1, what="the request to reach the origin")
    assert edge.stop() == 0
    resp = slow.result()
    assert resp.status == 200
    assert resp.json()["path"] == "/delay/1"
