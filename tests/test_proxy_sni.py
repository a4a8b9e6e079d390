"""Integration: origin SNI, certificates, verification and routing through the real edge.

Each test runs `twistd -n edgenode` against in-process TLS origins that present a
certificate per SNI name (SPEC §1, §3 effective values, §4 errors) and checks what
a user sees: the status, which vhost answered, and the access-log fields.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tests.support.edge import EdgeProcess, send
from tests.support.origin import Servers, TLSOrigin
from tests.support.pki import PKI

EdgeFactory = Callable[..., EdgeProcess]


def edge_config(pki: PKI, domains: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An edge config trusting the test CA, with small timeouts so failures are quick."""
    config: dict[str, Any] = {
        "tls": {"ca_file": str(pki.ca_file)},
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 5, "body_idle": 5},
        "domains": domains,
    }
    config.update(extra)
    return config


def to(origin: TLSOrigin, **settings: Any) -> dict[str, Any]:
    """One `origins[]` entry for an in-process origin."""
    return {"address": origin.address, "port": origin.port, **settings}


def sni_on(*origins: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A domain with origin SNI enabled (value defaults to origin_host)."""
    return {"origin_sni": {"enabled": True}, "origins": list(origins), **settings}


def start(edge_factory: EdgeFactory, config: dict[str, Any]) -> EdgeProcess:
    return edge_factory(config, wait_admin=False)


def test_two_domains_on_one_origin_each_get_their_own_certificate(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """a.test and b.test on one IP:port each reach their own vhost with their own certificate."""
    edge = start(
        edge_factory, edge_config(pki, {"a.test": sni_on(to(origin)), "b.test": sni_on(to(origin))})
    )
    for name in ("a.test", "b.test"):
        resp = edge.request("GET", f"/{name}", host=name)
        assert resp.status == 200, resp.text
        body = resp.json()
        assert (body["vhost"], body["sni"], body["host"]) == (name, name, name)
        record = edge.record(resp)
        assert record["status"] == 200
        assert record["error"] is None
        assert (record["domain"], record["sni"], record["verify_name"]) == (name, name, name)
        assert record["origin"] == f"127.0.0.1:{origin.port}"
        assert record["origin_cert"]["dns_names"] == [name]
        assert record["attempts"] == 1
    assert sorted(h["vhost"] for h in origin.handshakes) == ["a.test", "b.test"]


def test_interleaved_requests_on_concurrent_connections_never_cross_sni(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """300 requests alternating a.test/b.test on 6 keep-alive connections all reach their vhost."""
    edge = start(
        edge_factory, edge_config(pki, {"a.test": sni_on(to(origin)), "b.test": sni_on(to(origin))})
    )
    threads_n, per_thread = 6, 50
    wrong: list[str] = []
    errors: list[BaseException] = []

    def client(t: int) -> None:
        conn = edge.connection()
        try:
            for i in range(per_thread):
                host = "a.test" if (i + t) % 2 == 0 else "b.test"
                path = f"/t{t}/r{i}"
                resp = send(conn, "GET", path, host=host)
                body = resp.json()
                if resp.status != 200 or (body["vhost"], body["sni"], body["path"]) != (
                    host,
                    host,
                    path,
                ):
                    wrong.append(f"{host}{path} -> {resp.status} {body}")
        except BaseException as exc:  # reported in the test thread
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not wrong, wrong[:5]
    requests = origin.requests
    assert len(requests) == threads_n * per_thread
    assert [r for r in requests if r["sni"] != r["host"] or r["vhost"] != r["host"]] == []
    records = edge.access_records(threads_n * per_thread)
    assert [r for r in records if r["sni"] != r["host"] or r["status"] != 200] == []


def test_each_origin_of_a_domain_receives_its_own_sni(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """origins[].sni wins over origin_sni for its origin; the other origin gets the domain's SNI."""
    first = servers.tls_origin({"multi.test": pki.leaf("multi.test")}, None)
    second = servers.tls_origin({"other.test": pki.leaf("other.test")}, None)
    edge = start(
        edge_factory,
        edge_config(pki, {"multi.test": sni_on(to(first), to(second, sni="other.test"))}),
    )
    responses = [edge.request("GET", "/", host="multi.test") for _ in range(4)]
    assert [r.status for r in responses] == [200] * 4, [r.text for r in responses]
    assert sorted(r.json()["vhost"] for r in responses) == ["multi.test"] * 2 + ["other.test"] * 2
    assert {h["sni"] for h in first.handshakes} == {"multi.test"}
    assert {h["sni"] for h in second.handshakes} == {"other.test"}
    assert first.rejected_handshakes == [] and second.rejected_handshakes == []
    for resp in responses:
        record = edge.record(resp)
        vhost = resp.json()["vhost"]
        port = first.port if vhost == "multi.test" else second.port
        assert (record["origin"], record["sni"], record["verify_name"]) == (
            f"127.0.0.1:{port}",
            vhost,
            vhost,
        )
        # the Host header stays the domain's origin_host whichever SNI was sent
        assert resp.json()["host"] == "multi.test"


def test_origin_sni_enabled_without_value_sends_origin_host(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """origin_sni.enabled with no value sends origin_host as SNI, not the domain name."""
    edge = start(
        edge_factory, edge_config(pki, {"site.test": sni_on(to(origin), origin_host="a.test")})
    )
    resp = edge.request("GET", "/", host="site.test")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert (body["vhost"], body["sni"], body["host"]) == ("a.test", "a.test", "a.test")
    record = edge.record(resp)
    assert (record["domain"], record["sni"], record["verify_name"]) == (
        "site.test",
        "a.test",
        "a.test",
    )


def test_sni_off_gets_the_default_certificate_and_a_name_mismatch(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """Without origin SNI the origin shows its default certificate: 502 name mismatch naming it."""
    edge = start(edge_factory, edge_config(pki, {"a.test": {"origins": [to(origin)]}}))
    resp = edge.request("GET", "/", host="a.test")
    assert resp.status == 502
    assert "origin_cert_name_mismatch" in resp.text
    assert resp.header("X-Edge-Request-Id") in resp.text
    record = edge.record(resp)
    assert record["error"] == "origin_cert_name_mismatch"
    assert (record["sni"], record["verify_name"]) == (None, "a.test")
    assert "default.test, www.default.test" in record["error_detail"]
    assert "a.test" in record["error_detail"]
    assert origin.requests == []
    assert [h["sni"] for h in origin.handshakes] in ([], [None])


def test_origin_rejecting_the_sni_is_a_tls_failure(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """An origin with no vhost for the SNI and no default refuses it: 502 origin_tls_failed."""
    rejecting = servers.tls_origin({"a.test": pki.leaf("a.test")}, None)
    edge = start(edge_factory, edge_config(pki, {"c.test": sni_on(to(rejecting))}))
    resp = edge.request("GET", "/", host="c.test")
    assert resp.status == 502
    assert "origin_tls_failed" in resp.text
    record = edge.record(resp)
    assert record["error"] == "origin_tls_failed"
    assert record["sni"] == "c.test"
    assert "unrecognized name" in record["error_detail"].lower().replace("_", " ")
    assert [r["sni"] for r in rejecting.rejected_handshakes] == ["c.test"]
    assert rejecting.requests == []


def test_certificate_from_an_untrusted_ca_is_rejected(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """A leaf for the right name from a CA outside tls.ca_file gets 502 origin_cert_untrusted."""
    untrusted = servers.tls_origin({"a.test": pki.untrusted_leaf("a.test")}, None)
    edge = start(edge_factory, edge_config(pki, {"a.test": sni_on(to(untrusted))}))
    resp = edge.request("GET", "/", host="a.test")
    assert resp.status == 502
    assert "origin_cert_untrusted" in resp.text
    record = edge.record(resp)
    assert record["error"] == "origin_cert_untrusted"
    assert record["sni"] == "a.test"
    assert untrusted.requests == []


def test_certificate_without_subject_alt_name_is_rejected_even_if_cn_matches(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """A trusted leaf whose only name is a CN equal to the SNI gets 502 name mismatch."""
    sanless = servers.tls_origin({"nosan.test": pki.sanless_leaf("nosan.test")}, None)
    edge = start(edge_factory, edge_config(pki, {"nosan.test": sni_on(to(sanless))}))
    resp = edge.request("GET", "/", host="nosan.test")
    assert resp.status == 502
    assert "origin_cert_name_mismatch" in resp.text
    record = edge.record(resp)
    assert record["error"] == "origin_cert_name_mismatch"
    assert (record["sni"], record["verify_name"]) == ("nosan.test", "nosan.test")
    assert "subjectAltName" in record["error_detail"]
    assert [h["vhost"] for h in sanless.handshakes] in ([], ["nosan.test"])
    assert sanless.requests == []


def test_verify_false_accepts_an_untrusted_certificate(
    edge_factory: EdgeFactory, servers: Servers, pki: PKI
):
    """verify: false is the documented escape hatch: an untrusted certificate still gets a 200."""
    untrusted = servers.tls_origin({"a.test": pki.untrusted_leaf("a.test")}, None)
    edge = start(edge_factory, edge_config(pki, {"a.test": sni_on(to(untrusted), verify=False)}))
    resp = edge.request("GET", "/x", host="a.test")
    assert resp.status == 200, resp.text
    assert (resp.json()["vhost"], resp.json()["path"]) == ("a.test", "/x")
    record = edge.record(resp)
    assert record["error"] is None
    assert record["sni"] == "a.test"
    assert record["origin_cert"]["dns_names"] == ["a.test"]


def test_pooled_connection_is_reused_only_by_the_same_sni(
    edge_factory: EdgeFactory, origin: TLSOrigin, pki: PKI
):
    """A second a.test request reuses the pooled connection; b.test right after never gets it."""
    edge = start(
        edge_factory, edge_config(pki, {"a.test": sni_on(to(origin)), "b.test": sni_on(to(origin))})
    )
    first = edge.request("GET", "/1", host="a.test")
    second = edge.request("GET", "/2", host="a.test")
    third = edge.request("GET", "/3", host="b.test")
    assert [r.status for r in (first, second, third)] == [200, 200, 200]
    a1, a2, b1 = first.json(), second.json(), third.json()
    assert a2["conn_id"] == a1["conn_id"]
    assert (a1["req_on_conn"], a2["req_on_conn"]) == (1, 2)
    assert b1["conn_id"] != a1["conn_id"]
    assert (b1["vhost"], b1["sni"], b1["req_on_conn"]) == ("b.test", "b.test", 1)

    r1, r2, r3 = (edge.record(r) for r in (first, second, third))
    assert r1["connection_reused"] is False
    assert r1["upstream_handshake_ms"] is not None
    assert r2["connection_reused"] is True
    assert r2["upstream_handshake_ms"] is None
    assert r3["connection_reused"] is False
    assert r3["upstream_handshake_ms"] is not None
    assert origin.connections_opened == 2
