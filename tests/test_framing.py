"""Request framing against hostile clients (issue 11), on the client protocol in memory.

Each test is a shape that once let bytes of a request be read as something else: an
Upgrade request whose body became the next request, requests parsed after an answer that
closes the connection, a half-read body that kept a connection forever, trailers and
chunk extensions without bound, and the smaller RFC 9112 gaps. The end-to-end proof
through the real edge and a recording origin is tests/test_framing_property.py.
"""

from __future__ import annotations

import pytest

from edgenode.config import Limits
from edgenode.datapath.downstream import ClientStream, RequestHead
from edgenode.datapath.headers import DROP, REQUEST_ACTIONS, scan_request
from edgenode.errors import ErrorCode
from tests.support.memory_client import HOST, Client, RecordingHandler, RecordingSink
from tests.support.transport import status_lines

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

SMUGGLED = b"GET /SMUGGLED HTTP/1.1\r\n" + HOST + b"\r\n"


def upgrade_post(framing: bytes) -> bytes:
    return (
        b"POST /c HTTP/1.1\r\n" + HOST + b"Connection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n" + framing + b"\r\n"
    )


# --- Upgrade: the body is framed as without the header --------------------------------------


def test_upgrade_request_body_by_content_length_is_its_body_not_a_request() -> None:
    c = Client()
    c.send(upgrade_post(b"Content-Length: %d\r\n" % len(SMUGGLED)) + SMUGGLED)
    (sink,) = c.sinks
    assert sink.body_bytes == SMUGGLED
    assert sink.events[-1] == ("end",)
    sink.respond()
    assert status_lines(c.written()) == [b"HTTP/1.1 200 OK"]
    assert not c.transport.disconnecting


def test_upgrade_request_chunked_body_is_decoded_and_the_next_request_follows() -> None:
    c = Client()
    c.send(upgrade_post(b"Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n")
    c.send(b"GET /next HTTP/1.1\r\n" + HOST + b"\r\n")
    first = c.sinks[0]
    assert first.body_bytes == b"hello"
    first.respond()
    assert [s.head.path for s in c.sinks] == [b"/c", b"/next"]
    assert c.sinks[1].events == [("end",)]


@pytest.mark.parametrize("split", [1, 7, 60, 200])
def test_upgrade_request_split_anywhere_gives_the_same_requests(split: int) -> None:
    data = upgrade_post(b"Content-Length: %d\r\n" % len(SMUGGLED)) + SMUGGLED + SMUGGLED
    c = Client()
    for i in range(0, len(data), split):
        c.send(data[i : i + split])
        for sink in c.sinks:
            if not sink.stream.started and ("end",) in sink.events:
                sink.respond()
    assert [s.head.path for s in c.sinks] == [b"/c", b"/SMUGGLED"]
    assert c.sinks[0].body_bytes == SMUGGLED


def test_upgrade_without_body_is_served_as_plain_http_and_headers_are_not_forwarded() -> None:
    c = Client()
    c.send(
        b"GET /ws HTTP/1.1\r\n" + HOST + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /2 HTTP/1.1\r\n" + HOST + b"\r\n"
    )
    c.sinks[0].respond()
    assert [s.head.path for s in c.sinks] == [b"/ws", b"/2"]
    forwarded = b"\r\n".join(c.sinks[0].head.scan.forward).lower()
    assert b"upgrade" not in forwarded


# --- Nothing is parsed after an answer that closes -------------------------------------------


class AnswersAtOnce(RecordingHandler):
    """Answers every request 400 inside start(), as the proxy does for a request without Host."""

    def start(self, head: RequestHead, stream: ClientStream) -> RecordingSink:
        sink = super().start(head, stream)
        stream.send_error(ErrorCode.BAD_REQUEST, "test-id")
        return sink


def test_request_after_a_closing_error_in_the_same_read_is_never_started() -> None:
    c = Client()
    c.handler = handler = AnswersAtOnce()
    c.proto.handler = handler
    c.send(
        b"GET /no-host HTTP/1.1\r\n\r\n"
        b"POST /after HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\n\r\nbody"
    )
    assert [s.head.path for s in handler.sinks] == [b"/no-host"]
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]
    assert c.transport.disconnecting


# --- An answer before the whole body ------------------------------------------------------------


def early_answer(limits: Limits | None = None) -> Client:
    c = Client(limits)
    c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
    c.sinks[0].respond(b"no")
    return c


def test_client_stalling_after_an_early_answer_is_cut_off_at_client_idle_timeout() -> None:
    c = early_answer(Limits(client_idle_timeout=5.0))
    c.clock.advance(4.0)
    c.send(b"x" * 10)  # progress renews the deadline
    c.clock.advance(4.0)
    assert not c.transport.disconnecting
    c.clock.advance(1.5)
    assert c.transport.disconnecting or c.transport.disconnected


def test_bad_chunk_after_an_early_answer_closes_the_connection() -> None:
    c = Client()
    c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    c.sinks[0].respond(b"no")
    c.send(b"zz\r\n")
    assert c.transport.disconnecting
    assert status_lines(c.written()) == [b"HTTP/1.1 200 OK"]


def test_rest_of_the_body_after_an_early_answer_is_dropped_and_keep_alive_goes_on() -> None:
    c = early_answer()
    c.send(b"x" * 90 + b"GET /2 HTTP/1.1\r\n" + HOST + b"\r\n")
    assert [s.head.path for s in c.sinks] == [b"/up", b"/2"]


