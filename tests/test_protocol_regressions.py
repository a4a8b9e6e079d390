"""Regressions found by review: protocol edge cases of both sides and of the exchange."""

from __future__ import annotations

import pytest

from edgenode.config import Limits
from edgenode.errors import ErrorCode
from tests.support.memory_client import HOST, Client
from tests.support.memory_edge import WWW, Edge
from tests.support.transport import status_lines
from tests.test_upstream import (
    OK_5,
    REQUEST,
    ConnectionLost,
    Harness,
    RecordingListener,
    exchange,
    lose,
    plain_route,
    tls_route,
)

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath


def test_transfer_encoding_other_than_chunked_is_refused_with_400() -> None:
    """A request with a Transfer-Encoding that is not chunked gets 400 and never a start()."""
    c = Client()
    c.send(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n")
    assert c.sinks == []
    assert c.handler.refused[0][0] is ErrorCode.BAD_REQUEST
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]
    assert c.transport.disconnecting


def test_pipelined_head_is_not_charged_for_the_request_before_it() -> None:
    """A head split across reads counts only its own bytes against max_header_bytes."""
    c = Client(Limits(max_header_bytes=1024))
    c.send(
        b"POST /1 HTTP/1.1\r\n"
        + HOST
        + b"Content-Length: 2000\r\n\r\n"
        + b"x" * 2000
        + b"GET /2 HTTP/1.1\r\n"
    )
    c.send(HOST + b"\r\n")
    c.sinks[0].respond()
    assert [s.head.path for s in c.sinks] == [b"/1", b"/2"]
    assert not c.transport.disconnecting


# --- upstream ------------------------------------------------------------------------------


def test_handshake_timeout_frees_exactly_one_slot() -> None:
    """A connection whose TLS handshake timed out, then closed, leaves its server count once."""
    h = Harness()
    route = tls_route("a.example")
    h.acquire(route)
    h.complete_connect()
    h.reactor.tcpClients[0][2].conn.handshakeCompleted()
    late = h.acquire(route)
    h.complete_connect()
    timed_out = h.reactor.tcpClients[1][2].conn
    h.reactor.advance(5)
    assert [e.code for e in late.failed] == [ErrorCode.ORIGIN_TIMEOUT]
    lose(timed_out, ConnectionLost)  # the abort completes
    assert h.pool.open_count(route.server) == 1  # the first connection is still open


def test_released_connection_stays_pooled_when_only_timed_out_waiters_remain() -> None:
    """A waiter that already got origin_busy does not make the pool close a released connection."""
    h = Harness(max_per_server=1, queue_timeout=5.0)
    conn, transport = h.connection()
    gave_up = h.acquire(plain_route())
    h.reactor.advance(6)
    assert [e.code for e in gave_up.failed] == [ErrorCode.ORIGIN_BUSY]
    exchange(conn, OK_5)
    h.pool.release(conn)
    assert not transport.disconnecting
    assert h.pool.idle_count(conn.route.pool_key) == 1


def test_head_response_split_across_reads_keeps_the_connection_reusable() -> None:
    """A HEAD response whose blank line arrives in its own read leaves the connection reusable."""
    h = Harness()
    conn, _ = h.connection()
    listener = RecordingListener()
    conn.send_request(REQUEST, listener, head_only=True)
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n")
    conn.dataReceived(b"\r\n")
    assert listener.kinds == ["head", "end"]
    assert not conn.retired


def test_unsolicited_second_response_is_not_relayed() -> None:
    """Bytes after a complete response (a second, unasked-for response) never reach the listener."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, OK_5 + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad")
    assert listener.kinds == ["head", "end"]
    assert listener.body == b"hello"
    assert conn.retired


def test_garbage_after_a_complete_response_does_not_fail_it() -> None:
    """A response received in full ends cleanly though junk follows; the connection retires."""
    h = Harness()
    conn, _ = h.connection()
    listener = exchange(conn, OK_5 + b"garbage\r\n\r\n")
    assert listener.kinds == ["head", "end"]
    assert conn.retired


# --- proxy ---------------------------------------------------------------------------------


def test_error_answer_to_an_unfinished_upload_does_not_leave_the_client_paused() -> None:
    """After a 502 to a half-received upload, the edge reads (and drops) the rest or closes."""
    edge = Edge()
    client, transport = edge.client()
    client.dataReceived(b"POST / HTTP/1.1\r\n" + WWW + b"Content-Length: 10\r\n\r\nhello")
    assert transport.producerState == "paused"  # no origin connection yet
    edge.refuse(0)
    edge.refuse(1)
    assert status_lines(transport.value()) == [b"HTTP/1.1 502 Bad Gateway"]
    assert transport.disconnecting or transport.producerState == "producing"
