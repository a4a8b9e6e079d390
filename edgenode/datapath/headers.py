"""Hop-by-hop and forwarding-header policy, one pass over raw header lists (RFC 9110 §7.6).

Header lists are `list[tuple[bytes, bytes]]` in the order received, names in the case
received: repeated headers (Set-Cookie, Cookie) survive untouched. What goes on the wire
is built as `Name: value` lines joined once, never as per-header objects kept around.

This runs for every request and response, so each header costs one dict lookup of its
name as received (`_Actions`), one comparison and, when it is relayed, one concatenation.
"""

from __future__ import annotations

import attrs

from edgenode import speedups

Headers = list[tuple[bytes, bytes]]

# What the edge does with a header, by direction (the lookup tables below).
KEEP = 0  # relayed as is
DROP = 1  # hop-by-hop, or a header the edge writes itself
HOST = 2
CONTENT_LENGTH = 3
TRANSFER_ENCODING = 4
EXPECT = 5
CONNECTION = 6  # hop-by-hop, and names more hop-by-hop headers
FORWARDED_FOR = 7  # X-Forwarded-For: merged, the client address appended
VIA = 8  # merged, `1.1 edgenode` appended

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
_COMMON = {
    **dict.fromkeys(HOP_BY_HOP, DROP),
    b"connection": CONNECTION,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"content-length": CONTENT_LENGTH,
    b"x-forwarded-for": FORWARDED_FOR,
    b"via": VIA,
}
# Requests: Host, framing, Expect and the forwarding headers are the edge's to write.
_REQUEST = {
    **_COMMON,
    b"host": HOST,
    b"expect": EXPECT,
    b"x-forwarded-proto": DROP,
    b"x-forwarded-host": DROP,
}
# Responses: framing and the request id are the edge's to write.
_RESPONSE = {**_COMMON, b"x-edge-request-id": DROP}

VIA_VALUE = b"1.1 edgenode"
# Connection values that list no header (the common ones, spelled as sent).
_NAMES_NO_HEADER = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})
_CACHE_LIMIT = 4096  # distinct spellings remembered; beyond it names are lower-cased each time


class _Actions(dict[bytes, int]):
    """Name as received -> action. A spelling not seen yet is lower-cased once and
    remembered (`__missing__`), so a lookup is one dict subscript."""

    __slots__ = ("_by_lower", "_drop_underscores")

    def __init__(self, by_lower: dict[bytes, int], *, drop_underscores: bool = False) -> None:
        super().__init__()
        self._by_lower = by_lower
        self._drop_underscores = drop_underscores

    def __missing__(self, name: bytes) -> int:
        if self._drop_underscores and b"_" in name:
            # nginx's default (underscores_in_headers off): CGI-style origins map `_` and `-`
            # to one name, so `Transfer_Encoding` or `X_Forwarded_For` would reach them as
            # the header the edge itself writes or strips.
            action = DROP
        else:
            action = self._by_lower.get(name.lower(), KEEP)
        if len(self) < _CACHE_LIMIT:  # a client inventing names cannot grow this
            self[name] = action
        return action


REQUEST_ACTIONS = _Actions(_REQUEST, drop_underscores=True)
RESPONSE_ACTIONS = _Actions(_RESPONSE)


@attrs.define(slots=True)
class RequestScan:
    """One pass over a client request's headers: what the edge needs, and what it forwards."""

    size: int = 0  # bytes of the header block as counted for max_header_bytes
    hosts: list[bytes] = attrs.Factory(list)
    content_length: bytes | None = None  # the last value seen (llhttp rejects conflicts)
    transfer_encodings: list[bytes] = attrs.Factory(list)
    expect: list[bytes] = attrs.Factory(list)
    forward: list[bytes] = attrs.Factory(list)  # `Name: value` lines relayed as they came
    forwarded_for: bytes | None = None
    via: bytes | None = None
    listed: set[bytes] | None = None  # names Connection declares hop-by-hop, lower case


