"""Tests for edgenode.datapath.proxy: one exchange, client bytes to origin bytes and back.

The edge's real data path (`DataPath`, which an edge and each worker serve with: a
DownstreamProtocol, Proxy, Runtime and OriginPool) on a MemoryReactorClock: client and
origin transports are StringTransports and origin connects are completed by hand. Routes
are plain HTTP, so no TLS is involved.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.logger import globalLogPublisher

from edgenode.datapath.proxy import DEADLINE_TICK
from tests.support.memory_edge import OK_5, WWW, Edge, http_domain, lose
from tests.support.transport import head_of, status_lines

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath


def header(data: bytes, name: bytes) -> list[bytes]:
    prefix = name.lower() + b": "
    return [
        line[len(prefix) :]
        for line in head_of(data).split(b"\r\n")
        if line.lower().startswith(prefix)
    ]


# --- Routing -------------------------------------------------------------------------------------


def test_unknown_domain_is_answered_421() -> None:
    """A host no domain matches gets 421 unknown_domain, logged; no origin is contacted."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: nowhere.example\r\n\r\n")
    out = transport.value()
    assert status_lines(out) == [b"HTTP/1.1 421 Misdirected Request"]
    (record,) = edge.log.records
    assert header(out, b"X-Edge-Request-Id") == [record.request_id.encode()]
    assert b"unknown_domain" in out
    assert (record.status, record.error, record.attempts) == (421, "unknown_domain", 0)
    assert edge.connects() == []
    assert not transport.disconnecting  # the request itself was fine


def test_missing_host_is_answered_400() -> None:
    """A request without Host gets 400 bad_request and the connection closes."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    assert status_lines(transport.value()) == [b"HTTP/1.1 400 Bad Request"]
    assert edge.log.records[0].error == "bad_request"
    assert transport.disconnecting
    assert edge.connects() == []


def test_refused_request_is_logged() -> None:
    """A request the edge refuses before routing (bad Host) is answered 400 and logged once."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert status_lines(transport.value()) == [b"HTTP/1.1 400 Bad Request"]
    (record,) = edge.log.records
    assert (record.status, record.error) == (400, "bad_request")


# --- Forwarding and relaying ---------------------------------------------------------------


def test_request_is_forwarded_with_rewritten_headers() -> None:
    """The origin gets origin-form, Host: origin_host, XFF appended, Via, no hop-by-hop headers."""
    edge = Edge()
    client, _ = edge.client()
    client.dataReceived(
        b"GET /p?q=1 HTTP/1.1\r\n" + WWW + b"X-Forwarded-For: 10.0.0.1\r\n"
        b"Connection: X-Secret\r\nX-Secret: 1\r\nAccept: */*\r\n\r\n"
    )
    assert edge.connects() == [("192.0.2.1", 8080)]
    _, origin = edge.origin()
    sent = origin.value()
    assert sent.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: origin.example\r\n")
    assert sent.endswith(b"\r\n\r\n")
    assert header(sent, b"X-Forwarded-For") == [b"10.0.0.1, 192.168.1.1"]
    assert header(sent, b"X-Forwarded-Host") == [b"www.example.com"]
    assert header(sent, b"X-Forwarded-Proto") == [b"http"]
    assert header(sent, b"Via") == [b"1.1 edgenode"]
    assert header(sent, b"Accept") == [b"*/*"]
    assert header(sent, b"X-Secret") == [] and header(sent, b"Connection") == []


