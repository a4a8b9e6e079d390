"""The admin API through the real twistd edge: auth, reload, SIGHUP, views, `edgenode reload`."""

from __future__ import annotations

import copy
import json
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from edgenode.config import config_from_mapping
from edgenode.control.admin import AdminResource, AdminSite, ReloadResult
from edgenode.runtime import RuntimeHolder, build_runtime
from tests.support.edge import EdgeProcess
from tests.support.net import free_port
from tests.support.origin import TLSOrigin
from tests.support.pki import PKI
from tests.support.waiting import wait_until


@pytest.fixture
def three_name_origin(servers, pki: PKI) -> TLSOrigin:
    """One origin IP:port with certificates for a.test, b.test and c.test."""
    return servers.tls_origin(
        {name: pki.leaf(name) for name in ("a.test", "b.test", "c.test")},
        pki.leaf("default.test"),
    )


def _config(pki: PKI, origin: TLSOrigin, **sni_by_domain: str) -> dict[str, Any]:
    return {
        "tls": {"ca_file": str(pki.ca_file)},
        "domains": {
            domain.replace("_", "."): {
                "origin_sni": {"enabled": True, "value": sni},
                "origins": [{"address": "127.0.0.1", "port": origin.port}],
            }
            for domain, sni in sni_by_domain.items()
        },
    }


def _rewrite(edge: EdgeProcess, mutate) -> None:
    """Rewrite the edge's config file through `mutate(config_dict)`."""
    config = copy.deepcopy(edge.config)
    mutate(config)
    edge.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _set_sni(domain: str, sni: str):
    def mutate(config: dict[str, Any]) -> None:
        config["domains"][domain]["origin_sni"]["value"] = sni

    return mutate


def _generation(edge: EdgeProcess) -> int:
    r = edge.admin_request("GET", "/healthz", token=None)
    assert r.status == 200
    return r.json()["generation"]


def test_healthz_needs_no_token(edge_factory, pki, origin) -> None:
    """GET /healthz answers without a token with the status and generation."""
    edge = edge_factory(_config(pki, origin, a_test="a.test"))
    r = edge.admin_request("GET", "/healthz", token=None)
    assert (r.status, r.json()) == (200, {"status": "ok", "generation": 1})


@pytest.mark.parametrize("token", [None, "wrong-token"])
@pytest.mark.parametrize(("method", "path"), [("POST", "/reload"), ("GET", "/config")])
def test_missing_or_wrong_token_is_401(edge_factory, pki, origin, token, method, path) -> None:
    """Without the right bearer token every endpoint but /healthz is 401 and changes nothing."""
    edge = edge_factory(_config(pki, origin, a_test="a.test"))
    _rewrite(edge, _set_sni("a.test", "b.test"))
    r = edge.admin_request(method, path, token=token)
    assert r.status == 401
    assert r.json()["error"] == "unauthorized"
    assert _generation(edge) == 1
    assert edge.request("GET", "/", host="a.test").json()["vhost"] == "a.test"


def test_token_file_is_created_0600_and_never_logged(tmp_path, pki, origin) -> None:
    """A missing token file is created with mode 0600; the token never reaches the twistd log."""
    edge = EdgeProcess(tmp_path / "edge", _config(pki, origin, a_test="a.test"))
    token_path = edge.dir / "admin.token"
    token_path.unlink()
    edge.start()
    try:
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        token = token_path.read_text().strip()
        assert len(token) >= 32
        edge.admin_token = token
        assert edge.admin_request("GET", "/config").status == 200
        assert edge.admin_request("GET", "/config", token="nope").status == 401
        assert str(token_path) in edge.log_text()
        assert token not in edge.log_text()
    finally:
        assert edge.stop() == 0
    assert token not in edge.log_text()


