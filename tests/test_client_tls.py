"""Integration: HTTPS for clients (SPEC §8) through the real edge, with real clients.

The edge is the real `twistd -n edgenode` with `listen_tls`; its certificates come from
their own CA (`tests.support.edgecerts`), which only the test clients trust. Behind it,
in-process TLS origins (`tests.support.origin`) answer each request with a JSON record of
what they received. The clients are Python's `ssl`, `curl` and `openssl s_client`; each
test checks what a user sees: which certificate the handshake presented (by SHA-256
fingerprint), the status and body, the access-log line, the admin API and the metrics.

Two edges are shared by the tests of this module (they only read them, and each test
finds its own log lines by request id, a unique path or a unique SNI, or counts from
where it started):

- `main_edge`: certificates [blog, *.example.test, shop, news+blog], `unknown_sni:
  default`, TLS 1.2 and 1.3, `client_header_timeout: 1`.
- `strict_edge`: certificates [shop, *.example.test], `unknown_sni: reject`,
  `client_min_version: "1.3"`.

Tests that reload or run workers start their own edge.
"""

from __future__ import annotations

import datetime
import http.client
import json
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgenode.tools.cli import main as edgenode_main
from tests.support.edge import EdgeProcess, Headers, Response, send
from tests.support.edgecerts import EdgeCert, EdgeCerts, fingerprint_der, fingerprint_pem
from tests.support.net import LOOPBACK, free_port, read_until_close
from tests.support.origin import TLSOrigin
from tests.support.pki import PKI
from tests.support.waiting import wait_until

EdgeFactory = Callable[..., EdgeProcess]

SHOP = "shop.example.test"  # its own certificate
BLOG = "blog.example.test"  # its own certificate (and in `news`'s, later in the list)
NEWS = "news.example.test"  # only in the `news` certificate
WWW = "www.example.test"  # covered by the wildcard only
SECURE = "secure.example.test"  # https_redirect: true; covered by the wildcard
PLAIN = "plain.test"  # a domain no certificate covers
WILDCARD = "*.example.test"

HANDSHAKE_TIMEOUT = 1.0  # limits.client_header_timeout of the shared edges
SLACK = 3.0  # seconds allowed on top of a timeout on this 2-core machine


# --------------------------------------------------------------------------------------
# Certificates, origins and the shared edges
# --------------------------------------------------------------------------------------


@attrs.frozen
class CertSet:
    """The edge certificates of this module, one file pair each."""

    blog: EdgeCert
    wildcard: EdgeCert
    shop: EdgeCert
    news: EdgeCert  # news.example.test and blog.example.test: blog's equal, listed after it


@attrs.frozen
class Origins:
    """The origins behind the edges: one for the shop side, one for the blog."""

    shop: TLSOrigin  # vhosts shop, www, secure, plain (by origin SNI)
    blog: TLSOrigin  # vhost blog


@pytest.fixture(scope="module")
def edge_certs(tmp_path_factory: pytest.TempPathFactory) -> EdgeCerts:
    """The CA of the edge's client-facing certificates; clients trust `edge_certs.ca_file`."""
    return EdgeCerts(tmp_path_factory.mktemp("edgecerts"))


@pytest.fixture(scope="module")
def certs(edge_certs: EdgeCerts) -> CertSet:
    """The shared edges' certificates (their CA's default validity: valid for centuries)."""
    return CertSet(
        blog=edge_certs.issue("blog", BLOG),
        wildcard=edge_certs.issue("wildcard", WILDCARD),
        shop=edge_certs.issue("shop", SHOP),
        news=edge_certs.issue("news", NEWS, BLOG),
    )


@pytest.fixture(scope="module")
def origins(reactor_thread: Any, pki: PKI) -> Iterator[Origins]:
    """Two in-process TLS origins; unknown origin SNI is refused (no default certificate)."""
    shop = TLSOrigin({name: pki.leaf(name) for name in (SHOP, WWW, SECURE, PLAIN)}, None)
    try:
        blog = TLSOrigin({BLOG: pki.leaf(BLOG)}, None)
    except BaseException:
        shop.stop()
        raise
    yield Origins(shop, blog)
    shop.stop()
    blog.stop()


def domains(origins: Origins, *, https_redirect: bool = True) -> dict[str, Any]:
    """The accelerated domains of every edge here, each with origin SNI on; `secure`
    redirects plain HTTP to HTTPS (which needs a certificate covering it)."""

    def to(origin: TLSOrigin, **settings: Any) -> dict[str, Any]:
        return {
            "origin_sni": {"enabled": True},
            "origins": [{"address": origin.address, "port": origin.port}],
            **settings,
        }

    return {
        SHOP: to(origins.shop),
        BLOG: to(origins.blog),
        WWW: to(origins.shop),
        SECURE: to(origins.shop, https_redirect=https_redirect),
        PLAIN: to(origins.shop),
    }


def edge_config(
    pki: PKI,
    certificates: list[EdgeCert],
    origins: Origins,
    *,
    https_redirect: bool = True,
    **tls: Any,
) -> dict[str, Any]:
    """An edge with an HTTPS listener on a free loopback port and these certificates."""
    return {
        "listen_tls": f"tcp:{free_port()}:interface={LOOPBACK}",
        "tls": {
            "ca_file": str(pki.ca_file),
            "certificates": [cert.entry() for cert in certificates],
            **tls,
        },
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 5, "body_idle": 5},
        "limits": {"client_header_timeout": HANDSHAKE_TIMEOUT},
        "domains": domains(origins, https_redirect=https_redirect),
    }


@pytest.fixture(scope="module")
def main_edge(
    tmp_path_factory: pytest.TempPathFactory, pki: PKI, certs: CertSet, origins: Origins
) -> Iterator[EdgeProcess]:
    """[blog, *.example.test, shop, news+blog], unknown_sni default, TLS 1.2+."""
    config = edge_config(pki, [certs.blog, certs.wildcard, certs.shop, certs.news], origins)
    yield from _run(tmp_path_factory.mktemp("main-edge"), config)


