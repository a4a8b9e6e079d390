"""Integration: HTTP/1.1 semantics through the real edge (SPEC §4).

Routing by host, hop-by-hop and forwarding headers, message framing (HEAD, 204/304,
chunked both ways, HTTP/1.0, pipelining), streaming large bodies with backpressure,
Expect: 100-continue, the client-side limits, and request-smuggling shapes. The edge is
the real `twistd` process; the origin is the in-process TLS origin of conftest.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.edge import EdgeProcess, Response, send
from tests.support.net import LOOPBACK
from tests.support.origin import TLSOrigin, pattern
from tests.support.pki import PKI
from tests.support.procfs import rss_bytes

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

EdgeFactory = Callable[..., EdgeProcess]
MiB = 1024 * 1024


def edge_config(pki: PKI, origin: TLSOrigin, **extra: Any) -> dict[str, Any]:
    """Domains a.test and b.test (origin SNI on) on the conftest origin, trusting the test CA."""
    domains = {
        name: {
            "origin_sni": {"enabled": True},
            "origins": [{"address": origin.address, "port": origin.port}],
        }
        for name in ("a.test", "b.test")
    }
    config: dict[str, Any] = {
        "tls": {"ca_file": str(pki.ca_file)},
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 10, "body_idle": 10},
        "domains": domains,
    }
    config.update(extra)
    return config


@pytest.fixture
def edge(edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI) -> EdgeProcess:
    """An edge with a.test and b.test on the conftest origin and default limits."""
    return edge_factory(edge_config(pki, origin), wait_admin=False)


def header_names(record: dict[str, Any]) -> list[str]:
    """Lower-case header names of an origin request record."""
    return [name.lower() for name, _ in record["headers"]]


def header_values(record: dict[str, Any], name: str) -> list[str]:
    return [value for n, value in record["headers"] if n.lower() == name.lower()]


class _KeepOpenReader(io.BufferedReader):
    """A socket reader that http.client cannot close, so several responses share its buffer."""

    def close(self) -> None:
        pass


class _SocketReader:
    def __init__(self, sock: socket.socket) -> None:
        self._file = _KeepOpenReader(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]

    def makefile(self, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return self._file


def read_responses(sock: socket.socket, methods: list[str]) -> list[Response]:
    """Parse one response per request method, in order, from a raw socket."""
    reader = _SocketReader(sock)
    out = []
    for method in methods:
        resp = http.client.HTTPResponse(reader, method=method)  # type: ignore[arg-type]
        resp.begin()
        out.append(Response(resp.status, resp.reason, list(resp.getheaders()), resp.read()))
    return out


def raw_connection(edge: EdgeProcess, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((LOOPBACK, edge.port), timeout=timeout)


def split_response(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers lower-cased, body as sent) of one raw response."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- routing ---------------------------------------------------------------------------


def test_unknown_host_gets_421_naming_the_error_and_request_id(edge: EdgeProcess):
    """A host no domain matches gets 421 unknown_domain; the body and log carry the request id."""
    resp = edge.request("GET", "/x", host="nowhere.test")
    assert resp.status == 421
    request_id = resp.header("X-Edge-Request-Id")
    assert request_id
    assert "unknown_domain" in resp.text
    assert request_id in resp.text
    record = edge.record(request_id)
    assert (record["status"], record["error"], record["host"]) == (
        421,
        "unknown_domain",
        "nowhere.test",
    )


def test_missing_host_gets_400(edge: EdgeProcess, origin: TLSOrigin):
    """An HTTP/1.0 request without Host cannot be routed: 400 bad_request, nothing sent upstream."""
    data = edge.raw(b"GET /x HTTP/1.0\r\n\r\n")
    status, headers, body = split_response(data)
    assert status.startswith("HTTP/1.1 400"), data
    assert b"bad_request" in body
    record = edge.record(headers.get("x-edge-request-id"))
    assert (record["status"], record["error"]) == (400, "bad_request")
    assert origin.requests == []


def test_absolute_form_target_selects_the_domain_by_its_authority(
    edge: EdgeProcess, origin: TLSOrigin
):
    """An absolute-form target routes by its authority, not Host, and goes upstream origin-form."""
    resp = edge.request("GET", "http://a.test/abs?q=1", host="b.test")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert (body["vhost"], body["host"], body["path"]) == ("a.test", "a.test", "/abs?q=1")
    assert edge.record(resp.header("X-Edge-Request-Id"))["domain"] == "a.test"


def test_host_with_port_trailing_dot_and_upper_case_is_normalised(
    edge: EdgeProcess, origin: TLSOrigin
):
    """Host `A.TEST.:8080` selects domain a.test."""
    resp = edge.request("GET", "/n", host="A.TEST.:8080")
    assert resp.status == 200, resp.text
    assert resp.json()["vhost"] == "a.test"
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert (record["host"], record["domain"]) == ("a.test", "a.test")


# -- headers ---------------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_dropped_and_forwarding_headers_set(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """Hop-by-hop and Connection-listed headers never reach the origin; XFF, Via, Host are set."""
    config = edge_config(pki, origin)
    config["domains"]["site.test"] = {
        "origin_host": "a.test",
        "origin_sni": {"enabled": True},
        "origins": [{"address": origin.address, "port": origin.port}],
    }
    edge = edge_factory(config, wait_admin=False)
    resp = edge.request(
        "GET",
        "/h",
        host="site.test",
        headers=[
            ("Connection", "X-Foo"),
            ("X-Foo", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Custom", "kept"),
        ],
    )
    assert resp.status == 200, resp.text
    seen = resp.json()
    names = header_names(seen)
    for hop in ("connection", "x-foo", "keep-alive", "te", "proxy-connection"):
        assert hop not in names, f"{hop} reached the origin: {seen['headers']}"
    assert header_values(seen, "X-Custom") == ["kept"]
    assert header_values(seen, "X-Forwarded-For") == ["1.2.3.4, 127.0.0.1"]
    assert header_values(seen, "X-Forwarded-Proto") == ["http"]
    assert header_values(seen, "X-Forwarded-Host") == ["site.test"]
    assert header_values(seen, "Via") == ["1.1 edgenode"]
    assert header_values(seen, "Host") == ["a.test"]
    assert (seen["vhost"], seen["sni"]) == ("a.test", "a.test")
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert record["client"] == "127.0.0.1"
    assert record["domain"] == "site.test"


def test_hop_by_hop_response_headers_do_not_reach_the_client(edge: EdgeProcess):
    """The origin's Connection-listed header and Keep-Alive are dropped; other headers pass."""
    resp = edge.request("GET", "/hop", host="a.test")
    assert resp.status == 200, resp.text
    assert resp.header("X-Kept") == "yes"
    assert resp.header("X-Hop-Resp") is None
    assert resp.header("Keep-Alive") is None
    assert all("x-hop-resp" not in v.lower() for v in resp.header_all("Connection"))
    assert resp.header("Via") == "1.1 edgenode"
    assert resp.header("X-Edge-Request-Id")


