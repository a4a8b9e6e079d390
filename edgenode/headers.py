"""Hop-by-hop and forwarding-header policy on raw header lists (RFC 9110 §7.6).

Header lists are `list[tuple[bytes, bytes]]` in the order received, names in the
case received: repeated headers (Set-Cookie, Cookie) survive untouched.
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 plus the de-facto ones every proxy strips.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Framing and routing the edge always writes itself.
_REQUEST_OWNED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_RESPONSE_OWNED = HOP_BY_HOP | {b"content-length", b"x-edge-request-id"}

VIA = b"1.1 edgenode"


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The header names listed in Connection (hop-by-hop by declaration), lower case."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)


def _drop(headers: Headers, owned: frozenset[bytes]) -> tuple[Headers, bytes | None, bytes | None]:
    """Headers minus `owned` and the Connection-listed ones; also the XFF and Via values seen.

    One pass on the hot path; the names a Connection header lists are removed after it,
    since the Connection header may come after the headers it names.
    """
    kept: Headers = []
    xff: bytes | None = None
    via: bytes | None = None
    listed: set[bytes] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in owned:
            if lower == b"connection":
                listed = listed or set()
                listed.update(t.strip().lower() for t in value.split(b","))
            continue
        if lower == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif lower == b"via":
            via = value if via is None else via + b", " + value
        else:
            kept.append((name, value))
    if listed:
        kept = [(n, v) for n, v in kept if n.lower() not in listed]
    return kept, xff, via


def origin_request_headers(
    headers: Headers,
    *,
    client_ip: bytes,
    origin_host: bytes,
    forwarded_host: bytes,
    body_framing: tuple[bytes, bytes] | None,
) -> Headers:
    """The headers sent back-to-origin for a client request.

    - hop-by-hop headers and every name listed in Connection are dropped;
    - X-Forwarded-For gets the client address appended (a client's value is kept,
      never trusted for our own log);
    - X-Forwarded-Proto / X-Forwarded-Host are set by us, Via gets `1.1 edgenode`;
    - Host is the domain's origin_host; framing (Content-Length or chunked) is ours;
      Expect is answered by the edge, never forwarded.
    """
    kept, xff, via = _drop(headers, _REQUEST_OWNED)
    kept.insert(0, (b"Host", origin_host))
    if body_framing is not None:
        kept.append(body_framing)
    kept.append((b"X-Forwarded-For", client_ip if xff is None else xff + b", " + client_ip))
    kept.append((b"X-Forwarded-Proto", b"http"))
    kept.append((b"X-Forwarded-Host", forwarded_host))
    kept.append((b"Via", VIA if via is None else via + b", " + VIA))
    return kept


def client_response_headers(headers: Headers) -> Headers:
    """The origin's response headers as relayed to the client: hop-by-hop gone, Via added."""
    kept, xff, via = _drop(headers, _RESPONSE_OWNED)
    if xff is not None:
        kept.append((b"X-Forwarded-For", xff))
    kept.append((b"Via", VIA if via is None else via + b", " + VIA))
    return kept


def serialize(start_line: bytes, headers: Headers) -> bytes:
    """A message head: start line, headers, blank line, in one bytes object."""
    parts = [start_line]
    for name, value in headers:
        parts.append(name + b": " + value)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)
