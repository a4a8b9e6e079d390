"""Tests for edgenode.datapath.downstream: the client-facing HTTP/1.1 protocol, in memory.

The handler is the fake at the edge: it records what the protocol hands it and answers
through the real ClientStream, the way proxy.Proxy does.
"""

from __future__ import annotations

import pytest

from edgenode.config import Limits
from edgenode.errors import ErrorCode
from tests.support.memory_client import HOST, Client
from tests.support.transport import head_of, status_lines

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

# --- Parsing ---------------------------------------------------------------------------------


def test_simple_get_is_parsed_into_a_request_head() -> None:
    """A GET becomes a RequestHead with method, origin-form path, version, normalised host."""
    c = Client()
    c.send(b"GET /a/b?c=1 HTTP/1.1\r\nHost: WWW.Example.COM.:8080\r\nAccept: */*\r\n\r\n")
    (sink,) = c.sinks
    head = sink.head
    assert head.method == b"GET"
    assert head.path == b"/a/b?c=1"
    assert head.version == b"1.1"
    assert head.host == "www.example.com"
    assert head.host_header == b"WWW.Example.COM.:8080"
    assert head.keep_alive is True
    assert head.has_body is False
    assert (b"Accept", b"*/*") in head.headers
    assert sink.events == [("end",)]


def test_absolute_form_target_names_the_host_and_becomes_origin_form() -> None:
    """An absolute-form target wins over Host (RFC 9112 §3.2.2) and is forwarded in origin form."""
    c = Client()
    c.send(b"GET http://Img.Example.com:8080/p?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
    (sink,) = c.sinks
    assert sink.head.host == "img.example.com"
    assert sink.head.path == b"/p?q=1"


def test_missing_host_reaches_the_handler_with_no_host() -> None:
    """A request without Host is handed over with host None, for the proxy to answer 400."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\n\r\n")
    (sink,) = c.sinks
    assert sink.head.host is None


@pytest.mark.parametrize(
    "host",
    [b"www.example .com", b"user@www.example.com", b"www.example.com:99999", b"a:port", b""],
    ids=["space", "userinfo", "port-out-of-range", "port-not-digits", "empty"],
)
def test_invalid_host_is_refused_with_400(host: bytes) -> None:
    """An unusable Host value is answered 400 bad_request and never reaches start()."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert c.sinks == []
    assert c.handler.refused[0][0] is ErrorCode.BAD_REQUEST
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]
    assert c.transport.disconnecting