def test_response_is_relayed_with_a_request_id() -> None:
    """The origin's response reaches the client with X-Edge-Request-Id; the access log agrees."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nServer: origin\r\n\r\nhello"
    )
    out = transport.value()
    assert status_lines(out) == [b"HTTP/1.1 200 OK"]
    assert out.endswith(b"\r\n\r\nhello")
    (record,) = edge.log.records
    assert header(out, b"X-Edge-Request-Id") == [record.request_id.encode()]
    assert header(out, b"Content-Length") == [b"5"]
    assert header(out, b"Server") == [b"origin"]
    assert header(out, b"Keep-Alive") == [] and header(out, b"Connection") == []
    assert (record.status, record.bytes_sent, record.attempts) == (200, 5, 1)
    assert (record.domain, record.origin, record.error) == (
        "www.example.com",
        "192.0.2.1:8080",
        None,
    )
    assert edge.pool.idle_count() == 1
    assert not transport.disconnecting


def test_request_body_is_streamed_to_the_origin() -> None:
    """A POST body arriving after the head goes to the origin with our Content-Length."""
    edge = Edge()
    client, _ = edge.client()
    client.dataReceived(b"POST /up HTTP/1.1\r\n" + WWW + b"Content-Length: 10\r\n\r\nhello")
    _, origin = edge.origin()
    client.dataReceived(b"world")
    sent = origin.value()
    assert header(sent, b"Content-Length") == [b"10"]
    assert sent.endswith(b"\r\n\r\nhelloworld")


def test_chunked_request_body_is_forwarded_chunked() -> None:
    """A chunked upload is forwarded with chunked framing and its last chunk."""
    edge = Edge()
    client, _ = edge.client()
    client.dataReceived(
        b"POST / HTTP/1.1\r\n" + WWW + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    _, origin = edge.origin()
    sent = origin.value()
    assert header(sent, b"Transfer-Encoding") == [b"chunked"]
    assert sent.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_second_request_reuses_the_pooled_origin_connection() -> None:
    """A keep-alive client's next request goes out on the same origin connection."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET /1 HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, origin = edge.origin()
    conn.dataReceived(OK_5)
    client.dataReceived(b"GET /2 HTTP/1.1\r\n" + WWW + b"\r\n")
    assert len(edge.connects()) == 1
    assert origin.value().count(b"GET /2 HTTP/1.1") == 1
    conn.dataReceived(OK_5)
    assert status_lines(transport.value()) == [b"HTTP/1.1 200 OK"] * 2
    assert [r.connection_reused for r in edge.log.records] == [False, True]


def test_finished_exchanges_are_freed_without_the_cyclic_collector() -> None:
    """A request's objects (exchange, stream, head, record) form no reference cycle once it
    is answered: they go when the last reference does, not at the next gc run, which cost
    ~4 us a request when they did. Also an error answered at once (421)."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET /1 HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(OK_5)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for n in range(5):
            client.dataReceived(b"GET /%d HTTP/1.1\r\n" % n + WWW + b"\r\n")
            conn.dataReceived(OK_5)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
        gc.collect()
        cyclic = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert status_lines(transport.value()) == [b"HTTP/1.1 200 OK"] * 6 + [
        b"HTTP/1.1 421 Misdirected Request"
    ]
    assert not cyclic & {"Exchange", "ClientStream", "_Request", "RequestHead", "AccessRecord"}


# --- Failover ------------------------------------------------------------------------------------


def test_failed_connect_moves_to_the_next_origin() -> None:
    """A refused connect to the first origin is followed by the backup; attempts counts both."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    edge.refuse()
    assert edge.connects() == [("192.0.2.1", 8080), ("192.0.2.2", 80)]
    conn, origin = edge.origin()
    assert origin.value().startswith(b"GET / HTTP/1.1\r\n")
    conn.dataReceived(OK_5)
    assert status_lines(transport.value()) == [b"HTTP/1.1 200 OK"]
    (record,) = edge.log.records
    assert (record.attempts, record.origin, record.status) == (2, "192.0.2.2:80", 200)


