"""Self-tests of the test fixtures (origins, nginx, the edge runner), using stdlib clients."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.protocol import Protocol

from tests.support.edge import EdgeProcess, send
from tests.support.net import LOOPBACK, free_port, port_accepts
from tests.support.nginx import NginxOrigin, nginx_binary
from tests.support.origin import Servers, TLSOrigin, listen_tcp, live_listeners, pattern
from tests.support.pki import PKI, subject_alt_names


class SNIConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 sending `sni` (or no SNI at all) in the ClientHello."""

    def __init__(self, port: int, sni: str | None, context: ssl.SSLContext) -> None:
        super().__init__(LOOPBACK, port, context=context, timeout=10)
        self.sni = sni

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.sni)

    def peer_cert(self) -> x509.Certificate:
        der = self.sock.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)

    def tls_version(self) -> str | None:
        return self.sock.version()


def client_context(pki: PKI, *, check_hostname: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.check_hostname = check_hostname
    return ctx


def get(conn: http.client.HTTPConnection, path: str, host: str = "origin.test", **kw: Any) -> Any:
    return send(conn, kw.pop("method", "GET"), path, host=host, **kw)


def read_until_close(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- the in-process TLS origin --


@pytest.mark.parametrize("name", ["a.test", "b.test"])
def test_origin_presents_the_certificate_of_the_sni_sent(origin: TLSOrigin, pki: PKI, name: str):
    """SNI a.test (b.test) gets the a.test (b.test) leaf, and the answer names that vhost."""
    conn = SNIConnection(origin.port, name, client_context(pki))
    resp = get(conn, "/hello?x=1", host=name)
    assert subject_alt_names(conn.peer_cert()) == [name]
    conn.close()
    assert resp.status == 200
    assert resp.header("X-Origin-Vhost") == name
    body = resp.json()
    assert (body["vhost"], body["sni"], body["host"]) == (name, name, name)
    assert (body["method"], body["path"]) == ("GET", "/hello?x=1")
    assert body["tls_version"] == "TLSv1.3"
    assert origin.requests == [body]
    assert [(h["sni"], h["vhost"]) for h in origin.handshakes] == [(name, name)]


def test_origin_without_sni_presents_the_default_certificate(origin: TLSOrigin, pki: PKI):
    """A ClientHello without SNI gets the default certificate and vhost "default"."""
    conn = SNIConnection(origin.port, None, client_context(pki, check_hostname=False))
    body = get(conn, "/").json()
    assert subject_alt_names(conn.peer_cert()) == ["default.test", "www.default.test"]
    conn.close()
    assert (body["vhost"], body["sni"]) == ("default", None)
    assert origin.handshakes[0]["sni"] is None


def test_origin_with_unknown_sni_presents_the_default_certificate(origin: TLSOrigin, pki: PKI):
    """An SNI with no certificate of its own gets the default one, and is reported as sent."""
    conn = SNIConnection(origin.port, "c.test", client_context(pki, check_hostname=False))
    body = get(conn, "/").json()
    assert subject_alt_names(conn.peer_cert()) == ["default.test", "www.default.test"]
    conn.close()
    assert (body["vhost"], body["sni"]) == ("default", "c.test")


def test_origin_without_default_rejects_unknown_names(servers: Servers, pki: PKI):
    """default=None answers no SNI or an unknown SNI with a fatal unrecognized_name alert."""
    origin = servers.tls_origin({"a.test": pki.leaf("a.test")}, None)
    for sni in (None, "c.test"):
        conn = SNIConnection(origin.port, sni, client_context(pki, check_hostname=False))
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            conn.connect()
        conn.close()
    assert [r["sni"] for r in origin.rejected_handshakes] == [None, "c.test"]
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    assert get(conn, "/").json()["vhost"] == "a.test"
    conn.close()


def test_origin_can_cap_tls_at_1_2(servers: Servers, pki: PKI):
    """max_tls="1.2" makes the origin negotiate TLS 1.2 even with a TLS 1.3 client."""
    origin = servers.tls_origin({"a.test": pki.leaf("a.test")}, None, max_tls="1.2")
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    body = get(conn, "/").json()
    assert conn.tls_version() == "TLSv1.2"
    conn.close()
    assert body["tls_version"] == "TLSv1.2"


def test_sanless_leaf_has_no_subject_alt_name(servers: Servers, pki: PKI):
    """The SAN-less leaf is signed by the trusted CA, carries only a CN, and is served as is."""
    origin = servers.tls_origin({"nosan.test": pki.sanless_leaf("nosan.test")}, None)
    conn = SNIConnection(origin.port, "nosan.test", client_context(pki, check_hostname=False))
    assert get(conn, "/").json()["vhost"] == "nosan.test"
    cert = conn.peer_cert()
    conn.close()
    assert subject_alt_names(cert) is None
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "nosan.test"
    # and a client that ignores the CN, as RFC 6125 asks, refuses it even for the CN's own name
    strict = client_context(pki)
    strict.hostname_checks_common_name = False
    conn = SNIConnection(origin.port, "nosan.test", strict)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.connect()
    conn.close()


def test_untrusted_leaf_does_not_verify(servers: Servers, pki: PKI):
    """A leaf from other_ca fails chain verification against pki.ca_file."""
    origin = servers.tls_origin({"a.test": pki.untrusted_leaf("a.test")}, None)
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        conn.connect()
    conn.close()


def test_bytes_are_the_deterministic_pattern(origin: TLSOrigin, pki: PKI):
    """/bytes/<n> answers n pattern bytes with a Content-Length."""
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    resp = get(conn, "/bytes/1000")
    conn.close()
    assert resp.status == 200
    assert resp.header("Content-Length") == "1000"
    assert resp.body == pattern(1000) == bytes(i % 251 for i in range(1000))


def test_large_bytes_stream(origin: TLSOrigin, pki: PKI):
    """A 20 MiB /bytes response arrives whole (the origin streams it with a producer)."""
    n = 20 * 1024 * 1024
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    resp = get(conn, f"/bytes/{n}")
    conn.close()
    assert len(resp.body) == n
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(pattern(n)).digest()


def test_chunked_has_no_content_length(origin: TLSOrigin, pki: PKI):
    """/chunked/<n> answers n pattern bytes with Transfer-Encoding: chunked."""
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    resp = get(conn, "/chunked/5000")
    conn.close()
    assert resp.header("Transfer-Encoding") == "chunked"
    assert resp.header("Content-Length") is None
    assert resp.body == pattern(5000)


def test_echo_returns_the_request_body(origin: TLSOrigin, pki: PKI):
    """/echo answers the request body verbatim, and the record hashes it."""
    payload = pattern(300_000)[::-1]
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    resp = get(conn, "/echo", method="POST", body=payload)
    conn.close()
    assert resp.header("Content-Type") == "application/octet-stream"
    assert resp.body == payload
    record = origin.requests[0]
    assert record["body_len"] == len(payload)
    assert record["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_status_paths(origin: TLSOrigin, pki: PKI):
    """/status/<code> answers that status; 204 and 304 without a body."""
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    no_content = get(conn, "/status/204")
    not_modified = get(conn, "/status/304")
    unavailable = get(conn, "/status/503")
    conn.close()
    assert (no_content.status, no_content.body) == (204, b"")
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert unavailable.status == 503
    assert unavailable.json()["path"] == "/status/503"


def test_request_headers_are_recorded_raw_and_in_order(origin: TLSOrigin, pki: PKI):
    """The record lists every header line as received, with repeats and original case."""
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    headers = [("X-Dup", "1"), ("x-lower", "v"), ("X-Dup", "2")]
    body = get(conn, "/h", host="a.test", headers=headers).json()
    conn.close()
    assert body["headers"] == [["Host", "a.test"], ["X-Dup", "1"], ["x-lower", "v"], ["X-Dup", "2"]]


def test_hop_response_headers(origin: TLSOrigin, pki: PKI):
    """/hop answers with a Connection header naming X-Hop-Resp, plus Keep-Alive and X-Kept."""
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    resp = get(conn, "/hop")
    conn.close()
    assert resp.header("Connection") == "X-Hop-Resp"
    assert resp.header("X-Hop-Resp") == "1"
    assert resp.header("Keep-Alive") == "timeout=5"
    assert resp.header("X-Kept") == "yes"


def test_keep_alive_requests_share_a_connection(origin: TLSOrigin, pki: PKI):
    """Two requests on one connection are numbered 1 and 2 under one conn_id."""
    conn = SNIConnection(origin.port, "b.test", client_context(pki))
    first = get(conn, "/1").json()
    second = get(conn, "/2").json()
    conn.close()
    assert first["conn_id"] == second["conn_id"]
    assert (first["req_on_conn"], second["req_on_conn"]) == (1, 2)
    assert origin.connections_opened == 1
    assert len(origin.handshakes) == 1


def test_close_after_response_drops_the_connection(servers: Servers, pki: PKI):
    """close_after_response closes the connection after one response without Connection: close."""
    origin = servers.tls_origin({"a.test": pki.leaf("a.test")}, None, close_after_response=True)
    raw = socket.create_connection((LOOPBACK, origin.port))
    with client_context(pki).wrap_socket(raw, server_hostname="a.test") as sock:
        sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        data = read_until_close(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection:" not in head.lower()
    assert body == pattern(10)


def test_drop_reused_closes_a_reused_connection_without_answering(servers: Servers, pki: PKI):
    """drop_reused answers a connection's first request and drops the connection at its second."""
    origin = servers.tls_origin({"a.test": pki.leaf("a.test")}, None, drop_reused=True)
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    assert get(conn, "/1").status == 200
    with pytest.raises(http.client.RemoteDisconnected):
        get(conn, "/2")
    conn.close()
    assert [r["path"] for r in origin.requests] == ["/1", "/2"]


def test_plain_http_origin(servers: Servers):
    """tls=False serves the same app over plain HTTP, with no TLS facts in the record."""
    origin = servers.tls_origin(tls=False)
    conn = http.client.HTTPConnection(LOOPBACK, origin.port, timeout=10)
    resp = get(conn, "/plain", host="p.test")
    conn.close()
    body = resp.json()
    assert (body["host"], body["vhost"], body["sni"], body["tls_version"]) == (
        "p.test",
        None,
        None,
        None,
    )
    assert resp.header("X-Origin-Vhost") is None


def test_delay_answers_later(origin: TLSOrigin, pki: PKI):
    """/delay/<seconds> answers after waiting."""
    conn = SNIConnection(origin.port, "a.test", client_context(pki))
    resp = get(conn, "/delay/0.05")
    conn.close()
    assert resp.status == 200
    assert resp.json()["path"] == "/delay/0.05"


def test_stop_closes_open_connections(servers: Servers, pki: PKI):
    """stop() closes the listener and every open connection, even one waiting on /delay."""
    origin = servers.tls_origin({"a.test": pki.leaf("a.test")}, None)
    raw = socket.create_connection((LOOPBACK, origin.port))
    with client_context(pki).wrap_socket(raw, server_hostname="a.test") as sock:
        sock.sendall(b"GET /delay/60 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        while not origin.requests:  # the origin has the request: it is now waiting
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        origin.stop()
        assert origin.open_connections == 0
        with contextlib.suppress(ConnectionResetError):  # an abort may arrive as a reset
            assert read_until_close(sock) == b""
    assert not port_accepts(origin.port)
    assert origin.listener not in live_listeners()


class _Garbage(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"HTTP/1.1 abc\r\n\r\n")
        self.transport.loseConnection()


def test_listen_tcp_runs_a_hand_written_protocol(servers: Servers):
    """servers.listen_tcp serves any protocol on 127.0.0.1 and counts its connections."""
    port = servers.listen_tcp(_Garbage)
    with socket.create_connection((LOOPBACK, port)) as sock:
        assert read_until_close(sock) == b"HTTP/1.1 abc\r\n\r\n"
    assert servers.listener(port).connections_opened == 1


def test_listen_tls_uses_the_sni_machinery(servers: Servers, pki: PKI):
    """servers.listen_tls wraps a protocol in TLS with per-SNI certificates."""
    port = servers.listen_tls(_Garbage, {"a.test": pki.leaf("a.test")}, None)
    raw = socket.create_connection((LOOPBACK, port))
    with client_context(pki).wrap_socket(raw, server_hostname="a.test") as sock:
        data = read_until_close(sock)
    assert data == b"HTTP/1.1 abc\r\n\r\n"
    [handshake] = servers.listener(port).handshakes
    assert (handshake["sni"], handshake["vhost"]) == ("a.test", "a.test")


def test_listeners_are_tracked_until_stopped(reactor_thread: Any):
    """A listener made outside the servers fixture is live until stop()."""
    listener = listen_tcp(_Garbage)
    assert listener in live_listeners()
    listener.stop()
    assert listener not in live_listeners()


# -- nginx --


def nginx_get(nginx: NginxOrigin, pki: PKI, sni: str, path: str) -> tuple[int, bytes]:
    conn = SNIConnection(nginx.port, sni, client_context(pki))
    resp = get(conn, path, host=sni)
    conn.close()
    return resp.status, resp.body


@pytest.mark.parametrize("name", ["a.test", "b.test"])
def test_nginx_serves_the_block_of_the_sni(nginx_origin: NginxOrigin, pki: PKI, name: str):
    """nginx answers SNI a.test (b.test) from the a.test (b.test) block with its certificate."""
    conn = SNIConnection(nginx_origin.port, name, client_context(pki))
    resp = get(conn, "/x?y=1", host=name)
    assert subject_alt_names(conn.peer_cert()) == [name]
    conn.close()
    assert resp.status == 200
    body = resp.json()
    assert (body["block"], body["sni"], body["host"], body["uri"]) == (name, name, name, "/x?y=1")


def test_nginx_rejects_handshakes_without_sni(nginx_origin: NginxOrigin, pki: PKI):
    """nginx's default server rejects a ClientHello without SNI (ssl_reject_handshake)."""
    conn = SNIConnection(nginx_origin.port, None, client_context(pki, check_hostname=False))
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        conn.connect()
    conn.close()


def test_missing_nginx_is_an_error_with_an_install_hint(tmp_path: Path):
    """Without nginx the fixture cannot start: it says how to install it (it never skips)."""
    with pytest.raises(RuntimeError, match="apt-get install"):
        nginx_binary(search_path=str(tmp_path), fallback=str(tmp_path / "nginx"))


def test_nginx_serves_files(nginx_origin: NginxOrigin, pki: PKI):
    """/files/1k is 1024 pattern bytes."""
    status, body = nginx_get(nginx_origin, pki, "a.test", "/files/1k")
    assert status == 200
    assert body == pattern(1024)


# -- the edge runner --


def test_edge_reports_a_missing_twistd_plugin(tmp_path: Path):
    """Starting a twistd sub-command that does not exist fails with twistd's output and a hint."""
    edge = EdgeProcess(tmp_path, {}, plugin="edgenode-no-such-plugin")
    with pytest.raises(AssertionError) as failure:
        edge.start(timeout=20)
    message = str(failure.value)
    assert "the edge did not start" in message
    assert "Unknown command: edgenode-no-such-plugin" in message
    assert "pip install -e" in message
    assert not edge.alive()


def test_edge_config_gets_loopback_listeners_and_a_token(tmp_path: Path, pki: PKI):
    """EdgeProcess fills in listen, admin and access_log, and pre-writes the admin token."""
    domains = {"a.test": {"origins": [{"address": "127.0.0.1"}]}}
    edge = EdgeProcess(tmp_path, {"tls": {"ca_file": pki.ca_file}, "domains": domains})
    written = yaml.safe_load(edge.config_path.read_text())
    assert written["listen"] == f"tcp:{edge.port}:interface=127.0.0.1"
    assert written["admin"] == {
        "listen": f"tcp:{edge.admin_port}:interface=127.0.0.1",
        "token_file": "admin.token",
    }
    assert written["access_log"] == "access.log"
    assert written["domains"] == domains
    assert written["tls"] == {"ca_file": str(pki.ca_file)}
    assert (tmp_path / "admin.token").read_text().strip() == edge.admin_token
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600


def test_edge_runner_drives_a_twistd_process(edge_factory: Any, tmp_path: Path):
    """request/raw/stop work against a twistd process (here twistd's own `web` plugin)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_bytes(b"hello")
    listen = f"tcp:{free_port()}:interface=127.0.0.1"
    edge = edge_factory(
        {"listen": listen},
        plugin="web",
        plugin_args=["--listen", listen, "--path", str(www)],
        wait_admin=False,
    )
    resp = edge.request("GET", "/hello.txt", host="x.test")
    assert (resp.status, resp.body) == (200, b"hello")
    conn = edge.connection()
    assert send(conn, "GET", "/hello.txt", host="x.test").body == b"hello"
    assert send(conn, "HEAD", "/hello.txt", host="x.test").body == b""
    conn.close()
    raw = edge.raw(b"GET /hello.txt HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"hello")
    # twistd re-raises the SIGTERM it handled, so its own plugins exit with -SIGTERM;
    # the edge must exit 0 (SPEC §2), which edge_factory checks for edgenode.
    assert edge.stop() == -signal.SIGTERM
    assert not edge.alive()
