"""Integration: client certificates to origins (mTLS, SPEC §10) through the real edge.

The edge runs as `twistd -n edgenode` against origins that ask for a client
certificate: a real nginx (`ssl_verify_client on` with the test CA, answering with
`$ssl_client_verify` and `$ssl_client_s_dn`) and in-process Twisted TLS origins that
require one and report the subject CN each connection presented. The tests check what
the origin saw and what a user and an operator see: status, access log, probe verdict,
`edgenode check`, the reload diff.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgenode.tools.cli import main
from tests.support.edge import EdgeProcess, send
from tests.support.mtls_origin import (
    NO_CERT,
    MTLSOrigin,
    MTLSOrigins,
    at,
    client_certificate,
    domain,
    edge_config,
)
from tests.support.nginx import NginxOrigin, running_nginx
from tests.support.pki import PKI
from tests.support.waiting import wait_until

EdgeFactory = Callable[..., EdgeProcess]
ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "edgenode.tools.cli"]

# An nginx server block that demands a client certificate from the test CA; nginx answers
# a request without one (or with one it cannot verify) with its own 400 page.
_MTLS_BLOCK = """
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        server_name mtls.test;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        location / {{
            default_type application/json;
            return 200 '{{"block":"mtls.test","verify":"$ssl_client_verify",\
"subject":"$ssl_client_s_dn","sni":"$ssl_server_name"}}';
        }}
    }}
