"""Integration: origin health (SPEC §10) through the real edge: active checks, passive
ejection, the balancer skipping what is down, and what an operator sees of it.

The edge runs as `twistd -n edgenode` with small check intervals against real origins:
nginx with per-SNI server blocks and `ssl_reject_handshake on`, and in-process Twisted
TLS origins that are stopped and started again on their port mid-test. Traffic is counted
on the origins' side (health-check requests left out); state is read where an operator
reads it: the twistd log, `GET /domains/<name>`, `edgenode_origin_up`, the access log.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgenode.tools.cli import main
from tests.support.edge import EdgeProcess, Response
from tests.support.mtls_origin import (
    MTLSOrigin,
    MTLSOrigins,
    at,
    client_certificate,
    domain,
    edge_config,
)
from tests.support.net import LOOPBACK, free_port
from tests.support.nginx import NginxOrigin
from tests.support.pki import PKI
from tests.support.waiting import wait_until

EdgeFactory = Callable[..., EdgeProcess]

INTERVAL = 0.3  # seconds between checks of one origin (±10 % jitter)
# Fast checks: down after 2 failures, up after 2 successes.
FAST_CHECK: dict[str, Any] = {
    "path": "/healthz",
    "interval": INTERVAL,
    "timeout": 0.25,
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
}
SLACK = 5.0  # generous extra seconds for a loaded machine; never a timing assertion
ORIGIN_HEALTH_FIELDS = {
    "origin",
    "sni",
    "state",
    "reason",
    "ejected_for_seconds",
    "last_check",
    "last_check_result",
    "consecutive_check_failures",
    "consecutive_request_failures",
}


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def origins(reactor_thread: Any) -> Iterator[MTLSOrigins]:
    """In-process TLS origins that can be stopped and restarted on their port."""
    made = MTLSOrigins()
    yield made
    made.stop_all()


def tls_origin(origins: MTLSOrigins, pki: PKI, *names: str, port: int = 0) -> MTLSOrigin:
    """A JSON TLS origin with a certificate per name (no client certificate asked)."""
    return origins.origin({name: pki.leaf(name) for name in names}, None, port=port)


def label(port: int) -> str:
    return f"{LOOPBACK}:{port}"


def origin_health(edge: EdgeProcess, name: str) -> list[dict[str, Any]]:
    """`origin_health` of GET /domains/<name>."""
    resp = edge.admin_request("GET", f"/domains/{name}")
    assert resp.status == 200, resp.text
    states = resp.json()["origin_health"]
    assert isinstance(states, list), states
    return states


def health_of(edge: EdgeProcess, name: str, port: int) -> dict[str, Any]:
    """The `origin_health` entry of the origin on `port`."""
    found = [s for s in origin_health(edge, name) if s["origin"] == label(port)]
    assert len(found) == 1, origin_health(edge, name)
    return found[0]


def wait_state(edge: EdgeProcess, name: str, port: int, state: str, timeout: float) -> None:
    wait_until(
        lambda: health_of(edge, name, port)["state"] == state,
        timeout,
        f"{label(port)} of {name} to be {state}",
    )


def origin_up(edge: EdgeProcess, name: str, port: int, sni: str) -> float | None:
    """The value of `edgenode_origin_up{domain, origin, sni}`, None when absent."""
    resp = edge.admin_request("GET", "/metrics")
    assert resp.status == 200, resp.text
    wanted = {"domain": name, "origin": label(port), "sni": sni}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name == "edgenode_origin_up" and sample.labels == wanted:
                return float(sample.value)
    return None


def traffic(origin: MTLSOrigin) -> list[dict[str, Any]]:
    """The requests an origin received from real traffic (health checks left out)."""
    return [r for r in origin.requests if r["path"] != "/healthz"]


def checks(origin: MTLSOrigin) -> list[dict[str, Any]]:
    return [r for r in origin.requests if r["path"] == "/healthz"]


def log_lines(edge: EdgeProcess, pattern: str) -> list[str]:
    """twistd log lines matching the regular expression `pattern`."""
    return [line for line in edge.log_text().splitlines() if re.search(pattern, line)]


def events(edge: EdgeProcess, name: str, port: int) -> list[str]:
    """The access log's origin_down / origin_up event lines of one origin, in order."""
    return [
        r["event"]
        for r in edge.access_records()
        if r.get("event") and r["domain"] == name and r["origin"] == label(port)
    ]