def test_reload_changes_sni_for_the_very_next_request(edge_factory, pki, three_name_origin) -> None:
    """After POST /reload changes a domain's SNI, the next request goes out with the new SNI."""
    edge = edge_factory(_config(pki, three_name_origin, shop_test="a.test"))
    assert edge.request("GET", "/", host="shop.test").json()["vhost"] == "a.test"
    _rewrite(edge, _set_sni("shop.test", "b.test"))
    r = edge.admin_request("POST", "/reload")
    assert r.status == 200
    body = r.json()
    assert body["generation"] == 2
    assert "origin_sni.value: a.test -> b.test" in body["changed"]["changed"]["shop.test"]
    answer = edge.request("GET", "/", host="shop.test").json()
    assert (answer["vhost"], answer["sni"]) == ("b.test", "b.test")
    records = edge.access_records(2)
    assert [(r["sni"], r["generation"]) for r in records] == [("a.test", 1), ("b.test", 2)]


def _wildcard(config):
    config["domains"]["a.test"]["origin_sni"]["value"] = "*.a.test"


def _ip_literal(config):
    config["domains"]["a.test"]["origin_sni"]["value"] = "192.0.2.1"


def _missing_ca(config):
    config["tls"]["ca_file"] = "/nonexistent/ca.pem"


def _unknown_key(config):
    config["domains"]["a.test"]["origin_snii"] = {"enabled": True}


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (_wildcard, "domains.a.test.origin_sni.value"),
        (_ip_literal, "domains.a.test.origin_sni.value"),
        (_missing_ca, "tls.ca_file"),
        (_unknown_key, "domains.a.test.origin_snii"),
    ],
    ids=["wildcard-sni", "ip-literal-sni", "missing-ca-file", "unknown-key"],
)
def test_bad_reload_is_422_and_changes_nothing(edge_factory, pki, origin, mutate, path) -> None:
    """A reload of a broken config answers 422 naming the path; the edge runs on unchanged."""
    edge = edge_factory(_config(pki, origin, a_test="a.test", b_test="b.test"))
    before = edge.admin_request("GET", "/config").json()
    _rewrite(edge, mutate)
    r = edge.admin_request("POST", "/reload")
    assert r.status == 422
    assert path in [e["path"] for e in r.json()["errors"]]
    assert edge.admin_request("GET", "/config").json() == before
    assert _generation(edge) == 1
    for host in ("a.test", "b.test"):
        assert edge.request("GET", "/", host=host).json()["vhost"] == host
    assert "rejected" in edge.log_text()


def test_yaml_syntax_error_reload_is_422(edge_factory, pki, origin) -> None:
    """A config file that is not YAML is rejected with a located problem; nothing changes."""
    edge = edge_factory(_config(pki, origin, a_test="a.test"))
    edge.config_path.write_text("domains: {a.test: [unclosed\n")
    r = edge.admin_request("POST", "/reload")
    assert r.status == 422
    assert "line" in r.json()["errors"][0]["message"]
    assert _generation(edge) == 1
    assert edge.request("GET", "/", host="a.test").json()["vhost"] == "a.test"


def test_unchanged_routes_keep_their_pooled_connections(
    edge_factory, pki, three_name_origin
) -> None:
    """A reload that changes domain A's SNI costs domain B no new handshake."""
    origin = three_name_origin
    edge = edge_factory(_config(pki, origin, a_test="a.test", b_test="b.test"))
    for host in ("a.test", "b.test"):
        assert edge.request("GET", "/", host=host).status == 200
    assert len(origin.handshakes) == 2
    _rewrite(edge, _set_sni("a.test", "c.test"))
    assert edge.admin_request("POST", "/reload").status == 200
    b = edge.request("GET", "/", host="b.test").json()
    assert (b["vhost"], b["req_on_conn"]) == ("b.test", 2)
    assert len(origin.handshakes) == 2  # b.test reused its connection
    a = edge.request("GET", "/", host="a.test").json()
    assert (a["vhost"], a["req_on_conn"]) == ("c.test", 1)
    assert [h["sni"] for h in origin.handshakes] == ["a.test", "b.test", "c.test"]
    reused = {(r["host"], r["generation"]): r["connection_reused"] for r in edge.access_records(4)}
    assert reused[("b.test", 2)] is True