def test_two_host_headers_are_refused_with_400() -> None:
    """A request with two Host headers is ambiguous and is answered 400."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
    assert c.sinks == []
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]


def test_connect_is_refused_with_400() -> None:
    """CONNECT is not proxied: 400, and the handler never starts an exchange."""
    c = Client()
    c.send(b"CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com:443\r\n\r\n")
    assert c.sinks == []
    assert c.handler.refused[0][0] is ErrorCode.BAD_REQUEST
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]
    assert c.transport.disconnecting


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
        b"hello",
        b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"hello!",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: b\r\n c\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a.example\n\n",
        b"GET / HTTP/1.1\r\nHost: a.example\nX-A: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "duplicate-cl",
        "conflicting-cl",
        "obs-fold",
        "bare-lf",
        "bare-lf-in-headers",
        "space-before-colon",
    ],
)
def test_smuggling_shapes_are_refused_with_400(request_bytes: bytes) -> None:
    """Ambiguous framing is answered 400 and closed; the handler never gets a start()."""
    c = Client()
    c.send(request_bytes)
    assert c.sinks == []
    assert c.handler.refused[0][0] is ErrorCode.BAD_REQUEST
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]
    assert b"Connection: close" in head_of(c.written())
    assert c.transport.disconnecting


def test_garbage_is_refused_with_400() -> None:
    """Bytes that are not HTTP at all get 400 and a close."""
    c = Client()
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert c.sinks == []
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]
    assert c.transport.disconnecting


# --- Limits ----------------------------------------------------------------------------------


def test_head_above_max_header_bytes_is_refused_with_431() -> None:
    """A complete head larger than max_header_bytes is answered 431 before any start()."""
    c = Client(Limits(max_header_bytes=1024))
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 2000 + b"\r\n\r\n")
    assert c.sinks == []
    assert c.handler.refused[0][0] is ErrorCode.REQUEST_HEADER_TOO_LARGE
    assert status_lines(c.written()) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert c.transport.disconnecting


def test_unfinished_head_above_max_header_bytes_is_refused_with_431() -> None:
    """A head growing past max_header_bytes is cut off with 431 before it ends."""
    c = Client(Limits(max_header_bytes=1024))
    c.send(b"GET / HTTP/1.1\r\n" + HOST)
    for _ in range(30):
        c.send(b"X-Filler: " + b"a" * 50 + b"\r\n")
    assert c.sinks == []
    assert status_lines(c.written()) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert c.transport.disconnecting


def test_content_length_above_max_body_bytes_is_refused_with_413_without_continue() -> None:
    """Content-Length above max_body_bytes gets 413 and a close, never `100 Continue`."""
    c = Client(Limits(max_body_bytes=10))
    c.send(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    assert c.sinks == []
    assert c.handler.refused[0][0] is ErrorCode.REQUEST_TOO_LARGE
    assert b"100 Continue" not in c.written()
    assert status_lines(c.written()) == [b"HTTP/1.1 413 Content Too Large"]
    assert b"Connection: close" in head_of(c.written())
    assert c.transport.disconnecting


def test_content_length_at_max_body_bytes_is_accepted() -> None:
    """A body of exactly max_body_bytes is delivered."""
    c = Client(Limits(max_body_bytes=10))
    c.send(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\n0123456789")
    (sink,) = c.sinks
    assert sink.body_bytes == b"0123456789"
    assert sink.events[-1] == ("end",)


def test_chunked_body_going_over_max_body_bytes_is_rejected_with_413() -> None:
    """A chunked body growing past max_body_bytes is rejected with 413, then closed."""
    c = Client(Limits(max_body_bytes=10))
    c.send(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n")
    c.send(b"6\r\nabcdef\r\n")
    c.send(b"6\r\nghijkl\r\n0\r\n\r\n")
    (sink,) = c.sinks
    assert sink.body_bytes == b"abcdef"
    assert ("reject", ErrorCode.REQUEST_TOO_LARGE) in sink.events
    assert ("end",) not in sink.events
    assert status_lines(c.written()) == [b"HTTP/1.1 413 Content Too Large"]
    assert c.transport.disconnecting


def test_zero_max_body_bytes_means_no_limit() -> None:
    """max_body_bytes 0 accepts any Content-Length."""
    c = Client(Limits(max_body_bytes=0))
    c.send(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 20\r\n\r\n" + b"x" * 20)
    (sink,) = c.sinks
    assert sink.body_bytes == b"x" * 20


# --- Bodies ------------------------------------------------------------------------------------


def test_content_length_body_is_delivered_to_the_sink() -> None:
    """A Content-Length body reaches the sink byte for byte, then end()."""
    c = Client()
    c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 11\r\n\r\nhello")
    c.send(b" world")
    (sink,) = c.sinks
    assert sink.head.content_length == 11
    assert sink.head.has_body
    assert sink.body_bytes == b"hello world"
    assert sink.events[-1] == ("end",)


def test_chunked_body_is_delivered_decoded() -> None:
    """A chunked body reaches the sink without its chunk framing."""
    c = Client()
    c.send(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n")
    c.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    (sink,) = c.sinks
    assert sink.head.chunked
    assert sink.body_bytes == b"hello world"
    assert sink.events[-1] == ("end",)


def test_expect_100_continue_is_answered() -> None:
    """`Expect: 100-continue` gets `HTTP/1.1 100 Continue` before the body is read."""
    c = Client()
    c.send(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert c.written() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hello")
    (sink,) = c.sinks
    assert sink.body_bytes == b"hello"


def test_unknown_expectation_is_refused_with_400() -> None:
    """An Expect value other than 100-continue is answered 400."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"Expect: teapot\r\n\r\n")
    assert c.sinks == []
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]


# --- Keep-alive and pipelining ------------------------------------------------------------------