"""


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_nginx(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxOrigin]:
    """nginx with a.test (no client certificate asked) and mtls.test (`ssl_verify_client on`)."""
    cert, key = pki.write(pki.leaf("mtls.test"), "nginx-mtls.test")
    block = _MTLS_BLOCK.format(cert=cert, key=key, ca=pki.ca_file)
    directory = tmp_path_factory.mktemp("nginx-mtls")
    with running_nginx(pki, directory, names=("a.test",), extra_server_blocks=block) as nginx:
        yield nginx


@pytest.fixture
def mtls_origins(reactor_thread: Any) -> Iterator[MTLSOrigins]:
    """In-process origins that require client certificates; all stopped after the test."""
    made = MTLSOrigins()
    yield made
    made.stop_all()


def mtls_origin(
    mtls_origins: MTLSOrigins, pki: PKI, name: str = "mtls.test", max_tls: str | None = None
) -> MTLSOrigin:
    """An in-process origin for `name` that requires a client certificate from the test CA."""
    return mtls_origins.origin({name: pki.leaf(name)}, None, client_ca=pki.ca_file, max_tls=max_tls)


def rewrite(edge: EdgeProcess, mutate: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the edge's config file through `mutate(config)`."""
    config = copy.deepcopy(edge.config)
    mutate(config)
    edge.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def probe_json(config: dict[str, Any], tmp_path: Path, name: str) -> tuple[int, dict[str, Any]]:
    """`edgenode probe <name> --config F --json` in its own process: exit code and document."""
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*CLI, "probe", name, "--config", str(path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


# --- nginx with ssl_verify_client on -----------------------------------------------------------


def test_nginx_verifies_the_client_certificate_the_edge_presents(
    edge_factory: EdgeFactory, pki: PKI, mtls_nginx: NginxOrigin
) -> None:
    """With `client_certificate`, nginx's `ssl_verify_client on` block answers 200 and saw it."""
    cert = client_certificate(pki, "edge-one")
    edge = edge_factory(
        edge_config(
            pki,
            {"mtls.test": domain(at(mtls_nginx.port), sni="mtls.test", client_certificate=cert)},
        ),
        wait_admin=False,
    )
    resp = edge.request("GET", "/", host="mtls.test")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert body["block"] == "mtls.test"
    assert body["verify"] == "SUCCESS"
    assert "CN=edge-one" in body["subject"]
    record = edge.record(resp)
    assert (record["status"], record["origin_status"], record["error"]) == (200, 200, None)
    assert record["sni"] == "mtls.test"


def test_nginx_without_a_client_certificate_answers_400_and_the_edge_relays_it(
    edge_factory: EdgeFactory, pki: PKI, mtls_nginx: NginxOrigin
) -> None:
    """No client certificate: nginx completes the handshake but answers its own 400 ("No
    required SSL certificate was sent"), which the edge relays as the origin's answer."""
    edge = edge_factory(
        edge_config(pki, {"mtls.test": domain(at(mtls_nginx.port), sni="mtls.test")}),
        wait_admin=False,
    )
    resp = edge.request("GET", "/", host="mtls.test")
    assert resp.status == 400
    assert "No required SSL certificate was sent" in resp.text
    record = edge.record(resp)
    assert (record["status"], record["origin_status"], record["error"]) == (400, 400, None)
    assert record["attempts"] == 1


def test_nginx_rejects_a_client_certificate_from_another_ca_with_400(
    edge_factory: EdgeFactory, pki: PKI, mtls_nginx: NginxOrigin
) -> None:
    """A client certificate signed by a CA nginx does not trust: nginx's 400, relayed as is."""
    cert = client_certificate(pki, "edge-stranger", trusted=False)
    edge = edge_factory(
        edge_config(
            pki,
            {"mtls.test": domain(at(mtls_nginx.port), sni="mtls.test", client_certificate=cert)},
        ),
        wait_admin=False,
    )
    resp = edge.request("GET", "/", host="mtls.test")
    assert resp.status == 400
    assert "The SSL certificate error" in resp.text
    record = edge.record(resp)
    assert (record["origin_status"], record["error"]) == (400, None)


# --- in-process origins that require a client certificate -------------------------------------


@pytest.mark.parametrize("max_tls", ["1.2", None], ids=["tls1.2", "tls1.3"])
def test_origin_requiring_a_certificate_fails_the_handshake_without_one(
    edge_factory: EdgeFactory, pki: PKI, mtls_origins: MTLSOrigins, max_tls: str | None
) -> None:
    """An origin with VERIFY_FAIL_IF_NO_PEER_CERT: without a client certificate the edge
    answers 502 origin_tls_failed (in TLS 1.3 too, where the origin's alert comes after the
    edge's side of the handshake); with one the same origin answers 200 and saw it."""
    origin = mtls_origin(mtls_origins, pki, max_tls=max_tls)
    cert = client_certificate(pki, "edge-one")
    edge = edge_factory(
        edge_config(
            pki,
            {
                "bare.test": domain(at(origin.port), sni="mtls.test", origin_host="mtls.test"),
                "mtls.test": domain(at(origin.port), sni="mtls.test", client_certificate=cert),
            },
        ),
        wait_admin=False,
    )
    bare = edge.request("GET", "/", host="bare.test")
    assert bare.status == 502, bare.text
    assert "origin_tls_failed" in bare.text
    record = edge.record(bare)
    assert record["error"] == "origin_tls_failed", record
    assert record["origin_status"] is None
    assert origin.requests == []

    good = edge.request("GET", "/", host="mtls.test")
    assert good.status == 200, good.text
    assert good.json()["client_cert"] == "edge-one"
    assert [r["client_cert"] for r in origin.requests] == ["edge-one"]


def test_an_origins_own_client_certificate_wins_over_the_domains(
    edge_factory: EdgeFactory, pki: PKI, mtls_origins: MTLSOrigins
) -> None:
    """Two origins, the second with its own `client_certificate`: each presents its own."""
    first = mtls_origin(mtls_origins, pki)
    second = mtls_origin(mtls_origins, pki)
    domain_cert = client_certificate(pki, "edge-domain")
    origin_cert = client_certificate(pki, "edge-origin")
    edge = edge_factory(
        edge_config(
            pki,
            {
                "mtls.test": domain(
                    at(first.port),
                    at(second.port, client_certificate=origin_cert),
                    sni="mtls.test",
                    client_certificate=domain_cert,
                )
            },
        )
    )
    responses = [edge.request("GET", "/", host="mtls.test") for _ in range(4)]
    assert [r.status for r in responses] == [200] * 4, [r.text for r in responses]
    assert {r["client_cert"] for r in first.requests} == {"edge-domain"}
    assert {r["client_cert"] for r in second.requests} == {"edge-origin"}
    assert len(first.requests) == len(second.requests) == 2
    config = edge.admin_request("GET", "/domains/mtls.test")
    assert config.status == 200, config.text
    origins = config.json()["origins"]
    assert [o["client_certificate"]["cert_file"] for o in origins] == [
        domain_cert["cert_file"],
        origin_cert["cert_file"],
    ]


def test_different_client_certificates_never_share_an_origin_connection(
    edge_factory: EdgeFactory, pki: PKI, mtls_origins: MTLSOrigins
) -> None:
    """Two domains on one origin IP:port with the same SNI but different client certificates
    get connections of their own: each keeps reusing its own, and never the other's."""
    origin = mtls_origin(mtls_origins, pki)
    cert_a = client_certificate(pki, "edge-a")
    cert_b = client_certificate(pki, "edge-b")
    edge = edge_factory(
        edge_config(
            pki,
            {
                "a.test": domain(
                    at(origin.port),
                    sni="mtls.test",
                    origin_host="mtls.test",
                    client_certificate=cert_a,
                ),
                "b.test": domain(
                    at(origin.port),
                    sni="mtls.test",
                    origin_host="mtls.test",
                    client_certificate=cert_b,
                ),
            },
        ),
        wait_admin=False,
    )
    conn = edge.connection()
    try:
        for host in ["a.test", "b.test"] * 4:
            resp = send(conn, "GET", f"/{host}", host=host)
            assert resp.status == 200, resp.text
    finally:
        conn.close()
    by_cert: dict[str, set[int]] = {}
    for request in origin.requests:
        expected = "edge-a" if request["path"] == "/a.test" else "edge-b"
        assert request["client_cert"] == expected, request
        by_cert.setdefault(request["client_cert"], set()).add(request["conn_id"])
    assert len(by_cert["edge-a"]) == 1 and len(by_cert["edge-b"]) == 1, by_cert
    assert by_cert["edge-a"].isdisjoint(by_cert["edge-b"])
    assert origin.connections_opened == 2
    assert sorted(origin.client_certs.values()) == ["edge-a", "edge-b"]
    records = edge.access_records(8)
    assert [r["connection_reused"] for r in records] == [False, False] + [True] * 6
    # Nor a TLS session: b.test's first handshake did not resume a.test's.
    assert [r["tls_resumed"] for r in records[:2]] == [False, False]


# --- edgenode probe ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_tls", ["1.2", None], ids=["tls1.2", "tls1.3"])
def test_probe_presents_the_client_certificate(
    tmp_path: Path, pki: PKI, mtls_origins: MTLSOrigins, max_tls: str | None
) -> None:
    """`edgenode probe` hands the domain's client certificate to an origin that requires one
    (verdict ok, the origin saw it), and without one the probe reports origin_tls_failed."""
    origin = mtls_origin(mtls_origins, pki, max_tls=max_tls)
    cert = client_certificate(pki, "edge-probe")
    with_cert = edge_config(
        pki, {"mtls.test": domain(at(origin.port), sni="mtls.test", client_certificate=cert)}
    )
    code, doc = probe_json(with_cert, tmp_path, "mtls.test")
    result = doc["origins"][0]
    assert code == 0, doc
    assert (result["verdict"], result["error"]) == ("ok", None)
    assert result["client_certificate"]["cert_file"] == cert["cert_file"]
    wait_until(
        lambda: "edge-probe" in origin.client_certs.values(),
        5,
        "the origin to see the certificate",
    )

    without = edge_config(pki, {"mtls.test": domain(at(origin.port), sni="mtls.test")})
    code, doc = probe_json(without, tmp_path, "mtls.test")
    result = doc["origins"][0]
    assert result["client_certificate"] is None
    assert (result["verdict"], result["error"]) == ("tls_failed", "origin_tls_failed"), result
    assert code == 1, doc
    assert NO_CERT not in origin.client_certs.values()


# --- configuration -----------------------------------------------------------------------------


def test_check_rejects_client_certificates_that_cannot_work(
    tmp_path: Path, pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edgenode check`: a key that does not match its certificate and a missing file are
    errors naming `domains.<d>.client_certificate.key_file` and the origin's own path."""
    one = client_certificate(pki, "edge-one")
    two = client_certificate(pki, "edge-two")
    mismatched = {"cert_file": one["cert_file"], "key_file": two["key_file"]}
    missing = {"cert_file": str(tmp_path / "nope.pem"), "key_file": one["key_file"]}
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            edge_config(
                pki,
                {
                    "mtls.test": domain(
                        at(443, client_certificate=missing),
                        sni="mtls.test",
                        client_certificate=mismatched,
                    )
                },
            )
        )
    )
    assert main(["check", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"edgenode: {config} has 2 problems:", err
    assert any(
        line.startswith("  domains.mtls.test.client_certificate.key_file: ") for line in lines
    ), err
    assert any(
        line.startswith("  domains.mtls.test.origins[0].client_certificate.cert_file: ")
        and "nope.pem" in line
        for line in lines
    ), err


def test_reload_to_another_client_certificate_shows_in_the_diff_and_on_the_wire(
    edge_factory: EdgeFactory, pki: PKI, mtls_origins: MTLSOrigins
) -> None:
    """A reload that swaps the client certificate names it (by fingerprint) in the reload
    answer and GET /config, and the next request presents the new one on a new connection."""
    origin = mtls_origin(mtls_origins, pki)
    old = client_certificate(pki, "edge-old")
    new = client_certificate(pki, "edge-new")
    edge = edge_factory(
        edge_config(
            pki, {"mtls.test": domain(at(origin.port), sni="mtls.test", client_certificate=old)}
        )
    )
    assert edge.request("GET", "/", host="mtls.test").json()["client_cert"] == "edge-old"
    before = edge.admin_request("GET", "/config").json()
    old_fp = before["domains"]["mtls.test"]["client_certificate"]["fingerprint_sha256"]

    def swap(config: dict[str, Any]) -> None:
        config["domains"]["mtls.test"]["client_certificate"] = new

    rewrite(edge, swap)
    answer = edge.admin_request("POST", "/reload")
    assert answer.status == 200, answer.text
    lines = answer.json()["changed"]["changed"]["mtls.test"]
    after = edge.admin_request("GET", "/config").json()
    new_fp = after["domains"]["mtls.test"]["client_certificate"]["fingerprint_sha256"]
    assert new_fp != old_fp
    assert any("client_certificate" in line and new_fp in line for line in lines), lines
    assert any("client_certificate" in line and old_fp in line for line in lines), lines

    resp = edge.request("GET", "/", host="mtls.test")
    assert resp.status == 200, resp.text
    assert resp.json()["client_cert"] == "edge-new"
    assert resp.json()["req_on_conn"] == 1
    assert edge.record(resp)["connection_reused"] is False