def test_reload_under_load_loses_or_misroutes_nothing(edge_factory, pki, three_name_origin) -> None:
    """50 reloads alternating two configs while clients send requests: no failure, no mix-up."""
    origin = three_name_origin
    edge = edge_factory(_config(pki, origin, a_test="a.test", b_test="b.test", flip_test="a.test"))
    configs = [
        _config(pki, origin, a_test="a.test", b_test="b.test", flip_test=sni)
        for sni in ("c.test", "a.test")
    ]
    for c in configs:
        c.update({k: edge.config[k] for k in ("listen", "admin", "access_log")})
    stop = threading.Event()
    problems: list[Any] = []
    seen: list[tuple[str, str, str]] = []  # (host, request id, vhost)

    def client(hosts: tuple[str, ...]) -> None:
        conn = edge.connection()
        i = 0
        while not stop.is_set():
            host = hosts[i % len(hosts)]
            i += 1
            try:
                conn.request("GET", f"/?i={i}", headers={"Host": host})
                resp = conn.getresponse()
                body = resp.read()
            except Exception as e:
                problems.append((host, repr(e)))
                return
            if resp.status != 200:
                problems.append((host, resp.status, body[:200]))
                continue
            vhost = json.loads(body)["vhost"]
            seen.append((host, resp.getheader("X-Edge-Request-Id"), vhost))
        conn.close()

    threads = [
        threading.Thread(target=client, args=(hosts,))
        for hosts in [("a.test", "flip.test"), ("b.test", "flip.test"), ("flip.test",)]
    ]
    for t in threads:
        t.start()
    try:
        for n in range(50):
            edge.config_path.write_text(yaml.safe_dump(configs[n % 2], sort_keys=False))
            r = edge.admin_request("POST", "/reload")
            assert r.status == 200, r.text
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert problems == []
    assert _generation(edge) == 51
    assert len(seen) > 50
    for host, _rid, vhost in seen:
        if host != "flip.test":
            assert vhost == host
    # Every flip.test answer came from the SNI its own generation named.
    records = {r["request_id"]: r for r in edge.access_records(len(seen))}
    for host, rid, vhost in seen:
        rec = records[rid]
        assert rec["sni"] == vhost, (host, rec)


def test_sighup_reloads_like_post_reload(edge_factory, pki, three_name_origin) -> None:
    """SIGHUP re-reads the config, applies it, and logs the diff in the twistd log."""
    edge = edge_factory(_config(pki, three_name_origin, shop_test="a.test"))
    _rewrite(edge, _set_sni("shop.test", "c.test"))
    edge.signal(signal.SIGHUP)
    wait_until(lambda: _generation(edge) == 2, 10, "generation 2 after SIGHUP", 0.05)
    assert edge.request("GET", "/", host="shop.test").json()["vhost"] == "c.test"
    assert "reload (SIGHUP): generation 2" in edge.log_text()
    assert "origin_sni.value: a.test -> c.test" in edge.log_text()


def test_sighup_with_bad_config_logs_the_problems(edge_factory, pki, origin) -> None:
    """A SIGHUP reload of a broken config logs the problems and keeps the old generation."""
    edge = edge_factory(_config(pki, origin, a_test="a.test"))
    _rewrite(edge, _wildcard)
    edge.signal(signal.SIGHUP)
    wait_until(lambda: "reload (SIGHUP) rejected" in edge.log_text(), 10, "the rejection")
    assert "is a wildcard" in edge.log_text()
    assert _generation(edge) == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgenode.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_edgenode_reload_cli(edge_factory, pki, three_name_origin) -> None:
    """`edgenode reload` prints the diff and exits 0, or the problems and exits 1."""
    edge = edge_factory(_config(pki, three_name_origin, shop_test="a.test"))
    _rewrite(edge, _set_sni("shop.test", "b.test"))
    done = _cli("reload", "--config", str(edge.config_path))
    assert done.returncode == 0, done.stderr
    assert "generation 2" in done.stdout
    assert "shop.test: origin_sni.value: a.test -> b.test" in done.stdout
    _rewrite(edge, _ip_literal_shop)
    failed = _cli("reload", "--config", str(edge.config_path))
    assert failed.returncode == 1
    assert "is an IP literal" in failed.stderr + failed.stdout
    assert _generation(edge) == 2


def _ip_literal_shop(config):
    config["domains"]["shop.test"]["origin_sni"]["value"] = "192.0.2.1"


