"""Bad input to the admin API (issue 7), through the real twistd edge.

Wrong methods, bodies the API never asked for (huge, or not JSON), path traversal in
`/domains/<name>`, and secrets: the admin token and any Authorization value must never
reach a log. Each test says what the operator or attacker sees; none changes the config.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.edge import EdgeProcess
from tests.support.net import LOOPBACK, read_until_close
from tests.support.origin import TLSOrigin
from tests.support.pki import PKI
from tests.support.procfs import rss_bytes
from tests.test_reliability import upload_until_answered

EdgeFactory = Callable[..., EdgeProcess]
KiB = 1024
MiB = 1024 * KiB


def admin_config(pki: PKI, origin: TLSOrigin) -> dict[str, Any]:
    """Domains a.test and b.test on the conftest origin, origin SNI on."""
    return {
        "tls": {"ca_file": str(pki.ca_file)},
        "domains": {
            name: {
                "origin_sni": {"enabled": True},
                "origins": [{"address": origin.address, "port": origin.port}],
            }
            for name in ("a.test", "b.test")
        },
    }


@pytest.fixture
def edge(edge_factory: EdgeFactory, pki: PKI, origin: TLSOrigin) -> EdgeProcess:
    return edge_factory(admin_config(pki, origin))


def generation(edge: EdgeProcess) -> int:
    resp = edge.admin_request("GET", "/healthz", token=None)
    assert resp.status == 200, resp.text
    return int(resp.json()["generation"])


def admin_port(edge: EdgeProcess) -> int:
    assert edge.admin_port is not None
    return edge.admin_port


# -- methods -----------------------------------------------------------------------------

WRONG_METHODS = [
    ("POST", "/healthz", "GET"),
    ("DELETE", "/healthz", "GET"),
    ("GET", "/reload", "POST"),
    ("PUT", "/reload", "POST"),
    ("DELETE", "/reload", "POST"),
    ("HEAD", "/reload", "POST"),
    ("POST", "/config", "GET"),
    ("PUT", "/config", "GET"),
    ("PATCH", "/config", "GET"),
    ("OPTIONS", "/config", "GET"),
    ("POST", "/metrics", "GET"),
    ("PUT", "/domains/a.test", "GET"),
    ("DELETE", "/domains/a.test", "GET"),
]


def test_wrong_methods_get_405_with_allow_and_change_nothing(edge: EdgeProcess):
    """Every endpoint answers a method it does not serve with 405 and an Allow header."""
    seen = []
    for method, path, _ in WRONG_METHODS:
        resp = edge.admin_request(method, path)
        error = resp.json()["error"] if method != "HEAD" else "method_not_allowed"
        seen.append((method, path, resp.status, resp.header("Allow"), error))
    expected = [(m, p, 405, allow, "method_not_allowed") for m, p, allow in WRONG_METHODS]
    assert seen == expected
    assert generation(edge) == 1  # GET/PUT/DELETE/HEAD /reload reloaded nothing


# -- bodies nobody asked for -------------------------------------------------------------


def reload_head(edge: EdgeProcess, length: int) -> bytes:
    return (
        b"POST /reload HTTP/1.1\r\nHost: %b:%d\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (
            LOOPBACK.encode(),
            admin_port(edge),
            str(edge.admin_token).encode(),
            length,
        )
    )


def test_huge_admin_body_does_not_grow_the_edge_memory(edge: EdgeProcess):
    """A 10 MiB POST /reload body leaves the edge's RSS within 8 MiB and the edge serving."""
    assert edge.pid is not None
    pid = edge.pid
    assert edge.admin_request("GET", "/config").status == 200  # warm the admin code paths
    before = rss_bytes(pid)
    peak = [before]
    total, piece = 10 * MiB, 64 * KiB
    _, answer = upload_until_answered(
        admin_port(edge),
        reload_head(edge, total),
        total // piece,
        b"{" * piece,
        each=lambda: peak.append(rss_bytes(pid)),
    )
    peak.append(rss_bytes(pid))
    growth = max(peak) - before
    print(f"10 MiB admin body: edge RSS +{growth / MiB:.1f} MiB; answer {answer[:40]!r}")
    assert growth < 8 * MiB, f"the edge's RSS grew by {growth / MiB:.1f} MiB"
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert edge.admin_request("GET", "/healthz", token=None).status == 200
    assert edge.request("GET", "/", host="a.test").status == 200


@pytest.mark.parametrize(
    "body",
    [b'{"reload": tru', b"\xff\xfe not json at all \x00", b"[" * 10000],
    ids=["truncated-json", "binary", "deeply-nested"],
)
def test_malformed_json_body_on_reload_is_answered_sanely(edge: EdgeProcess, body: bytes):
    """POST /reload takes no body: a malformed one gets a JSON 200, 400 or 422 and no crash."""
    before = edge.admin_request("GET", "/config").json()
    resp = edge.admin_request("POST", "/reload", body=body)
    assert resp.status in (200, 400, 422), (resp.status, resp.text)
    answer = resp.json()
    if resp.status == 200:
        # The body is ignored: the file is re-read, and it has not changed.
        assert answer["generation"] == 2
        assert not any(answer["changed"].values()), answer  # nothing added, removed, changed
    else:
        assert generation(edge) == 1
    after = edge.admin_request("GET", "/config").json()
    assert {k: v for k, v in after.items() if k != "generation"} == {
        k: v for k, v in before.items() if k != "generation"
    }
    assert edge.request("GET", "/", host="a.test").status == 200