def test_every_origin_refusing_is_502_origin_connect_failed() -> None:
    """When every origin refuses, the client gets 502 origin_connect_failed."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    edge.refuse(0)
    edge.refuse(1)
    assert status_lines(transport.value()) == [b"HTTP/1.1 502 Bad Gateway"]
    assert b"origin_connect_failed" in transport.value()
    (record,) = edge.log.records
    assert (record.attempts, record.error) == (2, "origin_connect_failed")


def test_idempotent_request_moves_on_after_the_origin_failed_mid_response() -> None:
    """A GET whose origin dies before the response head is retried on the next origin."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    first, _ = edge.origin()
    first.dataReceived(b"HTTP/1.1 200 O")
    lose(first, ConnectionLost)
    assert len(edge.connects()) == 2
    second, _ = edge.origin()
    second.dataReceived(OK_5)
    assert status_lines(transport.value()) == [b"HTTP/1.1 200 OK"]


def test_post_is_not_retried_after_its_bytes_were_sent() -> None:
    """A POST that reached an origin is not sent elsewhere when that origin fails: 502."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"POST / HTTP/1.1\r\n" + WWW + b"Content-Length: 5\r\n\r\nhello")
    conn, origin = edge.origin()
    assert origin.value().endswith(b"hello")
    lose(conn, ConnectionLost)
    assert len(edge.connects()) == 1
    assert status_lines(transport.value()) == [b"HTTP/1.1 502 Bad Gateway"]
    assert b"origin_protocol_error" in transport.value()
    (record,) = edge.log.records
    assert (record.attempts, record.error) == (1, "origin_protocol_error")


def test_post_moves_on_when_the_connect_failed() -> None:
    """A POST whose first origin refused the connect (nothing sent) goes to the backup."""
    edge = Edge()
    client, _ = edge.client()
    client.dataReceived(b"POST / HTTP/1.1\r\n" + WWW + b"Content-Length: 5\r\n\r\nhello")
    edge.refuse()
    assert len(edge.connects()) == 2
    _, origin = edge.origin()
    assert origin.value().startswith(b"POST / HTTP/1.1\r\n")
    assert origin.value().endswith(b"\r\n\r\nhello")


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    """A reused connection closed before any response byte: retried fresh on the same origin."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET /1 HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(OK_5)
    client.dataReceived(b"GET /2 HTTP/1.1\r\n" + WWW + b"\r\n")
    lose(conn, ConnectionLost)
    assert edge.connects() == [("192.0.2.1", 8080), ("192.0.2.1", 8080)]
    fresh, origin = edge.origin()
    assert origin.value().startswith(b"GET /2 HTTP/1.1\r\n")
    fresh.dataReceived(OK_5)
    assert status_lines(transport.value()) == [b"HTTP/1.1 200 OK"] * 2
    second = edge.log.records[1]
    assert (second.attempts, second.status, second.connection_reused) == (2, 200, False)


# --- Limits, timeouts, endings -------------------------------------------------------------


def test_no_connection_slot_within_queue_timeout_is_503() -> None:
    """With the origin's only slot busy, a second request gets 503 origin_busy after the wait."""
    edge = Edge(
        http_domain({"address": "192.0.2.1"}),
        limits={"origin_max_connections": 1, "origin_queue_timeout": 2},
    )
    first, _ = edge.client()
    first.dataReceived(b"GET /1 HTTP/1.1\r\n" + WWW + b"\r\n")
    edge.origin()
    second, transport = edge.client()
    second.dataReceived(b"GET /2 HTTP/1.1\r\n" + WWW + b"\r\n")
    edge.reactor.advance(2.1)
    assert status_lines(transport.value()) == [b"HTTP/1.1 503 Service Unavailable"]
    assert b"origin_busy" in transport.value()
    assert len(edge.connects()) == 1


def test_no_response_head_within_response_header_timeout_is_504() -> None:
    """An origin silent past timeouts.response_header makes the client get 504 origin_timeout."""
    edge = Edge(http_domain({"address": "192.0.2.1"}, timeouts={"response_header": 7}))
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    _, origin = edge.origin()
    edge.reactor.advance(6.9)
    assert transport.value() == b""
    edge.reactor.advance(0.2)
    assert status_lines(transport.value()) == [b"HTTP/1.1 504 Gateway Timeout"]
    assert b"origin_timeout" in transport.value()
    assert origin.disconnected