# -- framing ---------------------------------------------------------------------------


def test_head_passes_content_length_without_a_body_and_keeps_the_connection(
    edge: EdgeProcess,
):
    """HEAD relays Content-Length without a body, and the connection serves the next request."""
    conn = edge.connection()
    try:
        head = send(conn, "HEAD", "/bytes/1000", host="a.test")
        assert head.status == 200
        assert head.header("Content-Length") == "1000"
        assert head.body == b""
        after = send(conn, "GET", "/after-head", host="a.test")
        assert after.status == 200, after.text
        assert after.json()["path"] == "/after-head"
    finally:
        conn.close()


def test_204_and_304_have_no_body_and_keep_the_connection(edge: EdgeProcess):
    """204 and 304 reach the client without a body and the keep-alive connection stays usable."""
    sock = raw_connection(edge)
    try:
        sock.sendall(
            b"GET /status/204 HTTP/1.1\r\nHost: a.test\r\n\r\n"
            b"GET /status/304 HTTP/1.1\r\nHost: a.test\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n"
        )
        r204, r304, after = read_responses(sock, ["GET", "GET", "GET"])
    finally:
        sock.close()
    assert (r204.status, r204.body) == (204, b"")
    assert r204.header("Transfer-Encoding") is None
    assert (r304.status, r304.body) == (304, b"")
    assert r304.header("Transfer-Encoding") is None
    assert after.status == 200
    assert after.json()["path"] == "/after"  # parsed cleanly: no stray bytes before it


def test_chunked_request_body_reaches_the_origin_intact(edge: EdgeProcess, origin: TLSOrigin):
    """A chunked upload is relayed to /echo byte for byte."""
    chunks = [os.urandom(n) for n in (1, 1000, 70000, 5)]
    resp = edge.request(
        "POST", "/echo", host="a.test", headers={"Transfer-Encoding": "chunked"}, body=chunks
    )
    assert resp.status == 200
    assert resp.body == b"".join(chunks)
    seen = origin.requests[-1]
    assert seen["body_len"] == sum(map(len, chunks))
    assert "content-length" not in header_names(seen) or header_values(seen, "Content-Length") == [
        str(seen["body_len"])
    ]