# -- path traversal ----------------------------------------------------------------------

TRAVERSALS = [
    "/domains/../config",
    "/domains/%2e%2e%2fconfig",
    "/domains/%2E%2E%2Fconfig",
    "/domains/a.test/../../config",
    "/domains/..%2fconfig",
    "/domains/%2e%2e/config",
    "/domains/a.test%2f..%2f..%2fconfig",
    "/domains/..%5cconfig",
    "/domains/..",
    "/domains/.",
    "/domains/",
    "/domains//config",
    "/domains/a.test/..",
    "/domains/a.test%00",
    "/domains/a.test/../../metrics",
    "/domains/../../../../etc/passwd",
]


def test_path_traversal_in_domain_names_is_404_never_another_resource(edge: EdgeProcess):
    """`/domains/<name>` with dot segments, encoded slashes or NULs is 400/404 and shows no data."""
    answers = {}
    for path in TRAVERSALS:
        resp = edge.admin_request("GET", path)
        answers[path] = resp.status
        assert resp.status in (400, 404), (path, resp.status, resp.text)
        assert "error" in resp.json(), (path, resp.text)
        assert "origins" not in resp.text and "edgenode_" not in resp.text, (path, resp.text)
        assert "root:" not in resp.text
    assert edge.admin_request("GET", "/domains/a.test").status == 200  # the real thing works


def test_path_traversal_to_reload_reloads_nothing(edge: EdgeProcess):
    """POST /domains/../reload is not POST /reload: it is refused and the generation stays 1."""
    for path in ("/domains/../reload", "/domains/%2e%2e%2freload", "/config/../reload"):
        resp = edge.admin_request("POST", path)
        assert resp.status in (404, 405), (path, resp.status, resp.text)
    assert generation(edge) == 1


# -- secrets never reach a log -----------------------------------------------------------


def _raw_admin(edge: EdgeProcess, data: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, admin_port(edge)), timeout=5) as sock:
        sock.sendall(data)
        return read_until_close(sock, time.monotonic() + 5)


