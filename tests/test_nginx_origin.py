"""The real edge against a real nginx origin: several server_name blocks on one IP:port."""

from __future__ import annotations

import threading
from typing import Any

from tests.support.nginx import NginxOrigin
from tests.support.origin import pattern
from tests.support.pki import PKI


def _config(pki: PKI, nginx: NginxOrigin, **domains: dict[str, Any]) -> dict[str, Any]:
    origin = {"address": "127.0.0.1", "port": nginx.port}
    return {
        "tls": {"ca_file": str(pki.ca_file)},
        "domains": {
            name.replace("_", "."): {"origins": [dict(origin)], **settings}
            for name, settings in domains.items()
        },
    }


def test_each_domain_gets_its_own_server_block(edge_factory, pki, nginx_origin) -> None:
    """Two domains on one nginx IP:port each reach their own server block by SNI."""
    edge = edge_factory(
        _config(
            pki,
            nginx_origin,
            a_test={"origin_sni": {"enabled": True}},
            b_test={"origin_sni": {"enabled": True, "value": "b.test"}},
        ),
        wait_admin=False,
    )
    for host in ("a.test", "b.test"):
        r = edge.request("GET", "/", host=host)
        assert r.status == 200
        assert r.json()["block"] == host
        assert r.json()["sni"] == host
    records = edge.access_records(2)
    assert [(rec["host"], rec["sni"], rec["verify_name"]) for rec in records] == [
        ("a.test", "a.test", "a.test"),
        ("b.test", "b.test", "b.test"),
    ]
    assert records[0]["origin_cert"]["dns_names"] == ["a.test"]


def test_pooled_connections_are_reused_per_sni(edge_factory, pki, nginx_origin) -> None:
    """Sequential requests reuse one origin connection per SNI; the SNIs never share one."""
    edge = edge_factory(
        _config(
            pki,
            nginx_origin,
            a_test={"origin_sni": {"enabled": True}},
            b_test={"origin_sni": {"enabled": True}},
        ),
        wait_admin=False,
    )
    seen: dict[str, set[str]] = {"a.test": set(), "b.test": set()}
    requests_on: dict[str, list[int]] = {"a.test": [], "b.test": []}
    for host in ["a.test", "b.test"] * 5:
        body = edge.request("GET", "/", host=host).json()
        assert body["block"] == host
        seen[host].add(body["conn"])
        requests_on[host].append(int(body["req"]))
    assert len(seen["a.test"]) == 1 and len(seen["b.test"]) == 1
    assert seen["a.test"].isdisjoint(seen["b.test"])
    assert requests_on["a.test"] == [1, 2, 3, 4, 5]
    reused = [rec["connection_reused"] for rec in edge.access_records(10)]
    assert reused == [False, False] + [True] * 8


def test_concurrent_interleaved_requests_never_cross_sni(edge_factory, pki, nginx_origin) -> None:
    """Hundreds of interleaved requests on several client connections always hit their own block."""
    edge = edge_factory(
        _config(
            pki,
            nginx_origin,
            a_test={"origin_sni": {"enabled": True}},
            b_test={"origin_sni": {"enabled": True}},
        ),
        wait_admin=False,
    )
    wrong: list[tuple[str, Any]] = []
    errors: list[BaseException] = []

    def client(offset: int) -> None:
        try:
            conn = edge.connection()
            for i in range(50):
                host = ("a.test", "b.test")[(i + offset) % 2]
                conn.request("GET", f"/?i={i}", headers={"Host": host})
                resp = conn.getresponse()
                body = resp.read()
                got = (resp.status, body[:200])
                if resp.status != 200 or f'"block":"{host}"'.encode() not in body:
                    wrong.append((host, got))
                if f'"sni":"{host}"'.encode() not in body:
                    wrong.append((host, got))
            conn.close()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert wrong == []
    assert len(edge.access_records(300)) == 300


def test_sni_off_is_rejected_by_nginx(edge_factory, pki, nginx_origin) -> None:
    """With origin SNI off, nginx (ssl_reject_handshake) refuses: 502 origin_tls_failed."""
    edge = edge_factory(
        _config(pki, nginx_origin, a_test={}),  # origin_sni absent: no SNI extension sent
        wait_admin=False,
    )
    r = edge.request("GET", "/", host="a.test")
    assert r.status == 502
    assert b"origin_tls_failed" in r.body
    (rec,) = edge.access_records(1)
    assert rec["error"] == "origin_tls_failed"
    assert rec["sni"] is None
    assert "unrecognized name" in rec["error_detail"]


def test_per_origin_sni_differs_from_host(edge_factory, pki, nginx_origin) -> None:
    """origins[].sni picks the certificate while Host picks nginx's server block."""
    config = _config(pki, nginx_origin, www_shop_test={"origin_host": "b.test"})
    config["domains"]["www.shop.test"]["origins"][0]["sni"] = "a.test"
    edge = edge_factory(config, wait_admin=False)
    body = edge.request("GET", "/", host="www.shop.test").json()
    assert body["sni"] == "a.test"
    assert body["host"] == "b.test"
    assert body["block"] == "b.test"
    (rec,) = edge.access_records(1)
    assert (rec["sni"], rec["verify_name"]) == ("a.test", "a.test")


def test_sni_without_server_block_is_refused(edge_factory, pki, nginx_origin) -> None:
    """An SNI value nginx has no server block for is refused at the handshake: 502."""
    edge = edge_factory(
        _config(pki, nginx_origin, c_test={"origin_sni": {"enabled": True}}), wait_admin=False
    )
    r = edge.request("GET", "/", host="c.test")
    assert r.status == 502
    (rec,) = edge.access_records(1)
    assert rec["error"] == "origin_tls_failed"
    assert rec["sni"] == "c.test"


def test_file_body_streams_intact(edge_factory, pki, nginx_origin) -> None:
    """A 1 MiB static file from nginx arrives byte for byte, with its Content-Length."""
    edge = edge_factory(
        _config(pki, nginx_origin, a_test={"origin_sni": {"enabled": True}}), wait_admin=False
    )
    r = edge.request("GET", "/files/1m", host="a.test")
    assert r.status == 200
    assert r.header("Content-Length") == str(1024 * 1024)
    assert r.body == pattern(1024 * 1024)
    assert r.header("Via") == "1.1 edgenode"
    assert r.header("X-Edge-Request-Id") == edge.access_records(1)[0]["request_id"]