def test_chunked_response_reaches_an_http11_client_chunked_and_intact(edge: EdgeProcess):
    """An origin's chunked body arrives chunked and complete at an HTTP/1.1 client."""
    resp = edge.request("GET", "/chunked/100000", host="a.test")
    assert resp.status == 200
    assert resp.header("Transfer-Encoding") == "chunked"
    assert resp.header("Content-Length") is None
    assert resp.body == pattern(100000)


def test_chunked_response_reaches_an_http10_client_close_delimited(edge: EdgeProcess):
    """An HTTP/1.0 client gets the chunked origin body unchunked, ended by the connection close."""
    data = edge.raw(b"GET /chunked/100000 HTTP/1.0\r\nHost: a.test\r\n\r\n", timeout=10)
    status, headers, body = split_response(data)
    assert re.match(r"HTTP/1\.[01] 200", status), status
    assert "transfer-encoding" not in headers
    assert "content-length" not in headers
    assert body == pattern(100000)


def test_pipelined_requests_are_answered_in_order(edge: EdgeProcess):
    """Three requests sent back-to-back on one connection get three responses in request order."""
    sock = raw_connection(edge)
    try:
        sock.sendall(
            b"GET /p1 HTTP/1.1\r\nHost: a.test\r\n\r\n"
            b"GET /p2 HTTP/1.1\r\nHost: b.test\r\n\r\n"
            b"GET /p3 HTTP/1.1\r\nHost: a.test\r\n\r\n"
        )
        responses = read_responses(sock, ["GET", "GET", "GET"])
    finally:
        sock.close()
    assert [r.status for r in responses] == [200, 200, 200]
    assert [(r.json()["path"], r.json()["vhost"]) for r in responses] == [
        ("/p1", "a.test"),
        ("/p2", "b.test"),
        ("/p3", "a.test"),
    ]


def test_pipelined_requests_ending_with_connection_close_all_get_answers(edge: EdgeProcess):
    """A `Connection: close` on the last pipelined request closes only after its own response."""
    sock = raw_connection(edge)
    try:
        sock.sendall(
            b"GET /p1 HTTP/1.1\r\nHost: a.test\r\n\r\n"
            b"GET /p2 HTTP/1.1\r\nHost: b.test\r\n\r\n"
            b"GET /p3 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        )
        responses = read_responses(sock, ["GET", "GET", "GET"])
    finally:
        sock.close()
    assert [r.json()["path"] for r in responses] == ["/p1", "/p2", "/p3"]
    assert [r.header("Connection") for r in responses] == [None, None, "close"]


# -- streaming -------------------------------------------------------------------------


def test_20_mib_response_streams_intact(edge: EdgeProcess):
    """A 20 MiB origin body reaches the client complete and unaltered."""
    size = 20 * MiB
    resp = edge.request("GET", f"/bytes/{size}", host="a.test", timeout=60)
    assert resp.status == 200
    assert resp.header("Content-Length") == str(size)
    assert len(resp.body) == size
    assert sha(resp.body) == sha(pattern(size))


def test_20_mib_request_body_reaches_the_origin_intact(edge: EdgeProcess, origin: TLSOrigin):
    """A 20 MiB upload reaches the origin complete: its length and sha256 match."""
    body = os.urandom(20 * MiB)
    resp = edge.request("POST", "/anything", host="a.test", body=body, timeout=60)
    assert resp.status == 200, resp.text
    seen = resp.json()
    assert (seen["body_len"], seen["body_sha256"]) == (len(body), sha(body))


def test_slow_reading_client_does_not_make_the_edge_buffer_the_body(edge: EdgeProcess):
    """While a client stalls on a 20 MiB body the edge's memory stays flat; then it all arrives."""
    size = 20 * MiB
    assert edge.pid is not None
    edge.request("GET", "/warm-up", host="a.test")  # pool, TLS context, code paths
    rss_before = rss_bytes(edge.pid)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect((LOOPBACK, edge.port))
    try:
        sock.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        received = bytearray()
        while len(received) < 100 * 1024:
            chunk = sock.recv(65536)
            assert chunk, "the edge closed the connection early"
            received += chunk
        # Read nothing for a second, watching the edge's memory.
        peak = rss_before
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes(edge.pid))
            time.sleep(0.05)
        growth = peak - rss_before
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
            head_end = received.find(b"\r\n\r\n")
            if head_end != -1 and len(received) - head_end - 4 >= size:
                break
    finally:
        sock.close()
    assert growth < 10 * MiB, f"edge RSS grew by {growth / MiB:.1f} MiB while the client stalled"
    status, headers, body = split_response(bytes(received))
    assert status.startswith("HTTP/1.1 200"), status
    assert headers["content-length"] == str(size)
    assert len(body) == size
    assert sha(body) == sha(pattern(size))


