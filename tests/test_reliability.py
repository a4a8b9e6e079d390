"""Reliability (issue 7): misbehaving origins and hostile clients, each through the real edge.

Every fault is a real socket on 127.0.0.1: purpose-built origins (tests.support.faults) and
raw-socket clients written here. What is asserted is what the client, the origin and the
access log see, never durations; sleeps only pace a slowloris client or sit inside bounded
polls. The last section checks, in memory, that no DelayedCall outlives an exchange.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost

from edgenode.datapath.proxy import DEADLINE_TICK
from tests.support.edge import EdgeProcess, send
from tests.support.faults import FaultyOrigin, FlakyKeepAliveOrigin, ResetOnFirstBytes
from tests.support.memory_edge import OK_5, WWW, Edge, http_domain, lose
from tests.support.net import LOOPBACK, free_port
from tests.support.origin import Servers, TLSOrigin
from tests.support.pki import PKI
from tests.support.procfs import fd_count, rss_bytes
from tests.support.waiting import wait_until
from tests.test_proxy_failures import at, edge_config, only_record

EdgeFactory = Callable[..., EdgeProcess]
KiB = 1024
MiB = 1024 * KiB


def start(edge_factory: EdgeFactory, config: dict[str, Any]) -> EdgeProcess:
    return edge_factory(config, wait_admin=False)


def settle(measure: Callable[[], int], limit: int, timeout: float = 10.0) -> int:
    """Poll `measure()` (bounded) until it is at most `limit`; return the last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value > limit and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


def edge_pid(edge: EdgeProcess) -> int:
    assert edge.pid is not None, "the edge is not running"
    return edge.pid


@pytest.fixture
def a_leaf(pki: PKI) -> dict[str, Any]:
    return {"a.test": pki.leaf("a.test")}


# -- origin-side faults ------------------------------------------------------------------