def test_keep_alive_serves_two_sequential_requests() -> None:
    """After a complete response, the same connection serves the next request."""
    c = Client()
    c.send(b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\n")
    c.sinks[0].respond(b"one")
    c.send(b"GET /2 HTTP/1.1\r\n" + HOST + b"\r\n")
    c.sinks[1].respond(b"two")
    assert [s.head.path for s in c.sinks] == [b"/1", b"/2"]
    assert status_lines(c.written()) == [b"HTTP/1.1 200 OK"] * 2
    assert c.written().endswith(b"two")
    assert not c.transport.disconnecting


def test_pipelined_requests_are_served_one_at_a_time_in_order() -> None:
    """A second pipelined request starts only once the first response ended; reading is paused."""
    c = Client()
    c.send(b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\nGET /2 HTTP/1.1\r\n" + HOST + b"\r\n")
    assert [s.head.path for s in c.sinks] == [b"/1"]
    assert c.transport.producerState == "paused"
    c.sinks[0].respond(b"first")
    assert [s.head.path for s in c.sinks] == [b"/1", b"/2"]
    assert c.transport.producerState == "producing"
    c.sinks[1].respond(b"second")
    out = c.written()
    assert out.index(b"first") < out.index(b"second")
    assert status_lines(out) == [b"HTTP/1.1 200 OK"] * 2


def test_pipelined_request_body_waits_for_its_turn() -> None:
    """The body of a queued pipelined request reaches its sink once that request starts."""
    c = Client()
    c.send(
        b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\n"
        b"POST /2 HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\n\r\nbody"
    )
    assert len(c.sinks) == 1
    c.sinks[0].respond()
    second = c.sinks[1]
    assert second.events == [("body", b"body"), ("end",)]


def test_nothing_after_a_connection_close_request_is_served() -> None:
    """A request after one with `Connection: close` is never started; the connection closes."""
    c = Client()
    c.send(
        b"GET /1 HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
        b"GET /2 HTTP/1.1\r\n" + HOST + b"\r\n"
    )
    c.sinks[0].respond()
    assert [s.head.path for s in c.sinks] == [b"/1"]
    assert b"Connection: close" in head_of(c.written())
    assert c.transport.disconnecting


# --- Response framing --------------------------------------------------------------------------


def test_response_with_length_is_framed_by_content_length() -> None:
    """start_response with a length sends Content-Length and the body as is."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    c.sinks[0].respond(b"hello")
    assert c.written() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_response_without_length_is_chunked_for_http11() -> None:
    """start_response without a length chunks send_body and ends with the last chunk."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    stream = c.sinks[0].stream
    stream.start_response(200, b"OK", [b"X-A: 1"], None, no_body=False)
    stream.send_body(b"hello")
    stream.send_body(b"")
    stream.send_body(b"0123456789abcdef")
    stream.end_response()
    assert c.written() == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
    )
    assert not c.transport.disconnecting


def test_http10_client_gets_a_close_delimited_body() -> None:
    """An HTTP/1.0 client and a response of unknown length: raw body, Connection: close, closed."""
    c = Client()
    c.send(b"GET / HTTP/1.0\r\n" + HOST + b"\r\n")
    (sink,) = c.sinks
    assert sink.head.keep_alive is False
    sink.respond(b"hello", length=False)
    head, body = c.written().split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head
    assert b"Content-Length" not in head
    assert b"Connection: close" in head
    assert body == b"hello"
    assert c.transport.disconnecting


def test_http10_keep_alive_client_is_told_keep_alive() -> None:
    """An HTTP/1.0 client asking for keep-alive gets `Connection: keep-alive` and stays open."""
    c = Client()
    c.send(b"GET / HTTP/1.0\r\n" + HOST + b"Connection: keep-alive\r\n\r\n")
    c.sinks[0].respond(b"hi")
    assert b"Connection: keep-alive" in head_of(c.written())
    assert not c.transport.disconnecting


@pytest.mark.parametrize(
    ("request_line", "status", "length", "expected_length"),
    [
        (b"HEAD / HTTP/1.1", 200, 10, b"Content-Length: 10"),
        (b"HEAD / HTTP/1.1", 200, None, None),
        (b"GET / HTTP/1.1", 204, 0, None),
        (b"GET / HTTP/1.1", 304, 10, b"Content-Length: 10"),
        (b"GET / HTTP/1.1", 304, None, None),
    ],
    ids=["head-with-length", "head-without-length", "204", "304-with-length", "304-no-length"],
)
def test_no_body_responses_have_no_body_framing(
    request_line: bytes, status: int, length: int | None, expected_length: bytes | None
) -> None:
    """HEAD/204/304: no chunked framing, no body, no Content-Length on 204; keep-alive survives."""
    c = Client()
    c.send(request_line + b"\r\n" + HOST + b"\r\n")
    stream = c.sinks[0].stream
    stream.start_response(status, b"", [], length, no_body=True)
    stream.end_response()
    out = c.written()
    assert out.endswith(b"\r\n\r\n")
    head = head_of(out)
    assert b"Transfer-Encoding" not in head
    lengths = [line for line in head.split(b"\r\n") if line.startswith(b"Content-Length")]
    assert lengths == ([expected_length] if expected_length else [])
    c.send(b"GET /next HTTP/1.1\r\n" + HOST + b"\r\n")
    assert len(c.sinks) == 2


def test_send_error_names_code_and_request_id() -> None:
    """An edge error response carries the code and request id in headers and body."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    c.sinks[0].stream.send_error(ErrorCode.ORIGIN_TIMEOUT, "abc123")
    head, body = c.written().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert b"X-Edge-Request-Id: abc123" in head
    assert b"X-Edge-Error: origin_timeout" in head
    assert b"Content-Length: %d" % len(body) in head
    assert b"origin_timeout" in body and b"abc123" in body


# --- Timeouts and connection loss ------------------------------------------------------------


def test_idle_client_is_closed_after_client_idle_timeout() -> None:
    """A connection that sends nothing is closed once client_idle_timeout passes."""
    c = Client(Limits(client_idle_timeout=60, client_header_timeout=10))
    c.clock.advance(59.9)
    assert not c.transport.disconnecting
    c.clock.advance(0.2)
    assert c.transport.disconnecting


def test_idle_timeout_restarts_after_each_response() -> None:
    """Keep-alive idleness is counted from the end of the last response."""
    c = Client(Limits(client_idle_timeout=60, client_header_timeout=10))
    c.clock.advance(50)
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    c.clock.advance(100)  # a slow exchange is not idleness
    assert not c.transport.disconnecting
    c.sinks[0].respond()
    c.clock.advance(59.9)
    assert not c.transport.disconnecting
    c.clock.advance(0.2)
    assert c.transport.disconnecting


def test_partial_head_is_closed_after_client_header_timeout() -> None:
    """A head trickling in (slowloris) is cut off client_header_timeout after it began."""
    c = Client(Limits(client_idle_timeout=60, client_header_timeout=10))
    c.send(b"GET / HTTP/1.1\r\n")
    for _ in range(9):
        c.clock.advance(1)
        c.send(b"X: y\r\n")
    assert not c.transport.disconnecting
    c.clock.advance(1.1)
    assert c.transport.disconnecting
    assert c.sinks == []


def test_client_disconnect_mid_exchange_tells_the_sink() -> None:
    """A client that goes away before its response ends makes the sink hear client_lost()."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    c.lose()
    assert c.sinks[0].events[-1] == ("client_lost",)


def test_client_disconnect_after_response_does_not_tell_the_sink() -> None:
    """A sink whose response completed hears nothing when the client later leaves."""
    c = Client()
    c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    c.sinks[0].respond()
    c.lose()
    assert ("client_lost",) not in c.sinks[0].events


@pytest.mark.parametrize(
    "scenario", ["idle-close", "after-exchange", "mid-exchange", "timed-out", "refused"]
)
def test_no_timer_is_left_after_the_connection_closes(scenario: str) -> None:
    """Once a client connection is lost, no DelayedCall of it remains on the clock."""
    c = Client()
    if scenario == "after-exchange":
        c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
        c.sinks[0].respond()
    elif scenario == "mid-exchange":
        c.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    elif scenario == "timed-out":
        c.send(b"GET / HTTP/1.1\r\n")
        c.clock.advance(c.factory.limits.client_header_timeout)
        assert c.transport.disconnecting
    elif scenario == "refused":
        c.send(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        assert c.transport.disconnecting
    c.lose()
    assert c.clock.getDelayedCalls() == []
    assert c.proto not in c.factory.connections


def test_drain_closes_an_idle_connection_and_finishes_a_busy_one() -> None:
    """Graceful shutdown: idle connections close now, busy ones after their response."""
    idle, busy = Client(), Client()
    busy.send(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    idle.proto.drain()
    busy.proto.drain()
    assert idle.transport.disconnecting
    assert not busy.transport.disconnecting
    busy.sinks[0].respond()
    assert b"Connection: close" in head_of(busy.written())
    assert busy.transport.disconnecting
