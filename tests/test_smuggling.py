"""Hostile clients against the real edge and a recording origin (issue 11).

The origin here (tests/support/recorder.py) keeps the exact bytes of each request and
parses them with its own strict parser, so what it records is what the edge really sent.
The deterministic tests are the shapes found by review; the property test at the end has
hypothesis generate valid, borderline and hostile requests, pipelined on several client
connections in random splits, and checks the framing-agreement property: the origin sees
exactly the requests the edge accepted (same count, method, target and body bytes), and
no byte of one client connection appears in a request of another.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.edge import EdgeProcess
from tests.support.net import LOOPBACK, read_until_close
from tests.support.origin import Servers
from tests.support.pki import PKI
from tests.support.recorder import RecordingOrigin
from tests.support.waiting import wait_until

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

HOSTS = ("a.test", "b.test")
MAX_HEADER_BYTES = 4096


@attrs.frozen
class Setup:
    edge: EdgeProcess
    origin: RecordingOrigin


@pytest.fixture(scope="module")
def setup(
    reactor_thread: Any, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    """One edge and one recording TLS origin for the module: examples run by the hundred."""
    servers = Servers()
    origin = RecordingOrigin()
    port = servers.listen_tls(
        origin.factory, {name: pki.leaf(name) for name in HOSTS}, pki.leaf("default.test")
    )
    config = {
        "tls": {"ca_file": str(pki.ca_file)},
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 5, "body_idle": 5},
        "limits": {
            "max_header_bytes": MAX_HEADER_BYTES,
            "max_body_bytes": 65536,
            "client_header_timeout": 3,
            "client_idle_timeout": 3,
        },
        "domains": {
            name: {
                "origin_sni": {"enabled": True},
                "origins": [{"address": LOOPBACK, "port": port}],
            }
            for name in HOSTS
        },
    }
    edge = EdgeProcess(Path(tmp_path_factory.mktemp("smuggling")), config, wait_admin=False)
    edge.start()
    try:
        yield Setup(edge, origin)
    finally:
        problems = edge.teardown_problems()
        servers.stop_all()
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def edge(setup: Setup) -> EdgeProcess:
    setup.origin.clear()
    return setup.edge


@pytest.fixture
def origin(setup: Setup) -> RecordingOrigin:
    return setup.origin


# --- a strict client -----------------------------------------------------------------------


@attrs.frozen
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def record(self) -> int | None:
        """The origin's record index when the origin answered, None for the edge's own."""
        value = self.headers.get(b"x-rec")
        return None if value is None else int(value)


def read_answers(data: bytes, methods: list[bytes]) -> list[Answer]:
    """The responses in `data`, the i-th to a request of method methods[i]; 1xx skipped."""
    answers: list[Answer] = []
    while data:
        end = data.find(b"\r\n\r\n")
        assert end > 0, f"unterminated response head: {data[:200]!r}"
        lines = data[:end].split(b"\r\n")
        data = data[end + 4 :]
        match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) .*", lines[0])
        assert match, f"bad status line {lines[0]!r}"
        status = int(match.group(1))
        if 100 <= status < 200:
            continue
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        method = methods[len(answers)] if len(answers) < len(methods) else b"GET"
        if method == b"HEAD" or status in (204, 304):
            body = b""
        elif headers.get(b"transfer-encoding") == b"chunked":
            body, data = _dechunk(data)
        else:
            length = int(headers[b"content-length"])
            assert len(data) >= length, "response body cut short"
            body, data = data[:length], data[length:]
        answers.append(Answer(status, headers, body))
    return answers


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            assert data[:2] == b"\r\n"
            return body, data[2:]
        body, data = body + data[:size], data[size + 2 :]


def exchange(edge: EdgeProcess, pieces: list[bytes], timeout: float = 10.0) -> bytes:
    """Send `pieces` one send each (a pause between, so they arrive as separate reads),
    then read until the edge closes or `timeout` passes."""
    with socket.create_connection((LOOPBACK, edge.port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the edge closed on an earlier request: what it answered is read below
            time.sleep(0.002)
        return read_until_close(sock, time.monotonic() + timeout)


CLOSE = b"GET /end HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"


# --- the shapes found by review ------------------------------------------------------------


def upgrade_post(path: bytes, framing: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\n" + framing + b"\r\n"
    )


SMUGGLED = b"GET /SMUGGLED HTTP/1.1\r\nHost: a.test\r\n\r\n"


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
        (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)),
    ],
    ids=["content-length", "chunked"],
)
def test_upgrade_request_body_reaches_the_origin_as_its_body(
    edge: EdgeProcess, origin: RecordingOrigin, framing: bytes, body: bytes
) -> None:
    data = exchange(edge, [upgrade_post(b"/c", framing) + body + CLOSE])
    answers = read_answers(data, [b"POST", b"GET"])
    assert [a.status for a in answers] == [200, 200]
    records = origin.records
    assert [(r.method, r.target, r.body) for r in records] == [
        (b"POST", b"/c", SMUGGLED),
        (b"GET", b"/end", b""),
    ]
    assert records[0].header(b"upgrade") is None
    assert all(r.complete for r in records)
    assert origin.errors == []


def test_origin_answering_an_upgrade_post_early_cannot_poison_the_next_client(
    edge: EdgeProcess, origin: RecordingOrigin
) -> None:
    """The origin answers 404 before reading the body: its connection owes the body, so it
    must never carry another client's request (with that client's cookie) as that body."""
    attacker = upgrade_post(b"/early", b"Content-Length: 200\r\n") + b"A" * 200
    assert read_answers(exchange(edge, [attacker + CLOSE]), [b"POST", b"GET"])[0].status == 404
    victim = b"GET /private HTTP/1.1\r\nHost: a.test\r\nCookie: session=VICTIM\r\n"
    answers = read_answers(exchange(edge, [victim + b"Connection: close\r\n\r\n"]), [b"GET"])
    assert [a.status for a in answers] == [200]
    wait_until(lambda: len(origin.records) >= 3)
    private = [r for r in origin.records if r.target == b"/private"]
    assert len(private) == 1 and private[0].header(b"cookie") == b"session=VICTIM"
    assert all(b"VICTIM" not in r.body for r in origin.records)
    early = next(r for r in origin.records if r.target == b"/early")
    assert set(early.body) <= {ord("A")}
    assert origin.errors == []


def test_request_after_a_400_in_the_same_read_never_reaches_the_origin(
    edge: EdgeProcess, origin: RecordingOrigin
) -> None:
    data = exchange(
        edge,
        [
            b"GET /no-host HTTP/1.1\r\n\r\n"
            b"POST /after HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\nbody"
        ],
    )
    assert [a.status for a in read_answers(data, [b"GET"])] == [400]
    # A request for /end on a new connection: once it is logged, so would /after be.
    exchange(edge, [CLOSE])
    wait_until(lambda: "/end" in [r["path"] for r in edge.access_records()])
    paths = [r["path"] for r in edge.access_records()]
    assert "/no-host" in paths
    assert "/after" not in paths
    assert [r.target for r in origin.records] == [b"/end"]


def test_client_stalling_after_an_early_answer_is_closed_by_client_idle_timeout(
    edge: EdgeProcess, origin: RecordingOrigin
) -> None:
    """The origin answered before the body ended; the client then sends nothing more."""
    head = b"POST /early HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n"
    started = time.monotonic()
    data = exchange(edge, [head + b"x" * 10], timeout=20)
    assert [a.status for a in read_answers(data, [b"POST"])] == [404]
    assert time.monotonic() - started < 15  # closed (client_idle_timeout 3 s), not held open


def test_trailers_above_max_header_bytes_get_431(
    edge: EdgeProcess, origin: RecordingOrigin
) -> None:
    head = b"POST /t HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    trailer = b"X-Big: " + b"t" * 1000 + b"\r\n"
    pieces = [head + b"3\r\nabc\r\n0\r\n"] + [trailer] * 8 + [b"\r\n"]
    answers = read_answers(exchange(edge, pieces), [b"POST"])
    assert [(a.status, a.headers.get(b"x-edge-error")) for a in answers] == [
        (431, b"request_header_too_large")
    ]
    assert all(r.complete is False for r in origin.records)


def test_trailers_within_bounds_are_dropped_and_the_body_is_forwarded(
    edge: EdgeProcess, origin: RecordingOrigin
) -> None:
    head = b"POST /t HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = exchange(edge, [head + b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n" + CLOSE])
    assert [a.status for a in read_answers(data, [b"POST", b"GET"])] == [200, 200]
    first = origin.records[0]
    assert (first.body, first.complete) == (b"abc", True)
    assert origin.errors == []


def test_http09_request_gets_400(edge: EdgeProcess) -> None:
    """It used to get no answer at all: a reset once client_header_timeout passed."""
    assert edge.raw(b"GET /x\r\n", timeout=10).startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /x#frag HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    ],
    ids=["fragment", "duplicate-content-length"],
)
def test_ambiguous_targets_and_framing_get_400(
    edge: EdgeProcess, origin: RecordingOrigin, request_bytes: bytes
) -> None:
    assert edge.raw(request_bytes).startswith(b"HTTP/1.1 400 ")
    assert origin.records == []


def test_underscore_header_names_never_reach_the_origin(
    edge: EdgeProcess, origin: RecordingOrigin
) -> None:
    data = exchange(
        edge,
        [
            b"POST /u HTTP/1.1\r\nHost: a.test\r\nTransfer_Encoding: chunked\r\n"
            b"X_Forwarded_For: 6.6.6.6\r\nContent-Length: 3\r\n\r\nabc" + CLOSE
        ],
    )
    assert [a.status for a in read_answers(data, [b"POST", b"GET"])] == [200, 200]
    first = origin.records[0]
    assert first.body == b"abc"
    assert not any(b"_" in name for name, _ in first.headers)


def test_http10_chunked_request_closes_after_its_response(
    edge: EdgeProcess, origin: RecordingOrigin
) -> None:
    data = exchange(
        edge,
        [
            b"POST /10 HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n"
        ],
    )
    answers = read_answers(data, [b"POST"])
    assert [a.status for a in answers] == [200]
    assert answers[0].headers.get(b"connection") == b"close"
    assert [r.target for r in origin.records] == [b"/10"]


# --- the framing-agreement property ---------------------------------------------------------


@attrs.frozen
class Req:
    """One generated request: its bytes, and what a strict RFC 9112 reader makes of them."""

    wire: bytes
    method: bytes
    target: bytes
    body: bytes
    forwarded: bool  # the edge must forward it (False: it must refuse it)
    closes: bool = False  # after it, the edge may close the connection: later ones unanswered
    early: bool = False  # the origin answers before reading the body


# Valid, borderline and hostile shapes; `requests` says what a strict reader makes of each.
# fmt: off
KINDS = (
    "get", "length", "chunked", "upgrade", "expect", "early", "underscore", "unknown-host",
    "no-host", "cl-te", "te-cl", "two-cl", "te-gzip", "obs-fold", "bare-lf", "fragment",
    "http10-te", "head", "absolute", "te-capital", "cl-zeros", "te-twice", "chunk-size-space",
    "too-large", "close", "get-body",
)
# fmt: on
ALPHABETS = (b"ABCD", b"EFGH", b"IJKL")  # each client connection's body bytes: never mixed


@st.composite
def bodies(draw: Any, client: int) -> bytes:
    return draw(st.binary(max_size=0)) + bytes(
        draw(st.lists(st.sampled_from(ALPHABETS[client]), max_size=300))
    )


@st.composite
def chunked(draw: Any, body: bytes) -> bytes:
    """`body` chunked at random points, with optional chunk extensions and trailers."""
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b""
    for part in parts:
        if part:
            ext = draw(st.sampled_from([b"", b";x=1", b';name="v"']))
            out += b"%x%b\r\n%b\r\n" % (len(part), ext, part)
    trailers = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n", b"X-A: 1\r\nX-B: 2\r\n"]))
    return out + b"0\r\n" + trailers + b"\r\n"


@st.composite
def requests(draw: Any, client: int, index: int) -> Req:
    """One request on client connection `client`: valid, borderline or hostile."""
    kind = draw(st.sampled_from(KINDS))
    method = draw(st.sampled_from([b"POST", b"PUT", b"PATCH", b"DELETE"]))
    body = draw(bodies(client))
    target = b"/c%d-%d" % (client, index)
    host = b"Host: " + draw(st.sampled_from(HOSTS)).encode() + b"\r\n"
    length = b"Content-Length: %d\r\n" % len(body)
    te = b"Transfer-Encoding: chunked\r\n"

    def req(head: bytes, payload: bytes, forwarded: bool = True, **kw: Any) -> Req:
        return Req(head + b"\r\n" + payload, method, target, body, forwarded, **kw)

    start = method + b" " + target + b" HTTP/1.1\r\n"
    if kind == "get":
        method, body = b"GET", b""
        return req(b"GET " + target + b" HTTP/1.1\r\n" + host, b"")
    if kind == "head":
        method, body = b"HEAD", b""
        return req(b"HEAD " + target + b" HTTP/1.1\r\n" + host, b"")
    if kind == "length":
        return req(start + host + length, body)
    if kind == "chunked":
        return req(start + host + te, draw(chunked(body)))
    if kind == "upgrade":
        framing, payload = draw(st.sampled_from([(length, body), (te, None)]))
        payload = draw(chunked(body)) if payload is None else payload
        upgrade = (
            b"Connection: Upgrade\r\nUpgrade: "
            + draw(st.sampled_from([b"h2c", b"websocket"]))
            + b"\r\n"
        )
        return req(start + host + upgrade + framing, payload)
    if kind == "expect":
        return req(start + host + length + b"Expect: 100-continue\r\n", body)
    if kind == "early":
        target = b"/early-c%d-%d" % (client, index)
        start = method + b" " + target + b" HTTP/1.1\r\n"
        return attrs.evolve(req(start + host + length, body), target=target, early=True)
    if kind == "underscore":
        return req(start + host + b"Transfer_Encoding: chunked\r\n" + length, body)
    if kind == "unknown-host":
        # 421 keeps the connection, unless the body was still to come when it went out.
        unknown = start + b"Host: nowhere.test\r\n" + length
        return req(unknown, body, forwarded=False, closes=bool(body))
    if kind == "no-host":
        return req(start + length, body, forwarded=False, closes=True)
    if kind == "cl-te":
        return req(start + host + length + te, draw(chunked(body)), False, closes=True)
    if kind == "te-cl":
        return req(start + host + te + length, draw(chunked(body)), False, closes=True)
    if kind == "two-cl":
        return req(start + host + length + b"Content-Length: 1\r\n", body, False, closes=True)
    if kind == "te-gzip":
        te_gzip = b"Transfer-Encoding: gzip, chunked\r\n"
        return req(start + host + te_gzip, draw(chunked(body)), False, closes=True)
    if kind == "obs-fold":
        return req(start + host + b"X-A: b\r\n c\r\n" + length, body, False, closes=True)
    if kind == "bare-lf":
        return req(start + host + b"X-A: b\n" + length, body, False, closes=True)
    if kind == "fragment":
        head = method + b" " + target + b"#f HTTP/1.1\r\n" + host + length
        return req(head, body, False, closes=True)
    if kind == "absolute":
        absolute = method + b" http://a.test" + target + b" HTTP/1.1\r\n"
        return req(absolute + b"Host: a.test\r\n" + length, body)
    if kind == "te-capital":
        return req(start + host + b"Transfer-Encoding: Chunked\r\n", draw(chunked(body)))
    if kind == "cl-zeros":
        return req(start + host + b"Content-Length: 00%d\r\n" % len(body), body)
    if kind == "te-twice":
        twice = b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
        return req(start + host + twice, draw(chunked(body)), False, closes=True)
    if kind == "chunk-size-space":
        # Found only once the body is read: the head may have gone to the origin already.
        spaced = b"".join(b"%x \r\n%b\r\n" % (1, body[i : i + 1]) for i in range(len(body)))
        return req(start + host + te, spaced + b"0\r\n\r\n", not body, closes=bool(body))
    if kind == "too-large":
        return req(start + host + b"Content-Length: 70000\r\n", b"", False, closes=True)
    if kind == "close":
        return req(start + host + length + b"Connection: close\r\n", body, closes=True)
    if kind == "get-body":
        method = b"GET"
        return req(b"GET " + target + b" HTTP/1.1\r\n" + host + length, body)
    assert kind == "http10-te"
    head = method + b" " + target + b" HTTP/1.0\r\n" + host + b"Connection: keep-alive\r\n" + te
    return req(head, draw(chunked(body)), closes=True)


@st.composite
def connections(draw: Any) -> list[tuple[list[Req], list[bytes]]]:
    """1-3 client connections, each a few requests, their bytes split at random points."""
    out = []
    for client in range(draw(st.integers(1, 3))):
        reqs = [draw(requests(client, i)) for i in range(draw(st.integers(1, 4)))]
        wire = b"".join(r.wire for r in reqs) + CLOSE
        cuts = sorted(set(draw(st.lists(st.integers(1, len(wire) - 1), max_size=5))))
        pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        out.append((reqs, pieces))
    return out


@settings(
    # EDGENODE_PROPERTY_EXAMPLES=1000 for a deeper run than CI's.
    max_examples=int(os.environ.get("EDGENODE_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(conns=connections())
def test_origin_sees_exactly_the_requests_the_edge_accepted(
    setup: Setup, conns: list[tuple[list[Req], list[bytes]]]
) -> None:
    edge, origin = setup.edge, setup.origin
    origin.clear()
    # Interleave the clients' pieces so that their requests share the origin pool.
    socks = [socket.create_connection((LOOPBACK, edge.port), timeout=10) for _ in conns]
    try:
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for step in range(max(len(pieces) for _, pieces in conns)):
            for sock, (_, pieces) in zip(socks, conns, strict=True):
                if step < len(pieces):
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.sendall(pieces[step])
            time.sleep(0.002)
        received = [read_until_close(sock, time.monotonic() + 10) for sock in socks]
    finally:
        for sock in socks:
            sock.close()

    answered: dict[int, tuple[int, Req]] = {}  # origin record -> (client, request)
    for client, ((reqs, _), data) in enumerate(zip(conns, received, strict=True)):
        expected = [*reqs, Req(CLOSE, b"GET", b"/end", b"", True, closes=True)]
        answers = read_answers(data, [r.method for r in expected])
        assert len(answers) <= len(expected), f"client {client}: more answers than requests"
        for i, req in enumerate(expected):
            if i == len(answers):
                # Only a request that closes the connection may leave the rest unanswered
                # (itself too: a bad request pipelined behind one in flight is not
                # answered; the response in flight says `Connection: close`).
                assert any(r.closes for r in expected[: i + 1]), (
                    f"client {client}: request {i} {req.wire[:60]!r} got no answer"
                )
                break
            answer = answers[i]
            if req.forwarded:
                assert answer.record is not None, (
                    f"client {client}: {req.wire[:80]!r} was not forwarded: {answer}"
                )
                answered[answer.record] = (client, req)
            else:
                assert answer.record is None, f"client {client}: {req.wire[:80]!r} forwarded"
                assert 400 <= answer.status < 500

    # The origin saw those requests and nothing else; each whole, and from its own client.
    wait_until(lambda: len(origin.records) >= len(answered))
    time.sleep(0.05)
    records = origin.records
    assert origin.errors == []
    assert set(answered) <= {r.index for r in records}
    refused = {(c, r.target) for c, (reqs, _) in enumerate(conns) for r in reqs if not r.forwarded}
    for record in records:
        if record.index not in answered:
            # A request the edge refused once it read a bad part of its body, after its head
            # went out: the origin got it cut off, never complete.
            client = int(record.target[2 : record.target.index(b"-")])
            assert (client, record.target) in refused, f"the origin saw another request {record}"
            assert not record.complete
            assert set(record.body) <= set(ALPHABETS[client])
            continue
        client, req = answered[record.index]
        assert (record.method, record.target) == (req.method, req.target)
        if req.early:
            # Answered before its body: the rest of the body may never have been sent.
            assert req.body.startswith(record.body)
        else:
            assert record.complete and record.body == req.body
        assert set(record.body) <= set(ALPHABETS[client])