def test_origin_resetting_the_tls_handshake_is_origin_tls_failed(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """An origin answering the ClientHello with a TCP RST gets the client 502 origin_tls_failed."""
    port = servers.listen_tcp(ResetOnFirstBytes)
    edge = start(edge_factory, edge_config(pki, [at(port)]))
    resp = edge.request("GET", "/", host="a.test")
    assert resp.status == 502, resp.text
    assert "origin_tls_failed" in resp.text
    assert resp.header("X-Edge-Error") == "origin_tls_failed"
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert (record["error"], record["attempts"]) == ("origin_tls_failed", 1)
    assert servers.listener(port).connections_opened == 1


def test_origin_resetting_the_tls_handshake_fails_over_to_the_backup(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """A handshake reset happens before the request left the edge, so the backup origin answers."""
    port = servers.listen_tcp(ResetOnFirstBytes)
    backup = servers.tls_origin(a_leaf, None)
    edge = start(
        edge_factory, edge_config(pki, [at(port, priority=1), at(backup.port, priority=2)])
    )
    resp = edge.request("POST", "/after-reset", host="a.test", body=b"once")
    assert resp.status == 200, resp.text
    assert (resp.json()["path"], resp.json()["body_len"]) == ("/after-reset", 4)
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert (record["attempts"], record["error"]) == (2, None)


def test_oversized_response_head_is_origin_protocol_error(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """An origin whose response head exceeds 64 KiB gets the client 502 origin_protocol_error."""
    filler = b"".join(b"X-Filler-%d: %b\r\n" % (i, b"f" * 1000) for i in range(70))
    huge = FaultyOrigin(b"HTTP/1.1 200 OK\r\n" + filler)  # and the head never even ends
    port = servers.listen_tls(huge, a_leaf)
    edge = start(edge_factory, edge_config(pki, [at(port)]))
    resp = edge.request("GET", "/huge-head", host="a.test")
    assert resp.status == 502, resp.text
    assert "origin_protocol_error" in resp.text
    assert resp.header("X-Filler-0") is None
    record = edge.record(resp.header("X-Edge-Request-Id"))
    assert record["error"] == "origin_protocol_error"
    assert "head" in record["error_detail"]
    assert len(huge.heads) == 1
    wait_until(lambda: servers.listener(port).open_connections == 0, what="the origin drop")


def test_origin_closing_keep_alive_connections_at_random_causes_no_client_error(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI, a_leaf: dict[str, Any]
):
    """200 GETs on 4 keep-alive clients all get 200 from an origin dropping connections randomly."""
    flaky = FlakyKeepAliveOrigin(seed=7)
    port = servers.listen_tls(flaky, a_leaf)
    edge = start(edge_factory, edge_config(pki, [at(port)]))
    results: dict[int, list[tuple[int, str]]] = {}
    errors: list[BaseException] = []

    def client(n: int) -> None:
        conn = edge.connection(timeout=10)
        seen = results.setdefault(n, [])
        try:
            for i in range(50):
                resp = send(conn, "GET", f"/c{n}/r{i}", host="a.test")
                seen.append((resp.status, resp.json()["path"] if resp.status == 200 else resp.text))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client did not finish"
    assert errors == []
    for n in range(4):
        assert results[n] == [(200, f"/c{n}/r{i}") for i in range(50)]
    records = edge.access_records(200)
    assert [r for r in records if r["status"] != 200 or r["error"] is not None] == []
    stats = flaky.stats
    # The faults did happen: connections were closed after a response and on reuse.
    assert stats["close_after"] > 0 and stats["drop_next"] > 0, stats
    assert stats["connections"] > 20, stats
    assert any(r["attempts"] == 2 for r in records), "no stale connection was ever retried"


# -- client-side abuse -------------------------------------------------------------------


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether `sock` has bytes (or a close) to read within `timeout` seconds (poll: no fd cap)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _closed_by_peer(sock: socket.socket) -> tuple[bool, bytes]:
    """Read what is there without blocking: (the peer closed, the bytes received)."""
    data = b""
    while _readable(sock, 0):
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def test_slowloris_head_is_cut_off_after_client_header_timeout(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """A head trickled a byte per 100 ms is closed after client_header_timeout (1 s), unanswered."""
    config = edge_config(
        pki, [at(origin.port)], limits={"client_header_timeout": 1, "client_idle_timeout": 30}
    )
    edge = start(edge_factory, config)
    head = b"GET /slowloris HTTP/1.1\r\nHost: a.test\r\nX-Pad: " + b"p" * 50 + b"\r\n\r\n"
    sent = 0
    closed, received = False, b""
    with socket.create_connection((LOOPBACK, edge.port), timeout=5) as sock:
        for byte in head:  # bounded: one pass over the head, ~8 s if never cut off
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            _readable(sock, 0.1)  # paces the trickle; wakes early on a close
            closed, data = _closed_by_peer(sock)
            received += data
            if closed:
                break
        if not closed:
            sock.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                received += sock.recv(65536)
    assert closed, (
        f"the edge let a {len(head)}-byte head trickle in whole; it answered {received!r}"
    )
    assert sent < len(head)
    assert not received or received.startswith(b"HTTP/1.1 408"), received
    assert origin.requests == []


def test_many_idle_keep_alive_connections_cost_bounded_memory_and_are_closed(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """300 idle keep-alive clients grow the edge's RSS < 30 MiB; client_idle_timeout closes all."""
    n = 300
    config = edge_config(
        pki,
        [at(origin.port)],
        limits={"client_idle_timeout": 5, "client_header_timeout": 5},
        # A backlog for 300 connects at once (the default 50 makes the kernel drop SYNs),
        # and a short origin idle time, so the origin connections the burst opened go too.
        listen=f"tcp:{free_port()}:interface={LOOPBACK}:backlog=1024",
    )
    config["timeouts"]["idle"] = 1
    edge = start(edge_factory, config)
    pid = edge_pid(edge)
    for i in range(5):
        assert edge.request("GET", f"/warm{i}", host="a.test").status == 200
    rss_before, fds_before = rss_bytes(pid), fd_count(pid)
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            sock = socket.create_connection((LOOPBACK, edge.port), timeout=10)
            socks.append(sock)
            sock.sendall(b"GET /idle%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i)
        for sock in socks:
            resp = http.client.HTTPResponse(sock, method="GET")  # type: ignore[arg-type]
            resp.begin()
            resp.read()
            assert resp.status == 200
            assert not resp.will_close  # a keep-alive connection, now idle
        fds_open, rss_open = fd_count(pid), rss_bytes(pid)
        growth = rss_open - rss_before
        print(f"{n} idle clients: edge RSS +{growth / MiB:.1f} MiB, fds {fds_before}->{fds_open}")
        assert fds_open >= fds_before + n, "the idle clients were not all open at once"
        assert growth < 30 * MiB, f"edge RSS grew by {growth / MiB:.1f} MiB for {n} idle clients"

        still_open = set(socks)
        with selectors.DefaultSelector() as waiting:
            for sock in socks:
                waiting.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + 5 + 15
            while still_open and time.monotonic() < deadline:
                for key, _ in waiting.select(timeout=0.5):
                    sock = key.fileobj  # type: ignore[assignment]
                    if _closed_by_peer(sock)[0]:
                        waiting.unregister(sock)
                        still_open.discard(sock)
        assert not still_open, f"{len(still_open)} idle clients were never closed by the edge"
    finally:
        for sock in socks:
            sock.close()
    fds_after = settle(lambda: fd_count(pid), fds_before + 5)
    assert fds_after <= fds_before + 5, (fds_before, fds_after)


def test_request_target_above_max_header_bytes_gets_414(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """A request line over limits.max_header_bytes gets 414 uri_too_long; nothing goes upstream."""
    edge = start(
        edge_factory, edge_config(pki, [at(origin.port)], limits={"max_header_bytes": 2048})
    )
    resp = edge.request("GET", "/" + "a" * 4000, host="a.test")
    assert resp.status == 414, resp.text
    assert "uri_too_long" in resp.text
    assert (only_record(edge)["status"], only_record(edge)["error"]) == (414, "uri_too_long")
    assert origin.requests == []
    assert edge.request("GET", "/" + "a" * 1000, host="a.test").status == 200  # under the limit


def upload_until_answered(
    port: int,
    head: bytes,
    chunks: int,
    chunk: bytes,
    each: Callable[[], None] | None = None,
) -> tuple[int, bytes]:
    """Send `head` then up to `chunks` body chunks to `port`, stopping once an answer comes.

    An answer is a response head or a close. `each()` runs after every chunk sent (to
    sample the edge). Returns (body bytes sent, what came back).
    """
    sent = 0
    received = b""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(head)
        for _ in range(chunks):
            closed, data = _closed_by_peer(sock)
            received += data
            if closed or b"\r\n\r\n" in received:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the edge stopped reading; its answer is already on its way
            sent += len(chunk)
            if each is not None:
                each()
        deadline = time.monotonic() + 5
        while b"request id" not in received and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            received += data
    return sent, received


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_over_max_body_bytes_gets_413_while_the_client_is_still_sending(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI, framing: str
):
    """A 20 MiB upload over max_body_bytes (1 MiB) gets 413 before it is all sent; no 100 sent."""
    edge = start(edge_factory, edge_config(pki, [at(origin.port)], limits={"max_body_bytes": MiB}))
    total = 20 * MiB
    piece = 64 * KiB
    if framing == "content-length":
        head = b"PUT /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % total
        chunk = b"u" * piece
    else:
        head = b"PUT /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%b\r\n" % (piece, b"u" * piece)
    sent, received = upload_until_answered(edge.port, head, total // piece, chunk)
    assert received.startswith(b"HTTP/1.1 413"), received[:300]
    assert b"request_too_large" in received
    assert b"100 Continue" not in received
    assert sent < total, "the whole body was sent before the edge answered"
    records = edge.access_records(1)
    assert [(r["status"], r["error"]) for r in records] == [(413, "request_too_large")]
    assert origin.requests == []  # nothing of it was answered by the origin


@pytest.mark.parametrize(
    "host",
    [b"a .test", b"a.test a.test", b"user@a.test", b"a.test@evil.test", b"a.test:http", b""],
    ids=["space", "two-names", "userinfo", "at-sign", "port-not-digits", "empty"],
)
def test_invalid_host_gets_400_and_nothing_reaches_the_origin(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI, host: bytes
):
    """A Host with spaces, `@`/userinfo, a non-numeric port or nothing gets 400 bad_request."""
    edge = start(edge_factory, edge_config(pki, [at(origin.port)]))
    data = edge.raw(b"GET /h HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data
    assert b"bad_request" in data
    assert (only_record(edge)["status"], only_record(edge)["error"]) == (400, "bad_request")
    assert origin.requests == []
    assert origin.connections_opened == 0


def _abort_mid_response(edge: EdgeProcess, path: str, read: int) -> bytes:
    """GET `path` from a.test, read `read` bytes of the answer, then close the socket."""
    received = b""
    with socket.create_connection((LOOPBACK, edge.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        while len(received) < read:
            chunk = sock.recv(65536)
            assert chunk, "the edge closed the connection before the client did"
            received += chunk
    return received


def _origin_conn_of(head: bytes) -> str:
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-origin-conn":
            return value.strip().decode()
    raise AssertionError(f"no X-Origin-Conn in {head[:500]!r}")


def test_client_abort_mid_response_closes_the_origin_connection(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """A client leaving 100 KiB into 20 MiB makes the edge close, not reuse, that origin link."""
    edge = start(edge_factory, edge_config(pki, [at(origin.port)]))
    assert edge.request("GET", "/warm", host="a.test").status == 200
    wait_until(lambda: origin.open_connections == 1, what="the pooled origin connection")
    partial = _abort_mid_response(edge, f"/bytes/{20 * MiB}", 100 * KiB)
    assert partial.startswith(b"HTTP/1.1 200")
    dirty = _origin_conn_of(partial)
    wait_until(
        lambda: origin.open_connections == 0, what="the edge to close the aborted origin connection"
    )
    after = edge.request("GET", "/after-abort", host="a.test")
    assert after.status == 200, after.text
    assert after.json()["path"] == "/after-abort"
    assert after.header("X-Origin-Conn") != dirty
    assert after.json()["req_on_conn"] == 1
    assert origin.connections_opened == 2
    aborted = [r for r in edge.access_records(3) if r["path"].startswith("/bytes/")]
    assert len(aborted) == 1 and aborted[0]["bytes_sent"] < 20 * MiB, aborted


def test_aborted_responses_leak_no_file_descriptors(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """50 clients leaving mid-response leave the edge with as many fds as before (slack 5)."""
    edge = start(edge_factory, edge_config(pki, [at(origin.port)]))
    pid = edge_pid(edge)
    assert edge.request("GET", "/warm", host="a.test").status == 200
    fds_before = fd_count(pid)
    for _ in range(50):
        assert _abort_mid_response(edge, f"/bytes/{20 * MiB}", 100 * KiB).startswith(
            b"HTTP/1.1 200"
        )
    wait_until(
        lambda: origin.open_connections == 0,
        timeout=10,
        what="the edge to close every aborted origin connection",
    )
    fds_after = settle(lambda: fd_count(pid), fds_before + 5)
    print(f"edge fds: {fds_before} before, {fds_after} after 50 aborted responses")
    assert fds_after <= fds_before + 5, (fds_before, fds_after)
    assert len(edge.access_records(51)) == 51
    assert edge.request("GET", "/still-fine", host="a.test").status == 200


# -- no DelayedCall outlives an exchange (in memory) -------------------------------------


def _describe(calls: list[Any]) -> list[str]:
    return [f"{getattr(c.func, '__qualname__', c.func)} at {c.getTime():g}" for c in calls]


def _scenario_full_exchange(edge: Edge) -> None:
    client, transport = edge.client()
    client.dataReceived(b"GET /1 HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(OK_5)
    client.dataReceived(b"GET /2 HTTP/1.1\r\n" + WWW + b"\r\n")
    conn.dataReceived(OK_5)
    assert transport.value().count(b"HTTP/1.1 200 OK") == 2
    assert edge.pool.idle_count() == 1
    lose(client)


def _scenario_abort_mid_body(edge: Edge) -> None:
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, origin = edge.origin()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    lose(client, ConnectionLost)
    assert origin.disconnected  # aborted, not returned to the pool
    lose(conn, ConnectionLost)
    assert edge.pool.idle_count() == 0


def _scenario_abort_while_waiting_for_the_head(edge: Edge) -> None:
    client, _ = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, origin = edge.origin()
    edge.reactor.advance(1)
    lose(client)
    assert origin.disconnected
    lose(conn, ConnectionLost)


def _scenario_abort_mid_upload(edge: Edge) -> None:
    client, _ = edge.client()
    client.dataReceived(b"POST / HTTP/1.1\r\n" + WWW + b"Content-Length: 10\r\n\r\nhello")
    conn, origin = edge.origin()
    lose(client, ConnectionLost)
    assert origin.disconnected
    lose(conn, ConnectionLost)


def _scenario_abort_before_connect(edge: Edge) -> None:
    client, _ = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    lose(client)
    conn, _ = edge.origin()  # the connect completes after all: kept idle, no timer
    assert edge.pool.idle_count() == 1
    lose(conn)


def _scenario_abort_while_queued(edge: Edge) -> None:
    first, first_transport = edge.client()
    first.dataReceived(b"GET /1 HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    second, _ = edge.client()
    second.dataReceived(b"GET /2 HTTP/1.1\r\n" + WWW + b"\r\n")  # waits for the only slot
    assert edge.reactor.getDelayedCalls(), "the queued request has no queue timer"
    lose(second)
    conn.dataReceived(OK_5)
    assert first_transport.value().startswith(b"HTTP/1.1 200 OK")
    lose(first)


def _scenario_response_header_timeout(edge: Edge) -> None:
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    edge.reactor.advance(31)
    assert transport.value().startswith(b"HTTP/1.1 504")
    lose(conn, ConnectionLost)
    lose(client)


def _scenario_upload_over_the_limit(edge: Edge) -> None:
    client, transport = edge.client()
    client.dataReceived(b"POST / HTTP/1.1\r\n" + WWW + b"Transfer-Encoding: chunked\r\n\r\n")
    conn, _ = edge.origin()
    client.dataReceived(b"400\r\n" + b"u" * 1024 + b"\r\n")
    client.dataReceived(b"400\r\n" + b"u" * 1024 + b"\r\n")
    assert b"HTTP/1.1 413" in transport.value()
    lose(conn, ConnectionLost)
    lose(client)


def _scenario_body_stall(edge: Edge) -> None:
    client, transport = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, _ = edge.origin()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nxx")
    edge.reactor.advance(31)  # body_idle: the client connection is closed after a flush
    assert transport.disconnecting
    lose(conn, ConnectionLost)
    lose(client)


def _scenario_fin_mid_chunked_body(edge: Edge) -> None:
    client, _ = edge.client()
    client.dataReceived(b"GET / HTTP/1.1\r\n" + WWW + b"\r\n")
    conn, origin = edge.origin()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    lose(client, ConnectionDone)
    assert origin.disconnected
    lose(conn, ConnectionLost)
    assert edge.pool.open_count(("192.0.2.1", 80)) == 0


SCENARIOS = {
    "full-exchange": (_scenario_full_exchange, None),
    "abort-mid-body": (_scenario_abort_mid_body, None),
    "abort-waiting-for-head": (_scenario_abort_while_waiting_for_the_head, None),
    "abort-mid-upload": (_scenario_abort_mid_upload, None),
    "abort-before-connect": (_scenario_abort_before_connect, None),
    "abort-while-queued": (
        _scenario_abort_while_queued,
        {"origin_max_connections": 1, "origin_queue_timeout": 5},
    ),
    "response-header-timeout": (_scenario_response_header_timeout, None),
    "upload-over-the-limit": (_scenario_upload_over_the_limit, {"max_body_bytes": 1500}),
    "body-stall": (_scenario_body_stall, None),
    "fin-mid-chunked-body": (_scenario_fin_mid_chunked_body, None),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_delayed_call_outlives_an_exchange(scenario: str) -> None:
    """Once client and origin connections are gone (and one deadline tick has passed), only
    the pool's idle sweeper stays scheduled."""
    run, limits = SCENARIOS[scenario]
    edge = Edge(http_domain({"address": "192.0.2.1"}), limits=limits)
    edge.pool.start()  # as the service does: the sweeper is the one call meant to stay
    run(edge)
    assert edge.proxy.in_flight == 0
    assert len(edge.log.records) >= 1
    edge.reactor.advance(DEADLINE_TICK)  # the deadline tick's last run finds nothing in flight
    calls = edge.reactor.getDelayedCalls()
    assert len(calls) == 1, _describe(calls)
    edge.pool.stop()
    assert edge.reactor.getDelayedCalls() == [], _describe(edge.reactor.getDelayedCalls())
