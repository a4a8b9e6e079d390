"""TLS session resumption to origins: cached per route, never offered on another route."""

from __future__ import annotations

from typing import Any

from tests.support.origin import pattern
from tests.support.pki import PKI


def _config(pki: PKI, port: int) -> dict[str, Any]:
    def domain() -> dict[str, Any]:
        return {
            "origin_sni": {"enabled": True},
            "origins": [{"address": "127.0.0.1", "port": port}],
        }

    return {
        "tls": {"ca_file": str(pki.ca_file)},
        "domains": {"a.test": domain(), "b.test": domain()},
    }


def test_next_connection_of_a_route_resumes_its_session(edge_factory, pki, servers) -> None:
    """With an origin that closes after each response, a route's next handshake is resumed."""
    origin = servers.tls_origin(
        {"a.test": pki.leaf("a.test"), "b.test": pki.leaf("b.test")},
        pki.leaf("default.test"),
        close_after_response=True,
    )
    edge = edge_factory(_config(pki, origin.port))
    for _ in range(3):
        assert edge.request("GET", "/", host="a.test").json()["vhost"] == "a.test"
    records = edge.access_records(3)
    assert [r["connection_reused"] for r in records] == [False, False, False]
    assert [r["tls_resumed"] for r in records] == [False, True, True]
    assert len(origin.handshakes) == 3


def test_a_session_learned_for_one_sni_is_never_offered_for_another(
    edge_factory, pki, servers
) -> None:
    """After SNI a.test learned a session, b.test still gets a full, verified handshake."""
    origin = servers.tls_origin(
        {"a.test": pki.leaf("a.test"), "b.test": pki.leaf("b.test")},
        pki.leaf("default.test"),
        close_after_response=True,
    )
    edge = edge_factory(_config(pki, origin.port))
    hosts = ["a.test", "a.test", "b.test", "b.test", "a.test"]
    for host in hosts:
        body = edge.request("GET", "/", host=host).json()
        assert (body["vhost"], body["sni"]) == (host, host)
    records = edge.access_records(len(hosts))
    assert [(r["host"], r["tls_resumed"]) for r in records] == [
        ("a.test", False),
        ("a.test", True),
        ("b.test", False),  # a.test's session was not offered: b.test was verified in full
        ("b.test", True),
        ("a.test", True),
    ]
    first_b = records[2]
    assert first_b["origin_cert"]["dns_names"] == ["b.test"]
    assert first_b["upstream_handshake_ms"] is not None


def test_large_response_leaves_the_pooled_connection_usable(edge_factory, pki, origin) -> None:
    """A body big enough to pause the origin read (client buffer full) does not wedge the pool."""
    edge = edge_factory(_config(pki, origin.port))
    conn = edge.connection()
    for size in (262144, 10, 262144, 10):
        conn.request("GET", f"/bytes/{size}", headers={"Host": "a.test"})
        resp = conn.getresponse()
        assert resp.read() == pattern(size)
    records = edge.access_records(4)
    assert [r["connection_reused"] for r in records] == [False, True, True, True]