# --- Trailers and chunk extensions are bounded ----------------------------------------------


def chunked_post() -> bytes:
    return b"POST /t HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"


def test_trailers_are_read_dropped_and_never_become_headers() -> None:
    c = Client()
    c.send(chunked_post() + b"X-Trailer: 1\r\n\r\n")
    (sink,) = c.sinks
    assert sink.events == [("body", b"abc"), ("end",)]
    assert all(name != b"X-Trailer" for name, _ in sink.head.headers)


def test_many_small_trailers_above_max_header_bytes_get_431() -> None:
    c = Client(Limits(max_header_bytes=1024))
    c.send(chunked_post() + b"X-T: aaaaaaaaaaaaaaaa\r\n" * 100)
    assert ("reject", ErrorCode.REQUEST_HEADER_TOO_LARGE) in c.sinks[0].events
    assert c.transport.disconnecting


@pytest.mark.parametrize(
    "endless",
    [b"X-Trailer: " + b"a" * 4096, b"1;" + b"e" * 4096],
    ids=["one-long-trailer", "chunk-extension"],
)
def test_a_field_that_never_ends_is_cut_at_max_header_bytes(endless: bytes) -> None:
    """The parser holds a field until its line ends: the bytes are counted per read."""
    c = Client(Limits(max_header_bytes=1024))
    c.send(b"POST /t HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    prefix = b"0\r\n" if endless.startswith(b"X-") else b""
    c.send(prefix + endless[:100])
    for i in range(100, len(endless), 512):
        c.send(endless[i : i + 512])
    assert ("reject", ErrorCode.REQUEST_HEADER_TOO_LARGE) in c.sinks[0].events
    assert c.transport.disconnecting


def test_slow_chunked_upload_with_small_chunks_is_not_cut() -> None:
    """Chunk-size lines that bring body bytes reset the count: only bytes with no body count."""
    c = Client(Limits(max_header_bytes=1024))
    c.send(b"POST /t HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(2000):
        c.send(b"1\r\n")
        c.send(b"a\r\n")
    c.send(b"0\r\n\r\n")
    (sink,) = c.sinks
    assert sink.body_bytes == b"a" * 2000
    assert sink.events[-1] == ("end",)


# --- Smaller RFC 9112 gaps ------------------------------------------------------------------------


def test_http10_request_with_transfer_encoding_closes_after_its_response() -> None:
    c = Client()
    c.send(
        b"POST / HTTP/1.0\r\n" + HOST + b"Connection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    (sink,) = c.sinks
    assert not sink.head.keep_alive
    sink.respond()
    assert c.transport.disconnecting


def test_http09_request_line_is_answered_400_at_once() -> None:
    c = Client()
    c.send(b"GET /x\r\n")
    assert c.sinks == []
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]
    assert c.transport.disconnecting


def test_request_line_split_before_its_newline_is_not_taken_for_http09() -> None:
    c = Client()
    c.send(b"GET /x HTTP/1.1")
    c.send(b"\r\n")
    c.send(HOST + b"\r\n")
    assert [s.head.path for s in c.sinks] == [b"/x"]


def test_fragment_in_the_request_target_is_refused_with_400() -> None:
    c = Client()
    c.send(b"GET /x#frag HTTP/1.1\r\n" + HOST + b"\r\n")
    assert c.sinks == []
    assert status_lines(c.written()) == [b"HTTP/1.1 400 Bad Request"]


@pytest.mark.parametrize("name", [b"Transfer_Encoding", b"X_Forwarded_For", b"content_length"])
def test_header_names_with_underscores_are_not_forwarded(name: bytes) -> None:
    assert REQUEST_ACTIONS[name] == DROP
    scan = scan_request([(b"Host", b"a"), (name, b"chunked"), (b"X-Ok", b"1")])
    assert scan.forward == [b"X-Ok: 1"]


# --- Pipelining order ------------------------------------------------------------------------


class AnswersUnknownHostsAtOnce(RecordingHandler):
    """Answers 421 inside start() for nowhere.test, as the proxy does for an unknown domain."""

    def start(self, head: RequestHead, stream: ClientStream) -> RecordingSink:
        sink = super().start(head, stream)
        if head.host == "nowhere.test":
            stream.send_error(ErrorCode.UNKNOWN_DOMAIN, "test-id")
        return sink


def test_requests_answered_at_once_in_the_queue_keep_the_order_of_the_responses() -> None:
    """Found by the property test: a queued request answered inside start() (a 421) made
    the queue skip over the exchange after it, and the 421 behind that one went out first."""
    c = Client()
    c.handler = handler = AnswersUnknownHostsAtOnce()
    c.proto.handler = handler
    other = b"Host: nowhere.test\r\n"
    c.send(
        b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\n"
        b"GET /2 HTTP/1.1\r\n" + other + b"\r\n"
        b"GET /3 HTTP/1.1\r\n" + HOST + b"\r\n"
        b"GET /4 HTTP/1.1\r\n" + other + b"\r\n"
    )
    handler.sinks[0].respond(b"one")
    assert [s.head.path for s in handler.sinks] == [b"/1", b"/2", b"/3"]  # /4 waits for /3
    handler.sinks[2].respond(b"three")
    assert [s.head.path for s in handler.sinks] == [b"/1", b"/2", b"/3", b"/4"]
    assert status_lines(c.written()) == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 421 Misdirected Request",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 421 Misdirected Request",
    ]