# -- Expect and limits -----------------------------------------------------------------


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_expect_100_continue_gets_100_then_the_response(edge: EdgeProcess, origin: TLSOrigin):
    """A client waiting for 100 Continue gets it, sends its body, and gets the origin's answer."""
    sock = raw_connection(edge)
    try:
        sock.sendall(
            b"POST /anything HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = _read_until(sock, b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100"), interim
        rest = interim.partition(b"\r\n\r\n")[2]
        sock.sendall(b"hello")
        final = rest + _read_until(sock, b"\x00never", timeout=5)
    finally:
        sock.close()
    status, _, body = split_response(final)
    assert status.startswith("HTTP/1.1 200"), final
    assert json.loads(body)["body_len"] == 5
    seen = origin.requests[-1]
    assert (seen["body_len"], seen["body_sha256"]) == (5, sha(b"hello"))
    assert "expect" not in header_names(seen)


def test_body_above_max_body_bytes_gets_413_without_100_continue(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """A Content-Length above limits.max_body_bytes gets 413 at once; no 100 Continue is sent."""
    edge = edge_factory(edge_config(pki, origin, limits={"max_body_bytes": 1000}), wait_admin=False)
    sock = raw_connection(edge)
    try:
        sock.sendall(
            b"POST /anything HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        data = _read_until(sock, b"request id", timeout=5)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 413"), data
    assert b"100 Continue" not in data
    assert b"request_too_large" in data
    assert origin.requests == []


def test_head_above_max_header_bytes_gets_431(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """A request head larger than limits.max_header_bytes gets 431 and never reaches the origin."""
    edge = edge_factory(
        edge_config(pki, origin, limits={"max_header_bytes": 2048}), wait_admin=False
    )
    resp = edge.request("GET", "/big", host="a.test", headers={"X-Big": "a" * 4000})
    assert resp.status == 431
    assert "request_header_too_large" in resp.text
    assert origin.requests == []


SMUGGLING = {
    "content-length-and-transfer-encoding": (
        b"POST /anything HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "duplicate-content-length": (
        b"POST /anything HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!"
    ),
    "obs-fold": (b"GET /anything HTTP/1.1\r\nHost: a.test\r\nX-Folded: a\r\n b\r\n\r\n"),
    "bare-lf": b"GET /anything HTTP/1.1\nHost: a.test\n\n",
    "transfer-coding-other-than-chunked": (
        b"POST /anything HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
def test_smuggling_shapes_get_400_and_never_reach_the_origin(
    edge: EdgeProcess, origin: TLSOrigin, shape: str
):
    """Ambiguous framing (CL+TE, two CLs, obs-fold, bare LF, TE gzip) gets 400, nothing upstream."""
    data = edge.raw(SMUGGLING[shape])
    assert data.startswith(b"HTTP/1.1 400"), data
    assert b"bad_request" in data
    assert origin.requests == []


def test_plain_http_origin(edge_factory, pki, servers) -> None:
    """origin_protocol http: no TLS, no SNI, port and Host as configured, the body relayed."""
    plain = servers.tls_origin(tls=False)
    edge = edge_factory(
        {
            "domains": {
                "plain.test": {
                    "origin_protocol": "http",
                    "origin_host": "backend.test",
                    "origins": [{"address": "127.0.0.1", "port": plain.port}],
                }
            }
        },
        wait_admin=False,
    )
    r = edge.request("GET", "/hello", host="plain.test")
    assert r.status == 200
    body = r.json()
    assert (body["host"], body["sni"], body["path"]) == ("backend.test", None, "/hello")
    (rec,) = edge.access_records(1)
    assert (rec["sni"], rec["verify_name"], rec["tls_version"]) == (None, None, None)
    assert rec["origin"] == f"127.0.0.1:{plain.port}"


def test_origin_address_can_be_a_dns_name(edge_factory, pki, origin) -> None:
    """An origin given by name (localhost) is resolved and reached; SNI stays the configured one."""
    edge = edge_factory(
        {
            "tls": {"ca_file": str(pki.ca_file)},
            "domains": {
                "a.test": {
                    "origin_sni": {"enabled": True},
                    "origins": [{"address": "localhost", "port": origin.port}],
                }
            },
        },
        wait_admin=False,
    )
    body = edge.request("GET", "/", host="a.test").json()
    assert (body["vhost"], body["sni"]) == ("a.test", "a.test")
    (rec,) = edge.access_records(1)
    assert rec["origin"] == f"localhost:{origin.port}"