def test_edgenode_reload_cli_unreachable_exits_2(tmp_path, pki, origin) -> None:
    """`edgenode reload` against an edge that is not running exits 2."""
    config = _config(pki, origin, a_test="a.test")
    config["admin"] = {"listen": f"tcp:{free_port()}:interface=127.0.0.1", "token_file": "t"}
    (tmp_path / "t").write_text("x\n")
    path = tmp_path / "edgenode.yaml"
    path.write_text(yaml.safe_dump(config))
    done = _cli("reload", "--config", str(path))
    assert done.returncode == 2
    assert "cannot reach" in done.stderr


def test_listen_change_needs_restart_and_old_listener_keeps_serving(
    edge_factory, pki, origin
) -> None:
    """A reload that changes `listen` says a restart is needed; the old listener keeps serving."""
    edge = edge_factory(_config(pki, origin, a_test="a.test"))
    new_listen = f"tcp:{free_port()}:interface=127.0.0.1"

    def move(config):
        config["listen"] = new_listen

    _rewrite(edge, move)
    r = edge.admin_request("POST", "/reload")
    assert r.status == 200
    assert r.json()["restart_required"] == [f"listen: {edge.config['listen']} -> {new_listen}"]
    assert edge.request("GET", "/", host="a.test").status == 200


def test_config_and_domain_views(edge_factory, pki, origin) -> None:
    """GET /config and /domains/<name> show each origin's effective SNI and verify name."""
    config = _config(pki, origin, a_test="a.test")
    config["domains"]["b.test"] = {
        "origin_host": "b.test",
        "origins": [
            {"address": "127.0.0.1", "port": origin.port},
            {"address": "127.0.0.1", "port": origin.port, "sni": "a.test"},
        ],
    }
    edge = edge_factory(config)
    full = edge.admin_request("GET", "/config").json()
    assert full["generation"] == 1
    origins = full["domains"]["b.test"]["origins"]
    assert [(o["effective_sni"], o["verify_name"]) for o in origins] == [
        (None, "b.test"),
        ("a.test", "a.test"),
    ]
    assert edge.admin_token not in edge.admin_request("GET", "/config").text
    one = edge.admin_request("GET", "/domains/A.TEST")
    assert one.status == 200
    assert one.json()["origins"][0]["effective_sni"] == "a.test"
    missing = edge.admin_request("GET", "/domains/nope.test")
    assert missing.status == 404
    assert edge.admin_request("GET", "/domains/../config").status == 404
    assert edge.admin_request("DELETE", "/config").status == 405


# --- In memory: the reload answer --------------------------------------------------------------


def _admin_channel(reload: Any) -> tuple[Any, StringTransport]:
    """The admin site's protocol for one connection, on a StringTransport and a Clock."""
    config = config_from_mapping(
        {"domains": {"a.test": {"origin_protocol": "http", "origins": [{"address": "192.0.2.1"}]}}},
        base_dir=Path("."),
    )
    holder = RuntimeHolder(build_runtime(config, 1))
    channel = AdminSite(AdminResource(holder, "tok", reload)).buildProtocol(None)
    channel.callLater = Clock().callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


POST_RELOAD = (
    b"POST /reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer tok\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_reload_is_answered_when_its_deferred_fires() -> None:
    """POST /reload answers once the reload is done (a supervisor's waits for its workers),
    with the outcome's status and a Content-Length."""
    pending: defer.Deferred[ReloadResult] = defer.Deferred()
    triggers: list[str] = []
    channel, transport = _admin_channel(lambda trigger: triggers.append(trigger) or pending)
    channel.dataReceived(POST_RELOAD)
    assert triggers == ["admin"] and transport.value() == b""
    pending.callback(ReloadResult(False, 3, changed={"added": []}, errors=({"path": "x"},)))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"\r\nContent-Length: %d" % len(body) in head
    assert json.loads(body)["errors"] == [{"path": "x"}]


def test_a_failing_reload_is_answered_500_and_logged() -> None:
    """A reload that fails (our bug) answers 500 internal_error, not a hung request."""
    channel, transport = _admin_channel(lambda trigger: defer.fail(RuntimeError("bug")))
    channel.dataReceived(POST_RELOAD)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ")
    assert json.loads(body)["error"] == "internal_error"