def test_tokens_and_authorization_values_never_reach_any_log(edge: EdgeProcess):
    """After admin and proxied requests carrying secrets, no log file contains any of them."""
    token = str(edge.admin_token)
    wrong = "wrong-token-4f1d9c0e7b"
    basic = base64.b64encode(b"operator:basic-pass-83b1").decode()
    client_secret = "client-bearer-secret-5a7e"
    proxy_secret = "proxy-auth-secret-91c2"
    secrets = [token, wrong, basic, client_secret, proxy_secret, "basic-pass-83b1"]

    assert edge.admin_request("GET", "/config").status == 200
    assert edge.admin_request("GET", "/metrics").status == 200
    assert edge.admin_request("GET", "/domains/a.test").status == 200
    assert edge.admin_request("POST", "/reload").status == 200
    assert edge.admin_request("GET", "/config", token=wrong).status == 401
    assert edge.admin_request("POST", "/reload", token=wrong).status == 401
    assert edge.admin_request("DELETE", "/config").status == 405
    assert edge.admin_request("GET", "/nowhere").status == 404
    port = admin_port(edge)
    basic_answer = _raw_admin(
        edge,
        f"GET /config HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        f"Authorization: Basic {basic}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert basic_answer.startswith(b"HTTP/1.1 401"), basic_answer[:100]
    broken = _raw_admin(
        edge,
        f"GET /config HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nthis is not a header\r\n\r\n".encode(),
    )
    assert broken.startswith(b"HTTP/1.1 400"), broken[:100]
    # The data port: Authorization goes to the origin (it is the origin's business) but
    # never into the access log, not even the admin token sent to the wrong port.
    for value in (f"Bearer {client_secret}", f"Bearer {token}", f"Basic {basic}"):
        resp = edge.request(
            "GET",
            "/private",
            host="a.test",
            headers=[("Authorization", value), ("Proxy-Authorization", f"Basic {proxy_secret}")],
        )
        assert resp.status == 200, resp.text
        assert ["Authorization", value] in resp.json()["headers"]
    assert len(edge.access_records(3)) == 3
    assert edge.stop() == 0

    log = edge.log_text()
    assert "admin GET /config -> 200" in log and "-> 401" in log  # the requests were logged
    files = {
        "twistd log": edge.log_path,
        "access log": edge.access_log_path,
        "stdout": edge.stdout_path,
        "stderr": edge.stderr_path,
    }
    leaks = []
    for what, path in files.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        leaks += [f"{what} contains {secret!r}" for secret in secrets if secret in text]
    assert leaks == []
    for record in edge.access_records():
        assert "authorization" not in json.dumps(record).lower(), record


def test_a_token_in_the_query_string_never_reaches_the_log(edge: EdgeProcess):
    """Tokens sent as query parameters are not written anywhere, whatever the endpoint.

    The admin API reads no query; a client (or a script) that puts the token there
    anyway must not find it in the twistd log, where the request line used to go whole.
    HEAD counts too: twisted.web logs the request (with its URI) when HEAD gets a body.
    """
    token = str(edge.admin_token)
    secrets = ["query-secret-0b9e", "access-secret-7c21", "head-secret-d4a8", "nowhere-secret-55f3"]
    assert edge.admin_request("GET", f"/config?token={secrets[0]}").status == 200
    assert edge.admin_request("GET", f"/healthz?access_token={secrets[1]}").status == 200
    assert edge.admin_request("HEAD", f"/config?token={secrets[2]}").status == 200
    assert edge.admin_request("GET", f"/nowhere?x={secrets[3]}", token=None).status == 401
    assert edge.admin_request("GET", f"/config?token={token}", token=None).status == 401
    assert edge.stop() == 0

    log = edge.log_text()
    leaks = [secret for secret in [*secrets, token] if secret in log]
    assert leaks == []
    assert "admin GET /config -> 200" in log and "admin HEAD /config -> 200" in log
    assert "?" not in "".join(line for line in log.splitlines() if " admin " in line)


# -- slow, idle and malformed heads ------------------------------------------------------

HEADER_TIMEOUT = 1.0  # limits.client_header_timeout for these tests
IDLE_TIMEOUT = 2.0  # limits.client_idle_timeout
CLOSED_WITHIN = 15.0  # a generous bound: the edge must close well before this


@pytest.fixture
def quick_edge(edge_factory: EdgeFactory, pki: PKI, origin: TLSOrigin) -> EdgeProcess:
    config = admin_config(pki, origin)
    config["limits"] = {
        "client_header_timeout": HEADER_TIMEOUT,
        "client_idle_timeout": IDLE_TIMEOUT,
    }
    return edge_factory(config)


def _until_closed(
    port: int, data: bytes, *, trickle: bytes = b"", every: float = 0.25
) -> tuple[bytes, bool, float]:
    """Send `data`, then one byte of `trickle` every `every` seconds, and read.

    Returns what arrived, whether the edge closed the connection within CLOSED_WITHIN
    seconds, and how long that took.
    """
    start = time.monotonic()
    chunks = []
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(every)
        pending = trickle
        while time.monotonic() - start < CLOSED_WITHIN:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if pending:
                    try:
                        sock.sendall(pending[:1])
                    except OSError:  # the edge closed while we were still sending
                        return b"".join(chunks), True, time.monotonic() - start
                    pending = pending[1:]
                continue
            except ConnectionResetError:
                return b"".join(chunks), True, time.monotonic() - start
            if not chunk:
                return b"".join(chunks), True, time.monotonic() - start
            chunks.append(chunk)
    return b"".join(chunks), False, time.monotonic() - start


@pytest.mark.parametrize(
    ("data", "trickle"),
    [
        (b"", b""),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b""),
        (b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200),
    ],
    ids=["silent", "partial-head", "trickled-head"],
)
def test_a_head_that_does_not_arrive_in_time_gets_408_and_close(
    quick_edge: EdgeProcess, data: bytes, trickle: bytes
):
    """A head not complete within client_header_timeout of the connection opening: 408, closed.

    Trickling a byte every quarter second does not help: the deadline is not reset by
    data, unlike an idle timer.
    """
    answer, closed, took = _until_closed(admin_port(quick_edge), data, trickle=trickle)
    print(f"closed={closed} after {took:.2f}s; answer {answer[:60]!r}")
    assert closed, f"the edge still held the connection after {took:.1f}s"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert took >= HEADER_TIMEOUT * 0.9
    assert quick_edge.admin_request("GET", "/healthz", token=None).status == 200


def test_a_slow_head_on_a_kept_alive_connection_gets_408(quick_edge: EdgeProcess):
    """After one answered request, the next head has its own deadline from its first byte."""
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer, closed, took = _until_closed(
        admin_port(quick_edge),
        first + b"G",
        trickle=b"ET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200,
    )
    assert closed, f"the edge still held the connection after {took:.1f}s"
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 408" in answer, answer


def test_an_idle_kept_alive_connection_is_closed_quietly(quick_edge: EdgeProcess):
    """After a response, client_idle_timeout of silence ends the connection with no reply."""
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer, closed, took = _until_closed(admin_port(quick_edge), first)
    assert closed, f"the edge still held the connection after {took:.1f}s"
    assert took >= IDLE_TIMEOUT * 0.9
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1, answer


@pytest.mark.parametrize(
    "data",
    [
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\n",
    ],
    ids=["all-bare-lf", "one-header", "blank-line"],
)
def test_bare_lf_line_endings_get_400_and_close(edge: EdgeProcess, data: bytes):
    """A head with LF line endings (no CR) is refused at once, as the data port does."""
    answer, closed, took = _until_closed(admin_port(edge), data)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert closed, f"the edge still held the connection after {took:.1f}s"
    assert took < 5, f"the 400 took {took:.1f}s: it waited for a timeout"