@pytest.fixture(scope="module")
def strict_edge(
    tmp_path_factory: pytest.TempPathFactory, pki: PKI, certs: CertSet, origins: Origins
) -> Iterator[EdgeProcess]:
    """[shop, *.example.test], unknown_sni reject, client_min_version 1.3."""
    config = edge_config(
        pki,
        [certs.shop, certs.wildcard],
        origins,
        unknown_sni="reject",
        client_min_version="1.3",
    )
    yield from _run(tmp_path_factory.mktemp("strict-edge"), config)


def _run(directory: Path, config: dict[str, Any]) -> Iterator[EdgeProcess]:
    """Run an edge for a module; at the end, fail on what `teardown_problems` finds."""
    edge = EdgeProcess(directory, config).start()
    try:
        yield edge
    finally:
        problems = edge.teardown_problems()
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


def https_port(edge: EdgeProcess) -> int:
    """The edge's listen_tls port."""
    assert edge.https_port is not None, "this edge has no listen_tls"
    return edge.https_port


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------


class HTTPSClient:
    """One client TLS connection to the edge's HTTPS port, carrying keep-alive requests.

    `sni=None` sends no server_name (the context must not check the host name then).
    """

    def __init__(
        self,
        port: int,
        sni: str | None,
        ctx: ssl.SSLContext,
        *,
        session: ssl.SSLSession | None = None,
        timeout: float = 10.0,
    ) -> None:
        raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=sni, session=session)
        except BaseException:
            raw.close()
            raise
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
        self.conn.sock = self.sock  # already connected: http.client uses it as it is

    @property
    def fingerprint(self) -> str:
        """The SHA-256 fingerprint of the certificate the edge presented."""
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return fingerprint_der(der)

    def request(
        self, method: str, path: str, *, host: str | None, headers: Headers = ()
    ) -> Response:
        return send(self.conn, method, path, host=host, headers=headers)

    def close(self) -> None:
        self.conn.close()
        self.sock.close()

    def __enter__(self) -> HTTPSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def presented(port: int, sni: str | None, ctx: ssl.SSLContext) -> str:
    """The fingerprint of the certificate a handshake with `sni` gets (no request)."""
    with HTTPSClient(port, sni, ctx) as client:
        return client.fingerprint


def no_sni_context(edge_certs: EdgeCerts) -> ssl.SSLContext:
    """Verifies the chain but not a name: for handshakes that send no SNI."""
    return edge_certs.client_context(check_hostname=False)


