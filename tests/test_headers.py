"""Tests for edgenode.datapath.headers: hop-by-hop and forwarding-header policy (RFC 9110 §7.6)."""

from __future__ import annotations

import pytest

from edgenode.datapath.headers import (
    HOP_BY_HOP,
    client_response_lines,
    message_head,
    origin_request_head,
    scan_request,
)

# Run on the pure-Python fallback too (.ci/run, EDGENODE_NO_EXTENSIONS=1).
pytestmark = pytest.mark.datapath

Pairs = list[tuple[bytes, bytes]]


def pairs(lines: list[bytes]) -> Pairs:
    return [tuple(line.split(b": ", 1)) for line in lines]  # type: ignore[misc]


def forward(headers: Pairs, **kwargs: object) -> Pairs:
    """The headers of the head sent back-to-origin, parsed back into pairs."""
    args: dict[str, object] = {
        "client_ip": b"198.51.100.7",
        "origin_host": b"origin.example",
        "forwarded_host": b"www.example.com",
        "body_framing": None,
    }
    args.update(kwargs)
    head = origin_request_head(b"GET / HTTP/1.1", scan_request(headers), **args)  # type: ignore[arg-type]
    start, _, rest = head.partition(b"\r\n")
    assert start == b"GET / HTTP/1.1"
    assert rest.endswith(b"\r\n\r\n")
    return pairs(rest[:-4].split(b"\r\n"))


def client_response_headers(headers: Pairs) -> Pairs:
    return pairs(client_response_lines(headers))


def names(headers: Pairs) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def values(headers: Pairs, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def test_scan_collects_what_the_edge_needs_from_a_request() -> None:
    """Host, framing and Expect values are collected; the size counts every header line."""
    headers = [
        (b"HOST", b"a.example"),
        (b"Content-Length", b"5"),
        (b"Expect", b"100-continue"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Accept", b"*/*"),
    ]
    scan = scan_request(headers)
    assert scan.hosts == [b"a.example"]
    assert scan.content_length == b"5"
    assert scan.expect == [b"100-continue"]
    assert scan.transfer_encodings == [b"chunked"]
    assert scan.forward == [b"Accept: */*"]
    assert scan.size == sum(len(n) + len(v) + 4 for n, v in headers)


def test_header_names_are_matched_whatever_their_case() -> None:
    """Each spelling of a name is looked up on its own: the first one seen decides nothing."""
    for spelling in (b"connection", b"CONNECTION", b"Connection", b"cOnNeCtIoN"):
        assert forward([(spelling, b"x-a"), (b"X-A", b"1"), (b"X-B", b"2")])[1:2] == [
            (b"X-B", b"2")
        ]


def test_hop_by_hop_headers_are_not_forwarded_to_the_origin() -> None:
    """RFC 9110 §7.6.1 hop-by-hop headers never go back-to-origin."""
    headers = [
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Checksum"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Accept", b"*/*"),
    ]
    out = forward(headers)
    assert not set(names(out)) & HOP_BY_HOP
    assert (b"Accept", b"*/*") in out


def test_names_listed_in_connection_are_not_forwarded() -> None:
    """A header the client declared hop-by-hop in Connection is dropped, whatever its case."""
    out = forward([(b"Connection", b"X-Secret"), (b"x-secret", b"1"), (b"X-Kept", b"2")])
    assert b"x-secret" not in names(out)
    assert (b"X-Kept", b"2") in out


def test_host_is_the_origin_host_and_comes_first() -> None:
    """The client's Host is replaced by origin_host, sent first."""
    out = forward([(b"Accept", b"*/*"), (b"Host", b"www.example.com")])
    assert out[0] == (b"Host", b"origin.example")
    assert values(out, b"host") == [b"origin.example"]


def test_forwarding_headers_are_set_by_the_edge() -> None:
    """X-Forwarded-Proto/-Host are ours (client values dropped); Via gets `1.1 edgenode`."""
    out = forward(
        [
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil.example"),
            (b"Via", b"1.0 squid"),
        ]
    )
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"www.example.com"]
    assert values(out, b"via") == [b"1.0 squid, 1.1 edgenode"]


def test_client_address_is_appended_to_x_forwarded_for() -> None:
    """X-Forwarded-For keeps the client's values, joined, and appends the client address."""
    out = forward([(b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2")])
    assert values(out, b"x-forwarded-for") == [b"10.0.0.1, 10.0.0.2, 198.51.100.7"]
    assert values(forward([]), b"x-forwarded-for") == [b"198.51.100.7"]


def test_framing_and_expect_are_the_edges_own() -> None:
    """Client Content-Length and Expect are dropped; the edge's body framing is sent instead."""
    out = forward(
        [(b"Content-Length", b"5"), (b"Expect", b"100-continue")],
        body_framing=b"Content-Length: 5",
    )
    assert values(out, b"content-length") == [b"5"]
    assert b"expect" not in names(out)
    assert values(forward([(b"Content-Length", b"5")]), b"content-length") == []


def test_repeated_headers_keep_order_and_case() -> None:
    """Repeated end-to-end headers survive untouched, in order, in the case received."""
    headers = [(b"cookie", b"a=1"), (b"X-Mixed-Case", b"v"), (b"cookie", b"b=2")]
    out = forward(headers)
    assert [h for h in out if h in headers] == headers


def test_response_hop_by_hop_and_framing_headers_are_not_relayed() -> None:
    """Origin hop-by-hop headers, Content-Length and X-Edge-Request-Id never reach the client."""
    out = client_response_headers(
        [
            (b"Connection", b"keep-alive, X-Internal"),
            (b"X-Internal", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"5"),
            (b"X-Edge-Request-Id", b"spoofed"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
    )
    assert names(out) == [b"set-cookie", b"set-cookie", b"via"]
    assert values(out, b"set-cookie") == [b"a=1", b"b=2"]
    assert values(out, b"via") == [b"1.1 edgenode"]


def test_response_via_is_appended() -> None:
    """The origin's Via is kept and `1.1 edgenode` appended."""
    out = client_response_headers([(b"Via", b"1.1 varnish")])
    assert values(out, b"via") == [b"1.1 varnish, 1.1 edgenode"]


def test_message_head_joins_lines_and_ends_with_a_blank_line() -> None:
    """message_head joins the start line and header lines with CRLF, then a blank line."""
    head = message_head(b"GET / HTTP/1.1", [b"Host: a", b"X: y"])
    assert head == b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n"
    assert message_head(b"HTTP/1.1 204 No Content", []) == b"HTTP/1.1 204 No Content\r\n\r\n"