def test_an_exchange_failing_to_time_out_does_not_stop_the_others_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One deadline tick serves every exchange in flight: if timing one out raises (a bug),
    that request still ends (500 internal_error) and the others still time out (504)."""
    edge = Edge(http_domain({"address": "192.0.2.1"}, timeouts={"response_header": 7}))
    broken_client, broken_out = edge.client()
    broken_client.dataReceived(b"GET /broken HTTP/1.1\r\n" + WWW + b"\r\n")
    edge.origin()
    (broken,) = edge.proxy.exchanges

    def boom() -> None:
        raise RuntimeError("a bug in timed_out")

    monkeypatch.setattr(broken, "timed_out", boom)
    client, transport = edge.client()
    client.dataReceived(b"GET /fine HTTP/1.1\r\n" + WWW + b"\r\n")
    edge.origin()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        edge.reactor.advance(7.1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert status_lines(broken_out.value()) == [b"HTTP/1.1 500 Internal Server Error"]
    assert b"internal_error" in broken_out.value()
    assert status_lines(transport.value()) == [b"HTTP/1.1 504 Gateway Timeout"]
    assert edge.proxy.in_flight == 0
    failures = [e["log_failure"].value for e in events if "log_failure" in e]
    assert [str(f) for f in failures] == ["a bug in timed_out"]


def test_failure_after_the_response_head_cuts_the_client_short() -> None:
    """A body cut short after a framed head: the client gets the short body, then a close."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    lose(conn, ConnectionLost)
    assert transport.disconnecting  # closed after flushing, never completed
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert b"Content-Length: 10" in head
    assert body == b"hello"  # 5 of the 10 bytes promised: the client sees it is short
    assert len(edge.connects()) == 1
    (record,) = edge.log.records
    assert (record.status, record.error) == (200, "origin_protocol_error")


def test_failure_of_a_close_delimited_response_resets_the_client() -> None:
    """An HTTP/1.0 client's body ends at the close, so a failed one is reset, not closed."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.0\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    lose(conn, ConnectionLost)
    assert transport.disconnected


def test_client_leaving_mid_exchange_drops_the_origin_connection() -> None:
    """A client that disconnects while waiting makes the edge abort the origin connection; 499."""
    edge = Edge()
    client, _ = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    _, origin = edge.origin()
    lose(client)
    assert origin.disconnected
    (record,) = edge.log.records
    assert record.status == 499
    assert edge.proxy.in_flight == 0
    edge.reactor.advance(DEADLINE_TICK)  # the deadline tick stops when it finds nothing to do
    assert edge.reactor.getDelayedCalls() == []


def test_head_request_relays_the_length_without_a_body() -> None:
    """HEAD: the origin's Content-Length reaches the client, no body, and keep-alive holds."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"HEAD / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    out = transport.value()
    assert header(out, b"Content-Length") == [b"1234"]
    assert out.endswith(b"\r\n\r\n")
    assert not transport.disconnecting
    assert edge.pool.idle_count() == 1


def test_chunked_origin_response_is_relayed_chunked() -> None:
    """An origin body of unknown length reaches an HTTP/1.1 client chunked, with the last chunk."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    out = transport.value()
    assert header(out, b"Transfer-Encoding") == [b"chunked"]
    assert out.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_a_connection_that_never_becomes_ready_still_ends_in_504() -> None:
    """If a connect neither completes nor fails, the exchange's backstop answers 504."""
    edge = Edge(http_domain({"address": "192.0.2.1", "port": 8080}))
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    assert len(edge.connects()) == 1  # the connect is never completed nor refused
    edge.reactor.advance(5 + 5 + 5 + 1.5)  # connect + handshake + queue timeouts + slack
    assert status_lines(transport.value()) == [b"HTTP/1.1 504 Gateway Timeout"]
    (record,) = edge.log.records
    assert record.error == "origin_timeout"
    assert "no usable origin connection" in (record.error_detail or "")