def scan_request(headers: Headers) -> RequestScan:
    scan = RequestScan()
    actions = REQUEST_ACTIONS
    forward = scan.forward
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        action = actions[name]
        if action == KEEP:
            forward.append(name + b": " + value)
        elif action == HOST:
            scan.hosts.append(value)
        elif action == CONTENT_LENGTH:
            scan.content_length = value
        elif action == TRANSFER_ENCODING:
            scan.transfer_encodings.append(value)
        elif action == EXPECT:
            scan.expect.append(value)
        elif action == FORWARDED_FOR:
            scan.forwarded_for = _merged(scan.forwarded_for, value)
        elif action == VIA:
            scan.via = _merged(scan.via, value)
        elif action == CONNECTION:
            scan.listed = _listed(scan.listed, value)
    scan.size = size
    if scan.listed:
        scan.forward = _without_listed(headers, REQUEST_ACTIONS, scan.listed)
    return scan


def origin_request_head(
    start_line: bytes,
    scan: RequestScan,
    *,
    client_ip: bytes,
    origin_host: bytes,
    forwarded_host: bytes,
    body_framing: bytes | None,
    forwarded_proto: bytes = b"http",
) -> bytes:
    """The request head sent back-to-origin, in one bytes object.

    - hop-by-hop headers and every name listed in Connection are dropped;
    - Host is the domain's origin_host, sent first; body framing (`Content-Length: n` or
      `Transfer-Encoding: chunked`) is the edge's; Expect is answered by the edge;
    - X-Forwarded-For gets the client address appended (a client's value is kept, never
      trusted for our own log); X-Forwarded-Proto/-Host are set by the edge; Via gets
      `1.1 edgenode`.
    """
    xff = scan.forwarded_for
    via = scan.via
    lines = [start_line, b"Host: " + origin_host, *scan.forward]
    if body_framing is not None:
        lines.append(body_framing)
    lines.append(b"X-Forwarded-For: " + _merged(xff, client_ip))
    lines.append(b"X-Forwarded-Proto: " + forwarded_proto)
    lines.append(b"X-Forwarded-Host: " + forwarded_host)
    lines.append(b"Via: " + _merged(via, VIA_VALUE))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def client_response_lines(headers: Headers) -> list[bytes]:
    """The origin's response headers as relayed to the client: hop-by-hop gone, Via added."""
    actions = RESPONSE_ACTIONS
    lines: list[bytes] = []
    xff: bytes | None = None
    via: bytes | None = None
    listed: set[bytes] | None = None
    for name, value in headers:
        action = actions[name]
        if action == KEEP:
            lines.append(name + b": " + value)
        elif action == VIA:
            via = _merged(via, value)
        elif action == FORWARDED_FOR:
            xff = _merged(xff, value)
        elif action == CONNECTION:
            listed = _listed(listed, value)
    if listed:
        lines = _without_listed(headers, RESPONSE_ACTIONS, listed)
    if xff is not None:
        lines.append(b"X-Forwarded-For: " + xff)
    lines.append(b"Via: " + _merged(via, VIA_VALUE))
    return lines


def message_head(start_line: bytes, lines: list[bytes]) -> bytes:
    """Start line, `Name: value` lines and the blank line, in one bytes object."""
    return b"\r\n".join([start_line, *lines, b"\r\n"])


def _merged(earlier: bytes | None, value: bytes) -> bytes:
    """A list-valued header's values as one (RFC 9110 §5.3)."""
    return value if earlier is None else earlier + b", " + value


def _listed(listed: set[bytes] | None, value: bytes) -> set[bytes] | None:
    """Add the names a Connection header lists; `close` and `keep-alive` name no header."""
    if value in _NAMES_NO_HEADER:
        return listed
    for token in value.split(b","):
        token = token.strip().lower()
        if token and token not in (b"close", b"keep-alive"):
            listed = listed or set()
            listed.add(token)
    return listed


def _without_listed(headers: Headers, actions: _Actions, listed: set[bytes]) -> list[bytes]:
    """The relayed lines again, minus the names Connection listed (the rare, slow path).

    Done after the pass because a Connection header may come after the headers it names.
    """
    return [
        name + b": " + value
        for name, value in headers
        if actions[name] == KEEP and name.lower() not in listed
    ]


# The compiled twins of the functions above (_headers.pyx), when built: speedups.py.
_compiled = speedups.load("edgenode.datapath._headers")
if _compiled is not None:
    scan_request = _compiled.scan_request
    origin_request_head = _compiled.origin_request_head
    client_response_lines = _compiled.client_response_lines