def s_client(
    port: int, *args: str, request: bytes = b"", timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """`openssl s_client -connect 127.0.0.1:<port> <args>` with `request` on stdin."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", *args],
        input=request.decode(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def first_pem_fingerprint(text: str) -> str:
    """The fingerprint of the first PEM certificate in a tool's output."""
    match = _PEM.search(text)
    assert match, f"no certificate in:\n{text}"
    return fingerprint_pem(match.group(0).encode())


def json_line(text: str) -> dict[str, Any]:
    """The origin's JSON record in a tool's output (it is one object, maybe with no newline
    after it)."""
    start = text.find('{"vhost"')
    assert start >= 0, f"no origin JSON record in:\n{text}"
    found, _ = json.JSONDecoder().raw_decode(text, start)
    assert isinstance(found, dict)
    return found


def client_hello(sni: str) -> bytes:
    """The bytes of a real TLS ClientHello for `sni`, as Python's ssl would send them."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:8]  # a TLS handshake record
    return hello


def handshake_failures(edge: EdgeProcess, error: str) -> list[dict[str, Any]]:
    """The request-less access-log lines of failed client handshakes with `error`."""
    return [r for r in edge.access_records() if r["request_id"] is None and r["error"] == error]


def new_failures(
    edge: EdgeProcess, error: str, before: int, n: int = 1, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """The `error` lines after the first `before`, once there are at least `n` of them
    (the access log is flushed at least once a second)."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = handshake_failures(edge, error)[before:]
        return len(found) >= n

    wait_until(logged, timeout, f"{n} new {error} access-log lines")
    return found


def metrics(edge: EdgeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics as {(sample name, sorted labels): value}."""
    resp = edge.admin_request("GET", "/metrics")
    assert resp.status == 200, resp.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(resp.text)
        for sample in family.samples
    }


def handshakes_total(edge: EdgeProcess, result: str) -> float:
    key = ("edgenode_client_tls_handshakes_total", (("result", result),))
    return metrics(edge).get(key, 0.0)


def wait_handshakes(edge: EdgeProcess, result: str, at_least: float) -> float:
    """`edgenode_client_tls_handshakes_total{result}` once it reached `at_least`."""
    seen: list[float] = [0.0]

    def reached() -> bool:
        seen[0] = handshakes_total(edge, result)
        return seen[0] >= at_least

    wait_until(reached, 5.0, f"client handshakes {result} >= {at_least} (last {seen[0]})")
    return seen[0]


def certificate_expiry(edge: EdgeProcess) -> dict[str, float]:
    """edgenode_certificate_expiry_timestamp_seconds by its `certificate` label."""
    return {
        dict(labels)["certificate"]: value
        for (name, labels), value in metrics(edge).items()
        if name == "edgenode_certificate_expiry_timestamp_seconds"
    }


def unique_path(prefix: str = "/t") -> str:
    """A path no other request used: how a test finds its own requests at the origins."""
    return f"{prefix}/{uuid.uuid4().hex}"


def origin_paths(origins: Origins) -> list[str]:
    """Every request path the origins received so far."""
    return [r["path"] for r in origins.shop.requests + origins.blog.requests]


# --------------------------------------------------------------------------------------
# 1. Each domain its own certificate: Python ssl, curl, openssl s_client
# --------------------------------------------------------------------------------------


def test_python_client_gets_each_domains_certificate_and_content(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, certs: CertSet, origins: Origins
) -> None:
    """shop and blog on one HTTPS port: each handshake presents that domain's certificate,
    the body comes from that domain's origin, and the access log says https, SNI, version."""
    ctx = edge_certs.client_context()
    for name, cert, origin in ((SHOP, certs.shop, origins.shop), (BLOG, certs.blog, origins.blog)):
        path = unique_path()
        with HTTPSClient(https_port(main_edge), name, ctx) as client:
            assert client.fingerprint == cert.fingerprint, name
            resp = client.request("GET", path, host=name)
        assert resp.status == 200, resp.text
        body = resp.json()
        assert (body["vhost"], body["host"], body["path"]) == (name, name, path)
        record = main_edge.record(resp)
        assert (record["scheme"], record["client_sni"], record["client_tls_version"]) == (
            "https",
            name,
            "TLSv1.3",
        )
        assert (record["status"], record["domain"], record["error"]) == (200, name, None)
        assert record["origin"] == f"{LOOPBACK}:{origin.port}"


def test_curl_gets_each_domains_certificate_and_content(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, certs: CertSet, tmp_path: Path
) -> None:
    """curl --resolve NAME:PORT:127.0.0.1 --cacert: verified, the right certificate, the
    right origin's body, and an access-log line naming the SNI."""
    port = https_port(main_edge)
    for name, cert in ((SHOP, certs.shop), (BLOG, certs.blog)):
        path = unique_path("/curl")
        headers_file, body_file = tmp_path / f"{name}.headers", tmp_path / f"{name}.body"
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "--resolve",
                f"{name}:{port}:{LOOPBACK}",
                "--cacert",
                str(edge_certs.ca_file),
                "-D",
                str(headers_file),
                "-o",
                str(body_file),
                "-w",
                "%{http_code}\n%{certs}",
                f"https://{name}:{port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        status, _, certs_text = result.stdout.partition("\n")
        assert status == "200"
        assert first_pem_fingerprint(certs_text) == cert.fingerprint, name
        body = json.loads(body_file.read_bytes())
        assert (body["vhost"], body["host"], body["path"]) == (name, name, path)
        request_id = re.search(r"(?im)^X-Edge-Request-Id: *(\S+)", headers_file.read_text())
        assert request_id, headers_file.read_text()
        record = main_edge.record(request_id.group(1))
        assert (record["scheme"], record["client_sni"], record["path"]) == ("https", name, path)
        assert record["client_tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_openssl_s_client_sees_each_domains_certificate(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, certs: CertSet
) -> None:
    """openssl s_client -servername NAME verifies against the test CA, gets that name's
    certificate (compared by fingerprint, SAN read from it), and a request goes through."""
    port = https_port(main_edge)
    for name, cert in ((SHOP, certs.shop), (BLOG, certs.blog)):
        path = unique_path("/openssl")
        request = f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
        result = s_client(
            port,
            "-servername",
            name,
            "-CAfile",
            str(edge_certs.ca_file),
            "-verify_return_error",
            "-ign_eof",
            request=request,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Verify return code: 0 (ok)" in result.stdout
        assert first_pem_fingerprint(result.stdout) == cert.fingerprint, name
        assert "HTTP/1.1 200 OK" in result.stdout
        body = json_line(result.stdout)
        assert (body["vhost"], body["host"], body["path"]) == (name, name, path)


# --------------------------------------------------------------------------------------
# 2. Exact beats wildcard, whatever the order; equals: the first in the list
# --------------------------------------------------------------------------------------


# The origins first: a module fixture made inside the test (getfixturevalue) would start
# them after conftest's check of leftover listeners took its "before".
@pytest.mark.usefixtures("origins")
@pytest.mark.parametrize(
    ("edge_name", "expected"),
    [
        pytest.param(
            "main_edge",  # [blog, *.example.test, shop, news+blog]: wildcard before exact
            {
                SHOP: "shop",
                "Shop.Example.TEST": "shop",  # SNI is case-insensitive
                WWW: "wildcard",
                "other.example.test": "wildcard",
                BLOG: "blog",  # in blog and news: the first in the list
                NEWS: "news",
            },
            id="wildcard-listed-first",
        ),
        pytest.param(
            "strict_edge",  # [shop, *.example.test]: exact before wildcard
            {
                SHOP: "shop",
                "Shop.Example.TEST": "shop",
                WWW: "wildcard",
                "other.example.test": "wildcard",
            },
            id="exact-listed-first",
        ),
    ],
)
def test_exact_name_beats_wildcard_in_either_order(
    request: pytest.FixtureRequest,
    edge_certs: EdgeCerts,
    certs: CertSet,
    edge_name: str,
    expected: dict[str, str],
) -> None:
    """An SNI both an exact and a wildcard certificate cover gets the exact one, in either
    list order; the wildcard gets the names only it covers; among equals the first wins."""
    edge: EdgeProcess = request.getfixturevalue(edge_name)
    ctx = edge_certs.client_context()
    seen = {sni: presented(https_port(edge), sni, ctx) for sni in expected}
    want = {sni: getattr(certs, which).fingerprint for sni, which in expected.items()}
    assert seen == want


# --------------------------------------------------------------------------------------
# 3. No SNI and unknown SNI: default or reject
# --------------------------------------------------------------------------------------


def test_default_mode_gives_no_and_unknown_sni_the_first_certificate(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, certs: CertSet
) -> None:
    """unknown_sni: default: no SNI (openssl -noservername, Python), an SNI nothing covers,
    and a name two labels under the wildcard all get the first certificate (blog's)."""
    port = https_port(main_edge)
    result = s_client(port, "-noservername", "-CAfile", str(edge_certs.ca_file))
    assert "Verify return code: 0 (ok)" in result.stdout, result.stdout + result.stderr
    assert first_pem_fingerprint(result.stdout) == certs.blog.fingerprint

    ctx = no_sni_context(edge_certs)
    for sni in (None, "nobody.other.test", "a.b.example.test"):
        assert presented(port, sni, ctx) == certs.blog.fingerprint, sni

    with HTTPSClient(port, None, ctx) as client:  # the default certificate covers blog
        resp = client.request("GET", unique_path(), host=BLOG)
    assert resp.status == 200, resp.text
    record = main_edge.record(resp)
    assert (record["scheme"], record["client_sni"]) == ("https", None)


def test_reject_mode_refuses_no_and_unknown_sni_with_unrecognized_name(
    strict_edge: EdgeProcess, edge_certs: EdgeCerts
) -> None:
    """unknown_sni: reject: an SNI nothing covers (also two labels under the wildcard) and
    no SNI at all fail the handshake with the alert unrecognized_name; each gets a
    client_tls_unknown_sni access-log line and counts as unknown_sni_rejected."""
    port = https_port(strict_edge)
    before_lines = len(handshake_failures(strict_edge, "client_tls_unknown_sni"))
    before_count = handshakes_total(strict_edge, "unknown_sni_rejected")
    unknown = f"nobody-{uuid.uuid4().hex[:12]}.other.test"
    deep = f"a{uuid.uuid4().hex[:12]}.b.example.test"

    ctx = no_sni_context(edge_certs)
    for sni in (unknown, deep, None):
        with pytest.raises(ssl.SSLError) as caught:
            HTTPSClient(port, sni, ctx).close()
        assert caught.value.reason == "TLSV1_UNRECOGNIZED_NAME", (sni, caught.value)

    result = s_client(port, "-noservername", "-CAfile", str(edge_certs.ca_file))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "unrecognized name" in output, output
    assert "SSL alert number 112" in output, output

    lines = new_failures(strict_edge, "client_tls_unknown_sni", before_lines, n=4)
    assert len(lines) == 4, lines
    assert [line["client_sni"] for line in lines] == [unknown, deep, None, None]
    for line in lines:
        assert (line["status"], line["scheme"], line["request_id"]) == (None, "https", None)
        assert line["error_detail"]
    assert wait_handshakes(strict_edge, "unknown_sni_rejected", before_count + 4) == (
        before_count + 4
    )


# --------------------------------------------------------------------------------------
# 4. 421 misdirected_request
# --------------------------------------------------------------------------------------


def test_host_outside_the_connections_certificate_is_421_and_reaches_no_origin(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, origins: Origins
) -> None:
    """On a connection that presented shop's certificate, Host blog (a configured domain)
    and Host plain.test get 421 misdirected_request and no origin sees them; the same
    connection then still serves shop; a wildcard connection serves any name it covers."""
    port = https_port(main_edge)
    ctx = edge_certs.client_context()
    misdirected = {BLOG: unique_path("/misdirected"), PLAIN: unique_path("/misdirected")}
    with HTTPSClient(port, SHOP, ctx) as client:
        for host, path in misdirected.items():
            resp = client.request("GET", path, host=host)
            assert resp.status == 421, (host, resp.status, resp.text)
            assert resp.header("X-Edge-Error") == "misdirected_request"
            assert "misdirected_request" in resp.text
            record = main_edge.record(resp)
            assert (record["status"], record["error"]) == (421, "misdirected_request")
            assert (record["client_sni"], record["host"]) == (SHOP, host)
            assert record["origin"] is None
        allowed = client.request("GET", unique_path(), host=SHOP)  # same connection
        assert allowed.status == 200, allowed.text
        assert allowed.json()["vhost"] == SHOP

    with HTTPSClient(port, WWW, ctx) as client:  # *.example.test covers shop too
        resp = client.request("GET", unique_path(), host=SHOP)
        assert resp.status == 200, resp.text
        assert resp.json()["vhost"] == SHOP

    assert not set(misdirected.values()) & set(origin_paths(origins))


# --------------------------------------------------------------------------------------
# 5. X-Forwarded-Proto
# --------------------------------------------------------------------------------------


def test_origin_sees_x_forwarded_proto_https_for_tls_requests(
    main_edge: EdgeProcess, edge_certs: EdgeCerts
) -> None:
    """Over TLS the origin receives X-Forwarded-Proto: https (one value, whatever the client
    claimed); over plain HTTP, http."""
    with HTTPSClient(https_port(main_edge), SHOP, edge_certs.client_context()) as client:
        resp = client.request(
            "GET", unique_path(), host=SHOP, headers=[("X-Forwarded-Proto", "http")]
        )
    assert resp.status == 200, resp.text
    proto = [v for n, v in resp.json()["headers"] if n.lower() == "x-forwarded-proto"]
    assert proto == ["https"]

    plain = main_edge.request("GET", unique_path(), host=SHOP)
    assert plain.status == 200, plain.text
    proto = [v for n, v in plain.json()["headers"] if n.lower() == "x-forwarded-proto"]
    assert proto == ["http"]
    record = main_edge.record(plain)
    assert (record["scheme"], record["client_sni"], record["client_tls_version"]) == (
        "http",
        None,
        None,
    )


# --------------------------------------------------------------------------------------
# 6. https_redirect
# --------------------------------------------------------------------------------------


def test_https_redirect_answers_plain_http_with_308_to_the_https_port(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, origins: Origins
) -> None:
    """Plain HTTP for a redirecting domain: 308 with Location https://host:PORT/path?query
    (the listen_tls port, whatever port the Host named) and no origin contacted; the same
    domain over HTTPS is proxied; a domain without the setting is proxied over HTTP."""
    port = https_port(main_edge)
    path = unique_path("/redirect") + "?q=1&r=two%20words"
    for host in (SECURE, f"{SECURE}:{main_edge.port}"):
        resp = main_edge.request("GET", path, host=host)
        assert resp.status == 308, resp.text
        assert resp.header("Location") == f"https://{SECURE}:{port}{path}"
        record = main_edge.record(resp)
        assert (record["status"], record["scheme"], record["domain"]) == (308, "http", SECURE)
    assert path not in origin_paths(origins)

    with HTTPSClient(port, SECURE, edge_certs.client_context()) as client:
        resp = client.request("GET", path, host=SECURE)
    assert resp.status == 200, resp.text
    assert (resp.json()["vhost"], resp.json()["path"]) == (SECURE, path)

    other = main_edge.request("GET", path, host=SHOP)
    assert other.status == 200, other.text


def test_curl_follows_the_https_redirect_to_the_origin(
    main_edge: EdgeProcess, edge_certs: EdgeCerts
) -> None:
    """curl -L from http://secure...:HTTP_PORT ends at https://secure...:HTTPS_PORT with
    the origin's answer: the redirect is one a real client can follow and verify."""
    path = unique_path("/follow") + "?x=1"
    http_port, port = main_edge.port, https_port(main_edge)
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-L",
            "--resolve",
            f"{SECURE}:{http_port}:{LOOPBACK}",
            "--resolve",
            f"{SECURE}:{port}:{LOOPBACK}",
            "--cacert",
            str(edge_certs.ca_file),
            "-w",
            "\n%{num_redirects} %{http_code} %{url_effective}",
            f"http://{SECURE}:{http_port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, summary = result.stdout.rpartition("\n")
    assert summary == f"1 200 https://{SECURE}:{port}{path}"
    record = json.loads(body)
    assert (record["vhost"], record["path"]) == (SECURE, path)


# --------------------------------------------------------------------------------------
# 7, 8. Reload
# --------------------------------------------------------------------------------------


def _rewrite_config(edge: EdgeProcess, certificates: list[EdgeCert]) -> None:
    """Rewrite the edge's config file with these certificates (for the next reload)."""
    edge.config["tls"]["certificates"] = [cert.entry() for cert in certificates]
    edge.config_path.write_text(yaml.safe_dump(edge.config, sort_keys=False))


def test_reload_swaps_a_certificate_while_established_connections_keep_theirs(
    edge_factory: EdgeFactory,
    pki: PKI,
    edge_certs: EdgeCerts,
    origins: Origins,
    tmp_path: Path,
) -> None:
    """POST /reload after shop's certificate was renewed in place (and blog's added): the
    answer names the change by fingerprint; an open keep-alive TLS connection still works
    and still has the old certificate; new handshakes get the new one; the expiry metric
    follows. SIGHUP does the same, and a reload that drops blog lists it as removed."""
    where = tmp_path / "certs"
    old = edge_certs.issue("shop", SHOP, directory=where)
    edge = edge_factory(edge_config(pki, [old], origins, https_redirect=False))
    port = https_port(edge)
    ctx = edge_certs.client_context()

    with HTTPSClient(port, SHOP, ctx) as kept:
        assert kept.request("GET", "/before", host=SHOP).status == 200
        assert kept.fingerprint == old.fingerprint

        renewed_until = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        renewed_until += datetime.timedelta(days=200)
        new = edge_certs.issue("shop", SHOP, directory=where, not_after=renewed_until)
        blog = edge_certs.issue("blog", BLOG, directory=where)
        _rewrite_config(edge, [new, blog])
        answer = edge.admin_request("POST", "/reload")
        assert answer.status == 200, answer.text
        assert answer.json()["generation"] == 2
        changes = answer.json()["changed"]["certificates"]
        assert changes["changed"] == [
            {
                "cert_file": str(new.cert_file),
                "names": [SHOP],
                "old_fingerprint_sha256": old.fingerprint,
                "new_fingerprint_sha256": new.fingerprint,
            }
        ]
        assert [(c["cert_file"], c["fingerprint_sha256"]) for c in changes["added"]] == [
            (str(blog.cert_file), blog.fingerprint)
        ]
        assert changes["removed"] == []
        assert certificate_expiry(edge) == {
            SHOP: new.not_after.timestamp(),
            BLOG: blog.not_after.timestamp(),
        }

        assert presented(port, SHOP, ctx) == new.fingerprint
        assert presented(port, BLOG, ctx) == blog.fingerprint
        after = kept.request("GET", "/after", host=SHOP)  # the same, older connection
        assert after.status == 200, after.text
        assert after.json()["path"] == "/after"
        assert kept.fingerprint == old.fingerprint

        third = edge_certs.issue("shop", SHOP, directory=where)
        edge.signal(signal.SIGHUP)
        wait_until(
            lambda: presented(port, SHOP, ctx) == third.fingerprint,
            10,
            "SIGHUP to put the third certificate in place",
        )
        assert kept.request("GET", "/after-sighup", host=SHOP).status == 200
        assert kept.fingerprint == old.fingerprint

    listed = edge.admin_request("GET", "/certificates").json()["certificates"]
    assert [c["fingerprint_sha256"] for c in listed] == [third.fingerprint, blog.fingerprint]

    _rewrite_config(edge, [third])
    answer = edge.admin_request("POST", "/reload")
    assert answer.status == 200, answer.text
    changes = answer.json()["changed"]["certificates"]
    assert (changes["added"], changes["changed"]) == ([], [])
    assert [(c["cert_file"], c["fingerprint_sha256"]) for c in changes["removed"]] == [
        (str(blog.cert_file), blog.fingerprint)
    ]
    assert certificate_expiry(edge) == {SHOP: third.not_after.timestamp()}


def test_reload_with_a_mismatched_key_is_422_and_the_old_certificate_stays(
    edge_factory: EdgeFactory,
    pki: PKI,
    edge_certs: EdgeCerts,
    origins: Origins,
    tmp_path: Path,
) -> None:
    """A renewal whose key file holds another key: POST /reload is 422 naming
    tls.certificates[0].key_file, the generation stays, and new handshakes still get the
    old certificate and are served."""
    where = tmp_path / "certs"
    old = edge_certs.issue("shop", SHOP, directory=where)
    edge = edge_factory(edge_config(pki, [old], origins, https_redirect=False))
    port = https_port(edge)
    renewed = edge_certs.issue("renewed", SHOP, directory=where)
    edge_certs.mismatched("shop", renewed, directory=where)  # shop.pem/.key: no longer a pair

    answer = edge.admin_request("POST", "/reload")
    assert answer.status == 422, answer.text
    errors = {e["path"]: e["message"] for e in answer.json()["errors"]}
    assert "tls.certificates[0].key_file" in errors, errors
    assert str(old.key_file) in errors["tls.certificates[0].key_file"]
    assert edge.admin_request("GET", "/healthz", token=None).json()["generation"] == 1

    with HTTPSClient(port, SHOP, edge_certs.client_context()) as client:
        assert client.fingerprint == old.fingerprint
        resp = client.request("GET", unique_path(), host=SHOP)
    assert resp.status == 200, resp.text
    listed = edge.admin_request("GET", "/certificates").json()["certificates"]
    assert [c["fingerprint_sha256"] for c in listed] == [old.fingerprint]


# --------------------------------------------------------------------------------------
# 9. edgenode check
# --------------------------------------------------------------------------------------


def _check_config(
    tmp_path: Path,
    certificates: list[dict[str, str]],
    *,
    listen_tls: bool = True,
    redirect: str | None = None,
) -> Path:
    """A config file for `edgenode check` with these `tls.certificates` entries."""
    config: dict[str, Any] = {
        "listen": "tcp:8080",
        "tls": {"certificates": certificates},
        "domains": {
            SHOP: {"origins": [{"address": "203.0.113.10"}]},
            PLAIN: {"origins": [{"address": "203.0.113.11"}]},
        },
    }
    if listen_tls:
        config["listen_tls"] = "tcp:8443"
    if redirect is not None:
        config["domains"][redirect]["https_redirect"] = True
    path = tmp_path / "edgenode.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# A certificate `edgenode check` must refuse: its tls.certificates[] entry, the field at
# fault (cert_file or key_file) and words the message about it has.
Broken = tuple[dict[str, str], str, str]


def _expired(edge_certs: EdgeCerts, where: Path, pki: PKI) -> Broken:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    cert = edge_certs.issue("expired", SHOP, directory=where, not_after=past)
    return cert.entry(), "cert_file", "expired"


def _garbled(edge_certs: EdgeCerts, where: Path, pki: PKI) -> Broken:
    cert = edge_certs.issue("garbled", SHOP, directory=where)
    cert.cert_file.write_text(
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all\n-----END CERTIFICATE-----\n"
    )
    return cert.entry(), "cert_file", "PEM"


def _missing_cert(edge_certs: EdgeCerts, where: Path, pki: PKI) -> Broken:
    cert = edge_certs.issue("missing", SHOP, directory=where)
    cert.cert_file.unlink()
    return cert.entry(), "cert_file", "cannot be read"


def _missing_key(edge_certs: EdgeCerts, where: Path, pki: PKI) -> Broken:
    cert = edge_certs.issue("nokey", SHOP, directory=where)
    cert.key_file.unlink()
    return cert.entry(), "key_file", "cannot be read"


def _sanless(edge_certs: EdgeCerts, where: Path, pki: PKI) -> Broken:
    cert = edge_certs.write("sanless", *pki.sanless_leaf(SHOP), directory=where)
    return cert.entry(), "cert_file", "subjectAltName"


def _mismatched(edge_certs: EdgeCerts, where: Path, pki: PKI) -> Broken:
    cert = edge_certs.issue("pair", SHOP, directory=where)
    return edge_certs.mismatched("mismatched", cert, directory=where).entry(), "key_file", "match"


@pytest.mark.parametrize(
    "make",
    [_expired, _garbled, _missing_cert, _missing_key, _sanless, _mismatched],
    ids=["expired", "garbled-pem", "missing-cert", "missing-key", "no-dns-san", "key-mismatch"],
)
def test_check_refuses_a_certificate_that_cannot_be_served(
    make: Callable[[EdgeCerts, Path, PKI], Broken],
    edge_certs: EdgeCerts,
    pki: PKI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`edgenode check` exits 1 for an expired certificate, a garbled PEM, a missing file,
    a leaf without DNS SAN and a key of another leaf, naming tls.certificates[0].<field>
    and the file at fault."""
    entry, field, words = make(edge_certs, tmp_path, pki)
    config = _check_config(tmp_path, [entry])
    assert edgenode_main(["check", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if f"tls.certificates[0].{field}:" in line]
    assert len(lines) == 1, err
    assert entry[field] in lines[0]
    assert words in lines[0], lines[0]


def test_check_refuses_https_settings_without_a_certificate(
    edge_certs: EdgeCerts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """listen_tls with no certificate, and https_redirect on a domain no certificate covers,
    are errors naming listen_tls and domains.<name>.https_redirect."""
    config = _check_config(tmp_path, [])
    assert edgenode_main(["check", str(config)]) == 1
    assert "  listen_tls: " in capsys.readouterr().err

    shop = edge_certs.issue("shop", SHOP, directory=tmp_path)
    config = _check_config(tmp_path, [shop.entry()], redirect=PLAIN)
    assert edgenode_main(["check", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"  domains.{PLAIN}.https_redirect: " in err, err
    config = _check_config(tmp_path, [shop.entry()], redirect=SHOP)
    assert edgenode_main(["check", str(config)]) == 0, capsys.readouterr().err


def test_check_warns_about_a_certificate_expiring_within_14_days(
    edge_certs: EdgeCerts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate expiring in 5 days passes `edgenode check` (exit 0, the valid line)
    with a warning line naming the file and the days left."""
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5, hours=1)
    cert = edge_certs.issue("soon", SHOP, directory=tmp_path, not_after=soon)
    config = _check_config(tmp_path, [cert.entry()])
    assert edgenode_main(["check", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"edgenode: {config} is valid:"), out
    warnings_ = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings_) == 1, err
    assert str(cert.cert_file) in warnings_[0]
    assert re.search(r"\b5(\.\d+)? days\b", warnings_[0]), warnings_[0]


# --------------------------------------------------------------------------------------
# 10. Garbage and stalled handshakes
# --------------------------------------------------------------------------------------


def test_plain_http_sent_to_the_tls_port_is_closed_and_logged(main_edge: EdgeProcess) -> None:
    """`GET / HTTP/1.1` in clear to the HTTPS port: the connection is closed (well within
    client_header_timeout), no HTTP answer, a client_tls_failed line, a failed count."""
    before_lines = len(handshake_failures(main_edge, "client_tls_failed"))
    before_count = handshakes_total(main_edge, "failed")
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, https_port(main_edge)), timeout=10) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {SHOP}\r\n\r\n".encode())
        received = read_until_close(sock, time.monotonic() + HANDSHAKE_TIMEOUT + SLACK)
    elapsed = time.monotonic() - started
    assert elapsed < HANDSHAKE_TIMEOUT + SLACK, f"still open after {elapsed:.1f}s"
    assert b"HTTP/" not in received
    (line,) = new_failures(main_edge, "client_tls_failed", before_lines)
    assert (line["request_id"], line["status"], line["scheme"]) == (None, None, "https")
    assert line["client"] == LOOPBACK
    assert line["error_detail"]
    assert wait_handshakes(main_edge, "failed", before_count + 1) >= before_count + 1


def test_a_stalled_handshake_is_closed_after_client_header_timeout_while_others_are_served(
    main_edge: EdgeProcess, edge_certs: EdgeCerts
) -> None:
    """A client that sends part of a ClientHello and stops, and one that sends nothing, are
    closed within client_header_timeout (+ slack); meanwhile a normal HTTPS request
    succeeds; the stalled handshake leaves a client_tls_failed line saying it timed out."""
    before_lines = len(handshake_failures(main_edge, "client_tls_failed"))
    port = https_port(main_edge)
    hello = client_hello(SHOP)
    closed_after: dict[str, float] = {}

    def stall(name: str, data: bytes) -> None:
        started = time.monotonic()
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(data)
            read_until_close(sock, started + HANDSHAKE_TIMEOUT + SLACK + 2)
        closed_after[name] = time.monotonic() - started

    stallers = [
        threading.Thread(target=stall, args=("partial hello", hello[: len(hello) // 2])),
        threading.Thread(target=stall, args=("silent", b"")),
    ]
    for thread in stallers:
        thread.start()
    try:
        with HTTPSClient(port, SHOP, edge_certs.client_context()) as client:
            resp = client.request("GET", unique_path(), host=SHOP)
        assert resp.status == 200, resp.text
    finally:
        for thread in stallers:
            thread.join(HANDSHAKE_TIMEOUT + SLACK + 5)
    assert set(closed_after) == {"partial hello", "silent"}
    for name, elapsed in closed_after.items():
        assert elapsed < HANDSHAKE_TIMEOUT + SLACK, f"{name}: closed after {elapsed:.1f}s"
    lines = new_failures(main_edge, "client_tls_failed", before_lines)
    timed_out = [line for line in lines if "client_header_timeout" in line["error_detail"]]
    assert timed_out, lines


# --------------------------------------------------------------------------------------
# 11. GET /certificates and the metrics
# --------------------------------------------------------------------------------------


def test_get_certificates_lists_the_edges_certificates(
    main_edge: EdgeProcess, strict_edge: EdgeProcess, certs: CertSet
) -> None:
    """GET /certificates (admin token): the listener, unknown_sni, client_min_version and
    each certificate in list order with names, fingerprint, issuer, not-after and file."""
    assert main_edge.admin_request("GET", "/certificates", token=None).status == 401
    resp = main_edge.admin_request("GET", "/certificates")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert (body["listen_tls"], body["unknown_sni"], body["client_min_version"]) == (
        main_edge.config["listen_tls"],
        "default",
        "1.2",
    )
    listed = body["certificates"]
    expected = [certs.blog, certs.wildcard, certs.shop, certs.news]
    assert [c["fingerprint_sha256"] for c in listed] == [c.fingerprint for c in expected]
    for shown, cert in zip(listed, expected, strict=True):
        assert shown["names"] == list(cert.names)
        assert shown["cert_file"] == str(cert.cert_file)
        assert shown["not_after"] == cert.not_after_text
        assert "edgenode client-facing test CA" in shown["issuer"]
        assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", shown["fingerprint_sha256"])

    strict = strict_edge.admin_request("GET", "/certificates").json()
    assert (strict["unknown_sni"], strict["client_min_version"]) == ("reject", "1.3")
    assert [c["names"] for c in strict["certificates"]] == [[SHOP], [WILDCARD]]


def test_metrics_count_handshakes_and_show_each_certificates_expiry(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, certs: CertSet
) -> None:
    """edgenode_client_tls_handshakes_total{result="ok"} counts completed handshakes and
    edgenode_certificate_expiry_timestamp_seconds{certificate=<first DNS name>} is each
    certificate's not-after."""
    before = handshakes_total(main_edge, "ok")
    ctx = edge_certs.client_context()
    for sni in (SHOP, BLOG, WWW):
        presented(https_port(main_edge), sni, ctx)
    assert wait_handshakes(main_edge, "ok", before + 3) >= before + 3

    assert certificate_expiry(main_edge) == {
        cert.names[0]: cert.not_after.timestamp()
        for cert in (certs.blog, certs.wildcard, certs.shop, certs.news)
    }


# --------------------------------------------------------------------------------------
# 12. Protocol versions, ALPN, resumption
# --------------------------------------------------------------------------------------


def _legacy_context(edge_certs: EdgeCerts, version: str) -> ssl.SSLContext:
    """A client allowing only TLS 1.0/1.1, at OpenSSL security level 0 so that it can
    send such a ClientHello at all; the server has to be the one to refuse it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 itself
        ctx = edge_certs.client_context(
            minimum=ssl.TLSVersion.TLSv1, maximum=getattr(ssl.TLSVersion, version)
        )
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def test_a_tls_1_1_client_is_refused_by_the_edge(
    main_edge: EdgeProcess, edge_certs: EdgeCerts
) -> None:
    """A client that offers at most TLS 1.1 gets the protocol_version alert from the edge
    (the server refuses, not the local library), and a client_tls_failed line."""
    before_lines = len(handshake_failures(main_edge, "client_tls_failed"))
    with pytest.raises(ssl.SSLError) as caught:
        HTTPSClient(https_port(main_edge), SHOP, _legacy_context(edge_certs, "TLSv1_1")).close()
    assert caught.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", caught.value
    (line,) = new_failures(main_edge, "client_tls_failed", before_lines)
    assert "protocol" in line["error_detail"], line


def test_client_min_version_1_3_refuses_a_tls_1_2_client(
    main_edge: EdgeProcess, strict_edge: EdgeProcess, edge_certs: EdgeCerts
) -> None:
    """With client_min_version "1.3" a TLS 1.2-only client is refused with protocol_version;
    a TLS 1.3 client is served there, and the default edge serves TLS 1.2 (and logs it)."""
    tls12 = edge_certs.client_context(maximum=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError) as caught:
        HTTPSClient(https_port(strict_edge), SHOP, tls12).close()
    assert caught.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", caught.value

    with HTTPSClient(https_port(strict_edge), SHOP, edge_certs.client_context()) as client:
        assert client.sock.version() == "TLSv1.3"
        assert client.request("GET", unique_path(), host=SHOP).status == 200

    with HTTPSClient(https_port(main_edge), SHOP, tls12) as client:
        assert client.sock.version() == "TLSv1.2"
        resp = client.request("GET", unique_path(), host=SHOP)
    assert resp.status == 200, resp.text
    assert main_edge.record(resp)["client_tls_version"] == "TLSv1.2"


def test_alpn_settles_on_http_1_1(main_edge: EdgeProcess, edge_certs: EdgeCerts) -> None:
    """A client offering h2 and http/1.1 gets http/1.1; one offering only h2 never gets h2."""
    port = https_port(main_edge)
    both = edge_certs.client_context(alpn=["h2", "http/1.1"])
    with HTTPSClient(port, SHOP, both) as client:
        assert client.sock.selected_alpn_protocol() == "http/1.1"
        assert client.request("GET", unique_path(), host=SHOP).status == 200

    h2_only = edge_certs.client_context(alpn=["h2"])
    try:
        with HTTPSClient(port, SHOP, h2_only) as client:
            assert client.sock.selected_alpn_protocol() != "h2"
    except ssl.SSLError as e:  # refusing the handshake is also not speaking h2
        assert "ALPN" in str(e) or "NO_APPLICATION_PROTOCOL" in str(e), e


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_a_second_connection_resumes_the_first_ones_session(
    main_edge: EdgeProcess, edge_certs: EdgeCerts, version: str
) -> None:
    """A client that offers the session of its previous connection resumes it, for the
    first certificate (blog's) and for one the handshake switches to (shop's)."""
    tls_version = getattr(ssl.TLSVersion, version)
    ctx = edge_certs.client_context(minimum=tls_version, maximum=tls_version)
    port = https_port(main_edge)
    for name in (BLOG, SHOP):
        with HTTPSClient(port, name, ctx) as first:
            assert first.request("GET", unique_path(), host=name).status == 200
            session = first.sock.session  # TLS 1.3: the ticket came with the response
            assert not first.sock.session_reused
        assert session is not None
        with HTTPSClient(port, name, ctx, session=session) as second:
            assert second.sock.session_reused, (name, version)
            assert second.fingerprint == presented(port, name, edge_certs.client_context())
            assert second.request("GET", unique_path(), host=name).status == 200


# --------------------------------------------------------------------------------------
# 13. Workers
# --------------------------------------------------------------------------------------


def test_two_workers_serve_https_and_http(
    edge_factory: EdgeFactory,
    pki: PKI,
    edge_certs: EdgeCerts,
    certs: CertSet,
    origins: Origins,
) -> None:
    """With workers: 2 and listen_tls, HTTPS requests on new connections all succeed with
    the right certificate and both workers answer some; plain HTTP works too."""
    config = edge_config(pki, [certs.shop, certs.blog], origins, https_redirect=False)
    config["workers"] = 2
    edge = edge_factory(config)
    port = https_port(edge)

    def workers() -> list[dict[str, Any]]:
        resp = edge.admin_request("GET", "/workers")
        assert resp.status == 200, resp.text
        return resp.json()["workers"]  # type: ignore[no-any-return]

    wait_until(
        lambda: len(workers()) == 2 and all(w["ready"] for w in workers()),
        20,
        "two workers ready",
    )
    ctx = edge_certs.client_context()

    def fetch(i: int) -> tuple[str, Response]:
        name = SHOP if i % 2 else BLOG
        with HTTPSClient(port, name, ctx) as client:
            assert client.fingerprint == (certs.shop if i % 2 else certs.blog).fingerprint
            return name, client.request("GET", f"/w/{i}", host=name)

    n = 40
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(fetch, range(n)))
    assert [(r.status, r.json()["vhost"]) for _, r in results] == [
        (200, name) for name, _ in results
    ]
    served: dict[int, int] = {}

    def published() -> bool:
        served.clear()
        served.update({w["pid"]: w["requests"] for w in workers() if w["pid"] is not None})
        return sum(served.values()) == n

    wait_until(published, 10, f"{n} requests published by the workers")
    assert len(served) == 2 and all(count > 0 for count in served.values()), served

    plain = [edge.request("GET", f"/plain/{i}", host=SHOP) for i in range(4)]
    assert [r.status for r in plain] == [200] * 4
    records = {r["path"]: r for r in edge.access_records(n + 4, timeout=10)}
    assert {records[f"/w/{i}"]["scheme"] for i in range(n)} == {"https"}
    assert {records[f"/plain/{i}"]["scheme"] for i in range(4)} == {"http"}