def get(edge: EdgeProcess, host: str) -> tuple[Response, dict[str, Any]]:
    """One request and its access-log record (which may take the log's flush, up to 1 s)."""
    resp = edge.request("GET", "/traffic", host=host)
    return resp, edge.record(resp)


def get_many(edge: EdgeProcess, host: str, n: int) -> list[tuple[Response, dict[str, Any]]]:
    """`n` requests in a row, then their access-log records (one flush for all)."""
    responses = [edge.request("GET", "/traffic", host=host) for _ in range(n)]
    return [(resp, edge.record(resp)) for resp in responses]


def rewrite(edge: EdgeProcess, mutate: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the edge's config file through `mutate(config)`."""
    config = copy.deepcopy(edge.config)
    mutate(config)
    edge.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


# --- active checks -----------------------------------------------------------------------------


def test_a_check_succeeds_only_with_the_traffic_sni(
    edge_factory: EdgeFactory, pki: PKI, nginx_origin: NginxOrigin
) -> None:
    """Against nginx (a vhost per SNI, unknown SNI rejected) the check of a.test passes
    because it sends SNI a.test; a domain with the same Host but SNI c.test is marked down
    by its checks with origin_tls_failed, and its traffic is still tried, not refused."""
    port = nginx_origin.port
    edge = edge_factory(
        edge_config(
            pki,
            {
                "a.test": domain(at(port), sni="a.test", health_check=FAST_CHECK),
                "wrong.test": domain(
                    at(port), sni="c.test", origin_host="a.test", health_check=FAST_CHECK
                ),
            },
        )
    )
    timeout = FAST_CHECK["unhealthy_threshold"] * INTERVAL * 1.1 + SLACK
    wait_state(edge, "wrong.test", port, "down", timeout)
    wrong = health_of(edge, "wrong.test", port)
    assert set(wrong) == ORIGIN_HEALTH_FIELDS
    assert wrong["sni"] == "c.test"
    assert "origin_tls_failed" in wrong["reason"], wrong
    assert wrong["last_check_result"].startswith("origin_tls_failed"), wrong
    assert wrong["consecutive_check_failures"] >= 2
    down = log_lines(
        edge,
        rf"origin down {re.escape(label(port))} of wrong\.test \(SNI c\.test\): "
        r"\d+ checks in a row failed: origin_tls_failed: ",
    )
    assert len(down) == 1, edge.log_text()

    wait_until(
        lambda: health_of(edge, "a.test", port)["last_check"] is not None,
        INTERVAL + SLACK,
        "a check of a.test",
    )
    good = health_of(edge, "a.test", port)
    assert (good["state"], good["reason"], good["last_check_result"]) == ("up", None, "ok")
    assert good["consecutive_check_failures"] == 0
    assert log_lines(edge, r"origin down .* of a\.test") == []
    # nginx saw a.test's checks with SNI a.test and Host a.test, and never a c.test request.
    seen = nginx_origin.access_log_lines()
    assert any('"a.test" "a.test" "GET /healthz HTTP/1.1" 200' in line for line in seen), seen
    assert not any('"c.test"' in line for line in seen), seen

    # Every origin of wrong.test is down: requests still go there and fail with the cause.
    resp, record = get(edge, "wrong.test")
    assert resp.status == 502, resp.text
    assert (record["error"], record["attempts"], record["sni"]) == (
        "origin_tls_failed",
        1,
        "c.test",
    )
    resp = edge.request("GET", "/traffic", host="a.test")
    assert resp.status == 200 and resp.json()["block"] == "a.test"


def test_a_check_uses_the_routes_client_certificate_and_a_connection_of_its_own(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """Checks of an origin that requires a client certificate pass: each presents the
    route's certificate and SNI, sends Host: <origin_host>, on a fresh connection that
    traffic never shares."""
    origin = origins.origin({"mtls.test": pki.leaf("mtls.test")}, None, client_ca=pki.ca_file)
    cert = client_certificate(pki, "edge-health")
    edge = edge_factory(
        edge_config(
            pki,
            {
                "shop.test": domain(
                    at(origin.port),
                    sni="mtls.test",
                    origin_host="origin.shop.test",
                    client_certificate=cert,
                    health_check=FAST_CHECK,
                )
            },
        )
    )
    wait_until(lambda: len(checks(origin)) >= 3, 3 * INTERVAL * 1.1 + SLACK, "three checks")
    for _ in range(3):
        assert edge.request("GET", "/traffic", host="shop.test").status == 200
    wait_until(lambda: len(checks(origin)) >= 5, 2 * INTERVAL * 1.1 + SLACK, "two more checks")
    done = checks(origin)
    assert {(r["sni"], r["host"], r["client_cert"]) for r in done} == {
        ("mtls.test", "origin.shop.test", "edge-health")
    }
    assert {r["req_on_conn"] for r in done} == {1}
    assert len({r["conn_id"] for r in done}) == len(done)
    agents = {dict((k.lower(), v) for k, v in r["headers"]).get("user-agent") for r in done}
    assert agents == {"edgenode-health-check"}
    served = traffic(origin)
    assert [r["client_cert"] for r in served] == ["edge-health"] * 3
    assert [r["req_on_conn"] for r in served] == [1, 2, 3]  # one pooled connection, reused
    assert {r["conn_id"] for r in served}.isdisjoint({r["conn_id"] for r in done})
    state = health_of(edge, "shop.test", origin.port)
    assert (state["state"], state["last_check_result"]) == ("up", "ok")


def test_a_status_outside_expect_status_marks_the_origin_down(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """A check answered 503 when 200-399 is expected is a failure naming the status."""
    origin = tls_origin(origins, pki, "a.test")
    check = {**FAST_CHECK, "path": "/status/503", "expect_status": "200-399"}
    edge = edge_factory(
        edge_config(pki, {"a.test": domain(at(origin.port), sni="a.test", health_check=check)})
    )
    wait_state(edge, "a.test", origin.port, "down", 2 * INTERVAL * 1.1 + SLACK)
    state = health_of(edge, "a.test", origin.port)
    assert state["reason"] == "2 checks in a row failed: status 503, expected 200-399", state
    assert state["last_check_result"] == "status 503, expected 200-399"


def test_a_check_without_an_answer_within_its_timeout_fails_as_origin_timeout(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """A check the origin does not answer within `timeout` fails with origin_timeout."""
    origin = tls_origin(origins, pki, "a.test")
    check = {**FAST_CHECK, "path": "/delay/30"}
    edge = edge_factory(
        edge_config(pki, {"a.test": domain(at(origin.port), sni="a.test", health_check=check)})
    )
    wait_state(edge, "a.test", origin.port, "down", 3 * INTERVAL * 1.1 + SLACK)
    state = health_of(edge, "a.test", origin.port)
    assert state["last_check_result"] == "origin_timeout: no answer within 0.25s", state


def test_checks_do_not_take_a_connection_slot_from_traffic(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """With origin_max_connections 1 held by a slow request, checks still reach the origin
    (on connections of their own) and the origin stays up."""
    origin = tls_origin(origins, pki, "a.test")
    config = edge_config(
        pki, {"a.test": domain(at(origin.port), sni="a.test", health_check=FAST_CHECK)}
    )
    config["limits"] = {"origin_max_connections": 1}
    edge = edge_factory(config)
    wait_until(lambda: checks(origin), INTERVAL * 1.1 + SLACK, "a first check")
    client = edge.connection(timeout=30)
    try:
        client.putrequest("GET", "/delay/30", skip_host=True)
        client.putheader("Host", "a.test")
        client.endheaders()
        wait_until(
            lambda: any(r["path"] == "/delay/30" for r in origin.requests),
            SLACK,
            "the slow request at the origin",
        )
        during = len(checks(origin))
        wait_until(
            lambda: len(checks(origin)) >= during + 2,
            2 * INTERVAL * 1.1 + SLACK,
            "two checks while the only slot is taken",
        )
        assert [r["path"] for r in traffic(origin)] == ["/delay/30"]
    finally:
        client.close()
    state = health_of(edge, "a.test", origin.port)
    assert (state["state"], state["last_check_result"]) == ("up", "ok")


def test_a_killed_origin_is_marked_down_loses_its_traffic_and_gets_it_back(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """An origin stopped mid-run goes down within unhealthy_threshold checks (log, /domains,
    edgenode_origin_up 0) and gets no traffic; restarted on its port it comes back up after
    healthy_threshold checks (edgenode_origin_up 1) and serves traffic again."""
    first = tls_origin(origins, pki, "k.test")
    second = tls_origin(origins, pki, "k.test")
    edge = edge_factory(
        edge_config(
            pki,
            {
                "k.test": domain(
                    at(first.port), at(second.port), sni="k.test", health_check=FAST_CHECK
                )
            },
        )
    )
    wait_until(
        lambda: checks(first) and checks(second), INTERVAL * 1.1 + SLACK, "a first check of each"
    )
    assert origin_up(edge, "k.test", first.port, "k.test") == 1
    assert origin_up(edge, "k.test", second.port, "k.test") == 1
    for _ in range(4):
        assert edge.request("GET", "/traffic", host="k.test").status == 200
    assert len(traffic(first)) == len(traffic(second)) == 2

    first.stop()
    # Two failed checks, each up to 1.1 intervals apart, and one maybe under way.
    wait_state(edge, "k.test", first.port, "down", 3 * INTERVAL * 1.1 + SLACK)
    down = log_lines(
        edge,
        rf"origin down {re.escape(label(first.port))} of k\.test \(SNI k\.test\): "
        r"2 checks in a row failed: origin_connect_failed: ",
    )
    assert len(down) == 1, edge.log_text()
    assert origin_up(edge, "k.test", first.port, "k.test") == 0
    assert origin_up(edge, "k.test", second.port, "k.test") == 1
    wait_until(
        lambda: events(edge, "k.test", first.port) == ["origin_down"], SLACK, "the down event"
    )

    before = len(traffic(second))
    for resp, record in get_many(edge, "k.test", 6):
        assert resp.status == 200, resp.text
        assert (record["origin"], record["attempts"]) == (label(second.port), 1), record
    assert len(traffic(second)) == before + 6

    first.restart()
    wait_state(edge, "k.test", first.port, "up", 3 * INTERVAL * 1.1 + SLACK)
    up = log_lines(
        edge,
        rf"origin up {re.escape(label(first.port))} of k\.test \(SNI k\.test\): "
        r"2 checks in a row succeeded",
    )
    assert len(up) == 1, edge.log_text()
    assert origin_up(edge, "k.test", first.port, "k.test") == 1
    wait_until(
        lambda: events(edge, "k.test", first.port) == ["origin_down", "origin_up"],
        SLACK,
        "the up event in the access log",
    )
    state = health_of(edge, "k.test", first.port)
    assert (state["reason"], state["consecutive_check_failures"]) == (None, 0)
    served = [record["origin"] for _, record in get_many(edge, "k.test", 6)]
    assert served.count(label(first.port)) >= 2, served
    assert len(traffic(first)) >= 2


def test_when_every_origin_is_down_requests_still_try_them(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """All origins down: a request tries each (502 origin_connect_failed, attempts 2, not a
    refusal); once one listens again, requests succeed before any check marks it up."""
    ports = [free_port(), free_port()]
    check = {**FAST_CHECK, "unhealthy_threshold": 1, "healthy_threshold": 100}
    edge = edge_factory(
        edge_config(
            pki, {"d.test": domain(at(ports[0]), at(ports[1]), sni="d.test", health_check=check)}
        )
    )
    for port in ports:
        wait_state(edge, "d.test", port, "down", 2 * INTERVAL * 1.1 + SLACK)
    resp, record = get(edge, "d.test")
    assert resp.status == 502, resp.text
    assert (record["error"], record["attempts"]) == ("origin_connect_failed", 2), record

    back = tls_origin(origins, pki, "d.test", port=ports[0])
    resp, record = get(edge, "d.test")
    assert resp.status == 200, resp.text
    assert record["origin"] == label(ports[0])
    assert len(traffic(back)) == 1
    # healthy_threshold 100: the checks have not brought it back up yet.
    assert health_of(edge, "d.test", ports[0])["state"] == "down"


# --- passive ejection --------------------------------------------------------------------------


def test_passive_ejection_after_failed_requests_and_readmission(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """An origin refusing connections is ejected after 2 failed requests in a row (log,
    /domains): requests then go straight to the other origin (attempts 1) until
    ejection_time is over, after which it is tried again (attempts 2)."""
    closed = free_port()
    good = tls_origin(origins, pki, "p.test")
    ejection = 2
    edge = edge_factory(
        edge_config(
            pki,
            {
                "p.test": domain(
                    at(closed),
                    at(good.port),
                    sni="p.test",
                    passive={"consecutive_failures": 2, "ejection_time": ejection},
                )
            },
        )
    )
    ejected = rf"origin down {re.escape(label(closed))} of p\.test \(SNI p\.test\): "
    sent: list[Response] = []
    while not log_lines(edge, ejected):
        assert len(sent) < 10, edge.log_text()
        sent.append(edge.request("GET", "/traffic", host="p.test"))
    ejected_at = time.monotonic()
    lines = log_lines(
        edge,
        ejected + rf"ejected for {ejection}s after 2 failed requests in a row "
        r"\(last: origin_connect_failed: ",
    )
    assert len(lines) == 1, edge.log_text()
    state = health_of(edge, "p.test", closed)
    assert state["state"] == "down", state
    assert 0 < state["ejected_for_seconds"] <= ejection, state
    assert "origin_connect_failed" in state["reason"]

    during = [edge.request("GET", "/traffic", host="p.test") for _ in range(4)]
    assert time.monotonic() - ejected_at < ejection, "too slow to observe the ejection"
    records = [edge.record(resp) for resp in during]
    assert [(r["attempts"], r["origin"]) for r in records] == [(1, label(good.port))] * 4
    # Before that: every request succeeded, two of them after a refused first attempt.
    before = [edge.record(resp) for resp in sent]
    assert all(r["status"] == 200 for r in before), before
    assert [r["attempts"] for r in before].count(2) == 2, before

    wait_until(
        lambda: log_lines(edge, rf"origin up {re.escape(label(closed))} of p\.test .*ejection"),
        ejection + SLACK,
        "the end of the ejection",
    )
    assert health_of(edge, "p.test", closed)["state"] == "up"
    after = [record for _, record in get_many(edge, "p.test", 2)]
    assert sorted(r["attempts"] for r in after) == [1, 2], after
    assert all(r["status"] == 200 and r["origin"] == label(good.port) for r in after)


# --- reload ------------------------------------------------------------------------------------


def test_a_reload_changing_one_domains_sni_keeps_another_domains_down_state(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """b.test's origin is down; a reload that changes a.test's SNI leaves it down at once
    (its failures and reason kept, no new checks needed) and logs no second transition."""
    origin = tls_origin(origins, pki, "a.test", "c.test")
    closed = free_port()
    # Slow enough to go down again that a state reset would be seen as "up" after reload.
    b_check = {**FAST_CHECK, "interval": 0.5, "unhealthy_threshold": 3}
    edge = edge_factory(
        edge_config(
            pki,
            {
                "a.test": domain(at(origin.port), sni="a.test", health_check=FAST_CHECK),
                "b.test": domain(at(closed), sni="b.test", health_check=b_check),
            },
        )
    )
    wait_state(edge, "b.test", closed, "down", 4 * 0.5 * 1.1 + SLACK)
    before = health_of(edge, "b.test", closed)

    def change_a(config: dict[str, Any]) -> None:
        config["domains"]["a.test"]["origin_sni"]["value"] = "c.test"

    rewrite(edge, change_a)
    answer = edge.admin_request("POST", "/reload")
    assert answer.status == 200, answer.text
    assert list(answer.json()["changed"]["changed"]) == ["a.test"]
    after = health_of(edge, "b.test", closed)
    assert after["state"] == "down", after
    assert after["reason"] == before["reason"]
    assert after["consecutive_check_failures"] >= before["consecutive_check_failures"]
    assert origin_up(edge, "b.test", closed, "b.test") == 0
    assert len(log_lines(edge, r"origin down .* of b\.test")) == 1
    # a.test's origin is now the c.test route: watched under its new SNI.
    assert [s["sni"] for s in origin_health(edge, "a.test")] == ["c.test"]
    resp = edge.request("GET", "/traffic", host="a.test")
    assert resp.status == 200 and resp.json()["sni"] == "c.test"


def test_a_reload_stops_checking_a_replaced_route_and_drops_its_gauge(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins
) -> None:
    """After a reload moves a.test from SNI a.test to c.test, checks go out with c.test only,
    and `edgenode_origin_up` no longer shows the route that is gone."""
    origin = tls_origin(origins, pki, "a.test", "c.test")
    edge = edge_factory(
        edge_config(pki, {"a.test": domain(at(origin.port), sni="a.test", health_check=FAST_CHECK)})
    )

    def by_sni(sni: str) -> int:
        return len([r for r in checks(origin) if r["sni"] == sni])

    wait_until(lambda: by_sni("a.test") >= 1, INTERVAL * 1.1 + SLACK, "a check with SNI a.test")
    assert origin_up(edge, "a.test", origin.port, "a.test") == 1

    def change(config: dict[str, Any]) -> None:
        config["domains"]["a.test"]["origin_sni"]["value"] = "c.test"

    rewrite(edge, change)
    assert edge.admin_request("POST", "/reload").status == 200
    old_checks = by_sni("a.test")
    wait_until(lambda: by_sni("c.test") >= 3, 3 * INTERVAL * 1.1 + SLACK, "checks with SNI c.test")
    assert by_sni("a.test") <= old_checks + 1  # at most one that was under way
    assert origin_up(edge, "a.test", origin.port, "c.test") == 1
    assert origin_up(edge, "a.test", origin.port, "a.test") is None


@pytest.mark.parametrize("max_tls", ["1.2", None], ids=["tls1.2", "tls1.3"])
def test_a_check_without_the_required_client_certificate_fails_as_a_tls_failure(
    edge_factory: EdgeFactory, pki: PKI, origins: MTLSOrigins, max_tls: str | None
) -> None:
    """An origin that requires a client certificate the domain does not configure is down,
    and the reason says origin_tls_failed (TLS 1.3 rejects it after the client's Finished)."""
    origin = origins.origin(
        {"mtls.test": pki.leaf("mtls.test")}, None, client_ca=pki.ca_file, max_tls=max_tls
    )
    edge = edge_factory(
        edge_config(
            pki, {"mtls.test": domain(at(origin.port), sni="mtls.test", health_check=FAST_CHECK)}
        )
    )
    wait_state(edge, "mtls.test", origin.port, "down", 3 * INTERVAL * 1.1 + SLACK)
    state = health_of(edge, "mtls.test", origin.port)
    assert state["reason"].startswith("2 checks in a row failed: origin_tls_failed: "), state
    assert origin.requests == []


# --- configuration -----------------------------------------------------------------------------


def test_check_rejects_bad_health_settings_naming_each_path(
    tmp_path: Path, pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edgenode check` exits 1 and names every bad health_check / passive value by path."""
    bad: dict[str, dict[str, Any]] = {
        "n1.test": {"health_check": {"interval": -1}},
        "n2.test": {"health_check": {"interval": 1, "timeout": 5}},
        "n3.test": {"health_check": {"expect_status": "600"}},
        "n4.test": {"health_check": {"path": "healthz"}},
        "n5.test": {"health_check": {"unhealthy_threshold": 0}},
        "n6.test": {"passive": {"consecutive_failures": 0, "ejection_time": 30}},
    }
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            edge_config(pki, {name: domain(at(443), sni=name, **s) for name, s in bad.items()})
        )
    )
    assert main(["check", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"edgenode: {config} has 6 problems:", err
    for path in (
        "domains.n1.test.health_check.interval: ",
        "domains.n2.test.health_check.timeout: ",
        "domains.n3.test.health_check.expect_status: ",
        "domains.n4.test.health_check.path: ",
        "domains.n5.test.health_check.unhealthy_threshold: ",
        "domains.n6.test.passive.consecutive_failures: ",
    ):
        assert any(line.startswith(f"  {path}") for line in lines[1:]), (path, err)
