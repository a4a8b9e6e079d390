"""A fleet of real edges on one real etcd (SPEC §9): three `twistd -n edgenode` processes
follow `<prefix>domains/`, converge on one write, reject a bad document together, ride out
an outage and a compaction, start from their cache, and a supervisor's workers share its
one watch. `edgenode push` is tested in tests/test_push.py.

Which origin SNI an edge sent is observed on the origin's side (the in-process TLS origin
presents the certificate of the SNI it received and answers with that vhost) and in the
edge's access log (`sni`, `origin_cert`).

The fleet (etcd, origin, three edges) is shared by the module's tests, which run in
order; each test leaves etcd as it found it (its own domains removed, etcd running).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.support.edge import EdgeProcess
from tests.support.etcd import EtcdServer, started
from tests.support.net import LOOPBACK, free_port
from tests.support.origin import Servers, TLSOrigin
from tests.support.pki import PKI
from tests.support.waiting import wait_until

PREFIX = "/fleet/"
KEYS = PREFIX + "domains/"
WWW = "www.fleet.test"
API = "api.fleet.test"
EXAMPLES = int(os.environ.get("EDGENODE_PROPERTY_EXAMPLES", "3"))


def domain(origin: TLSOrigin, sni: str = "a.test", **settings: Any) -> str:
    """A domain document: origin SNI `sni` (a vhost of the origin) to the test origin."""
    body = {
        "origin_sni": {"value": sni},
        "origins": [{"address": origin.address, "port": origin.port}],
        **settings,
    }
    return json.dumps(body)


def bad_domain(origin: TLSOrigin) -> str:
    return json.dumps({"origins": [{"address": origin.address, "port": 99999}]})


def write(etcd: EtcdServer, puts: dict[str, str | None]) -> int:
    """Puts (and deletes, value None) of domain documents in ONE etcd transaction."""
    ops = [
        {"request_put": {"key": _b64(KEYS + name), "value": _b64(value)}}
        if value is not None
        else {"request_delete_range": {"key": _b64(KEYS + name)}}
        for name, value in puts.items()
    ]
    answer = etcd.call("/v3/kv/txn", {"success": ops})
    return int(answer["header"]["revision"])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd_documents(etcd: EtcdServer) -> dict[str, Any]:
    """Every domain document in etcd, by name, as JSON (or the raw text if not JSON)."""
    end = KEYS[:-1] + chr(ord(KEYS[-1]) + 1)
    answer = etcd.call("/v3/kv/range", {"key": _b64(KEYS), "range_end": _b64(end)})
    out: dict[str, Any] = {}
    for kv in answer.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()[len(KEYS) :]
        value = base64.b64decode(kv.get("value", "")).decode()
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


# --------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------


@attrs.define
class Fleet:
    etcd: EtcdServer
    origin: TLSOrigin
    edges: list[EdgeProcess]
    pki: PKI

    def config(self, **extra: Any) -> dict[str, Any]:
        """An edge config of this fleet (no domains: they come from etcd)."""
        return fleet_config(self.pki, self.etcd, **extra)


def fleet_config(pki: PKI, etcd: EtcdServer, **extra: Any) -> dict[str, Any]:
    cluster = {"etcd": {"endpoints": [etcd.endpoint], "prefix": PREFIX, "startup_timeout": 5}}
    return {
        "tls": {"ca_file": str(pki.ca_file)},
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 5, "body_idle": 5},
        "cluster": cluster,
        **extra,
    }


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = started(EtcdServer(tmp_path_factory.mktemp("fleet-etcd")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet_origin(reactor_thread: Any, pki: PKI) -> Iterator[TLSOrigin]:
    """One TLS origin for every domain: a.test and b.test get their own certificate."""
    servers = Servers()
    yield servers.tls_origin(
        {"a.test": pki.leaf("a.test"), "b.test": pki.leaf("b.test")},
        pki.leaf("default.test"),
    )
    servers.stop_all()


@pytest.fixture(scope="module")
def fleet(
    etcd: EtcdServer, fleet_origin: TLSOrigin, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Three edges on one etcd, started together, serving www.fleet.test (SNI a.test)."""
    write(etcd, {WWW: domain(fleet_origin, "a.test")})
    base = tmp_path_factory.mktemp("fleet")
    edges = [EdgeProcess(base / f"edge{n}", fleet_config(pki, etcd)) for n in (1, 2, 3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda edge: edge.start(), edges))
    yield Fleet(etcd, fleet_origin, edges, pki)
    problems = [problem for edge in edges for problem in edge.teardown_problems()]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def admin_json(edge: EdgeProcess, path: str) -> Any:
    r = edge.admin_request("GET", path)
    return r.json() if r.status == 200 else None


def effective_sni(edge: EdgeProcess, name: str) -> str | None:
    """The SNI the edge sends for `name`'s first origin; None if it has no such domain."""
    found = admin_json(edge, f"/domains/{name}")
    return found["origins"][0]["effective_sni"] if found else None


def all_edges(
    fleet: Fleet, check: Callable[[EdgeProcess], bool], what: str, timeout: float
) -> None:
    wait_until(lambda: all(check(edge) for edge in fleet.edges), timeout, what, interval=0.01)


def cluster_health(edge: EdgeProcess) -> dict[str, Any]:
    health = edge.admin_request("GET", "/healthz", token=None).json()
    return dict(health["cluster"])


def vhost(edge: EdgeProcess, name: str = WWW) -> str | None:
    """Which origin vhost answered a request for `name` through `edge` (None: no 200)."""
    r = edge.request("GET", "/which", host=name)
    return r.json()["vhost"] if r.status == 200 else None


# --------------------------------------------------------------------------
# Convergence, rejection, deletion
# --------------------------------------------------------------------------


def test_three_edges_converge_on_a_changed_origin_sni_within_2s(fleet: Fleet) -> None:
    """One etcd write changes the origin SNI of www.fleet.test: within 2 s every edge's
    next request presents the new SNI and gets the new certificate; another domain's
    pooled origin connection survives the new generation (no new handshake)."""
    all_edges(fleet, lambda e: effective_sni(e, WWW) == "a.test", "www on a.test", 10)
    assert [vhost(edge) for edge in fleet.edges] == ["a.test"] * 3
    write(fleet.etcd, {API: domain(fleet.origin, "a.test")})
    all_edges(fleet, lambda e: vhost(e, API) == "a.test", "api served", 5)

    start = time.monotonic()
    write(fleet.etcd, {WWW: domain(fleet.origin, "b.test")})
    seen: dict[int, float] = {}
    while len(seen) < 3 and time.monotonic() - start < 5:
        for n, edge in enumerate(fleet.edges):
            if n not in seen and vhost(edge) == "b.test":
                seen[n] = time.monotonic() - start
    assert len(seen) == 3, f"edges serving b.test after 5 s: {seen}"
    assert max(seen.values()) < 2.0, seen

    for edge in fleet.edges:
        r = edge.request("GET", "/after", host=WWW)
        record = edge.record(r)
        assert (record["sni"], record["verify_name"]) == ("b.test", "b.test")
        fresh = [r for r in edge.access_records() if r["sni"] == "b.test" and r["origin_cert"]]
        assert fresh and {tuple(r["origin_cert"]["dns_names"]) for r in fresh} == {("b.test",)}
        kept = edge.record(edge.request("GET", "/kept", host=API))
        assert kept["connection_reused"] is True, kept  # api's route: same pool key
    assert {"b.test"} <= {h["sni"] for h in fleet.origin.handshakes}
    write(fleet.etcd, {API: None})
    all_edges(fleet, lambda e: effective_sni(e, API) is None, "api removed", 5)


def test_a_bad_document_is_rejected_by_every_edge_while_the_others_apply(fleet: Fleet) -> None:
    """One transaction: a bad www document and a new api domain. Every edge serves api,
    keeps www on its previous SNI, says why in /healthz and counts the rejection."""
    before = effective_sni(fleet.edges[0], WWW)
    revision = write(fleet.etcd, {WWW: bad_domain(fleet.origin), API: domain(fleet.origin)})
    all_edges(fleet, lambda e: cluster_health(e)["revision"] == revision, "the revision", 5)
    for edge in fleet.edges:
        assert effective_sni(edge, API) == "a.test"
        assert effective_sni(edge, WWW) == before and vhost(edge) == before
        health = cluster_health(edge)
        assert health["state"] == "connected"
        assert health["rejected"] == [KEYS + WWW]
        assert f"etcd:{KEYS}{WWW}.origins[0].port: must be 1..65535" in health["last_error"]
        assert metric(edge, "edgenode_cluster_updates_total", result="rejected") >= 1
        assert metric(edge, "edgenode_cluster_revision") == revision
        assert metric(edge, "edgenode_cluster_connected") == 1
        assert f"{KEYS}{WWW} rejected" in edge.log_text()

    write(fleet.etcd, {WWW: domain(fleet.origin, "b.test"), API: None})
    all_edges(fleet, lambda e: effective_sni(e, API) is None, "api deleted", 5)
    for edge in fleet.edges:
        assert edge.request("GET", "/", host=API).status == 421
        assert cluster_health(edge)["last_error"] is None


def metric(edge: EdgeProcess, name: str, **labels: str) -> float:
    text = edge.admin_request("GET", "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in /metrics")


# --------------------------------------------------------------------------
# Outages
# --------------------------------------------------------------------------


def cut_off(fleet: Fleet) -> None:
    """Stop etcd; wait until every edge says it is disconnected (and still serves)."""
    fleet.etcd.stop()
    all_edges(fleet, lambda e: cluster_health(e)["state"] == "disconnected", "disconnected", 10)
    for edge in fleet.edges:
        assert fleet.etcd.endpoint in cluster_health(edge)["last_error"]
        assert vhost(edge) is not None  # serving on


def test_outage_keeps_serving_and_a_write_made_meanwhile_is_applied_on_return(
    fleet: Fleet,
) -> None:
    """etcd stops: the edges serve on and say disconnected. A write made while they cannot
    reach etcd is applied once it is back, without a full re-read."""
    all_edges(fleet, lambda e: effective_sni(e, WWW) == "b.test", "www on b.test", 5)
    cut_off(fleet)
    fleet.etcd.start(serve_clients=False)  # etcd is up; the edges' port is still closed
    revision = write(fleet.etcd, {WWW: domain(fleet.origin, "a.test")})
    fleet.etcd.stop()
    fleet.etcd.start()
    all_edges(fleet, lambda e: cluster_health(e)["state"] == "connected", "reconnected", 30)
    all_edges(fleet, lambda e: effective_sni(e, WWW) == "a.test", "the write", 5)
    for edge in fleet.edges:
        assert cluster_health(edge)["revision"] == revision
        assert "snapshot" not in edge.log_text()  # resumed, not re-read


def test_compaction_during_an_outage_brings_a_full_re_read_and_loses_nothing(
    fleet: Fleet,
) -> None:
    """While the edges are cut off, www changes, api is created then deleted, old is
    created, and etcd compacts past their revision: each edge re-reads everything and
    ends on exactly etcd's set."""
    cut_off(fleet)
    fleet.etcd.start(serve_clients=False)
    write(fleet.etcd, {WWW: domain(fleet.origin, "b.test"), API: domain(fleet.origin)})
    write(fleet.etcd, {API: None, "old.fleet.test": domain(fleet.origin, "a.test")})
    fleet.etcd.compact(fleet.etcd.revision())
    fleet.etcd.stop()
    fleet.etcd.start()
    all_edges(fleet, lambda e: effective_sni(e, "old.fleet.test") == "a.test", "re-read", 30)
    for edge in fleet.edges:
        assert effective_sni(edge, WWW) == "b.test"
        assert effective_sni(edge, API) is None
        assert "compacted" in edge.log_text() and "etcd snapshot at revision" in edge.log_text()
        assert sorted(admin_json(edge, "/config")["domains"]) == sorted(etcd_documents(fleet.etcd))
    write(fleet.etcd, {"old.fleet.test": None})


def test_an_edge_started_while_etcd_is_down_serves_its_cache(fleet: Fleet) -> None:
    """Restarted while etcd is down, an edge serves the domain set of its cache file (its
    revision, disconnected), then reads etcd once it is back."""
    edge = fleet.edges[0]
    all_edges(fleet, lambda e: effective_sni(e, "old.fleet.test") is None, "settled", 5)
    revision = cluster_health(edge)["revision"]
    cache = json.loads((edge.dir / "cluster-cache.json").read_text())
    assert cache["revision"] == revision and sorted(cache["domains"]) == [WWW]
    assert edge.stop() == 0
    fleet.etcd.stop()
    edge.start()
    assert vhost(edge) == "b.test"
    health = cluster_health(edge)
    assert (health["state"], health["revision"]) == ("disconnected", revision)
    assert "from the cache file" in edge.log_text()
    fleet.etcd.start()
    wait_until(lambda: cluster_health(edge)["state"] == "connected", 30, "edge back on etcd")


def test_no_etcd_and_no_cache_exits_1_naming_the_endpoints(fleet: Fleet, tmp_path: Path) -> None:
    """A start with etcd unreachable and no cache file: exit 1 after startup_timeout, with
    a message naming the endpoints tried and the missing cache."""
    dead = f"http://{LOOPBACK}:{free_port()}"
    config = fleet.config()
    config["cluster"]["etcd"].update(endpoints=[dead], startup_timeout=1)
    edge = EdgeProcess(tmp_path / "lonely", config)
    started = time.monotonic()
    done = subprocess.run(edge.argv, cwd=edge.dir, capture_output=True, timeout=30)
    assert done.returncode == 1, done
    assert time.monotonic() - started >= 1.0
    err = done.stderr.decode()
    assert "edgenode: not starting: cannot read the domains from etcd" in err
    assert dead in err and "no cache file" in err and "Traceback" not in err


# --------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------

NAMES = [f"p{n}.fleet.test" for n in range(4)]
OPS = st.lists(
    st.tuples(
        st.sampled_from(NAMES),
        st.sampled_from(["a.test", "b.test", "bad", "delete"]),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS, grouped=st.booleans())
def test_every_edge_ends_on_exactly_the_set_in_etcd(
    fleet: Fleet, ops: list[tuple[str, str]], grouped: bool
) -> None:
    """Random writes (valid, invalid) and deletes, one transaction each or all in one:
    every edge ends with, for each name, the last valid document since its last delete,
    which for every valid document in etcd is exactly etcd's."""
    write(fleet.etcd, dict.fromkeys(NAMES))  # a clean slate for this example
    all_edges(fleet, lambda e: not set(NAMES) & set(domains_of(e)), "the clean slate", 5)

    def document(what: str) -> str | None:
        if what == "delete":
            return None
        return bad_domain(fleet.origin) if what == "bad" else domain(fleet.origin, what)

    if grouped:  # one transaction: the last write to each name is the one etcd keeps
        last = dict(ops)
        writes = [{name: document(what) for name, what in last.items()}]
        expected = {n: w for n, w in last.items() if w not in ("bad", "delete")}
    else:
        writes = [{name: document(what)} for name, what in ops]
        expected = {}  # name -> the SNI of its last valid document since its last delete
        for name, what in ops:
            if what == "delete":
                expected.pop(name, None)
            elif what != "bad":
                expected[name] = what
    for change in writes:
        write(fleet.etcd, change)
    revision = fleet.etcd.revision()

    def converged(edge: EdgeProcess) -> bool:
        return cluster_health(edge)["revision"] >= revision and domains_of(edge) == expected

    all_edges(fleet, converged, f"every edge on {expected}", 10)
    in_etcd = {n: d for n, d in etcd_documents(fleet.etcd).items() if n in NAMES}
    for name, document in in_etcd.items():
        if isinstance(document, dict) and document["origins"][0]["port"] != 99999:
            assert expected[name] == document["origin_sni"]["value"]


def domains_of(edge: EdgeProcess) -> dict[str, str | None]:
    """The property's names on `edge`, with their effective SNI."""
    config = admin_json(edge, "/config")
    return {
        name: d["origins"][0]["effective_sni"]
        for name, d in config["domains"].items()
        if name in NAMES
    }


# --------------------------------------------------------------------------
# Workers: the supervisor's one watch
# --------------------------------------------------------------------------


def test_workers_share_the_supervisors_watch(fleet: Fleet, tmp_path: Path) -> None:
    """workers: 2 with cluster: one write reaches both workers (each answers on the new
    SNI), and a worker started later (after a crash) starts on the same domains."""
    edge = EdgeProcess(tmp_path / "workers", fleet.config(workers=2))
    edge.start()
    try:
        wait_until(lambda: all_ready(edge), 30, "both workers ready")
        assert cluster_health(edge)["state"] == "connected"
        write(fleet.etcd, {WWW: domain(fleet.origin, "a.test")})
        wait_until(lambda: effective_sni(edge, WWW) == "a.test", 5, "the supervisor")
        generation = admin_json(edge, "/healthz")["generation"]
        wait_until(lambda: all_ready(edge, generation), 10, "both workers on it")
        assert {vhost(edge) for _ in range(20)} == {"a.test"}

        crashed = admin_json(edge, "/workers")["workers"][0]["pid"]
        os.kill(crashed, signal.SIGKILL)
        wait_until(
            lambda: all_ready(edge, generation) and crashed not in worker_pids(edge),
            30,
            "the replacement worker",
        )
        assert {vhost(edge) for _ in range(20)} == {"a.test"}  # new connections, both workers
        wait_until(lambda: both_served(edge), 5, "requests counted by both workers")
    finally:
        assert edge.stop() == 0
    assert "Traceback" not in edge.log_text()
    write(fleet.etcd, {WWW: domain(fleet.origin, "b.test")})


def both_served(edge: EdgeProcess) -> bool:
    """Whether both workers running now have answered requests (their own counters)."""
    return all(w["requests"] > 0 for w in admin_json(edge, "/workers")["workers"])


def worker_pids(edge: EdgeProcess) -> list[int]:
    return [w["pid"] for w in admin_json(edge, "/workers")["workers"]]


def all_ready(edge: EdgeProcess, generation: int | None = None) -> bool:
    workers = admin_json(edge, "/workers")["workers"]
    return len(workers) == 2 and all(
        w["ready"] and (generation is None or w.get("generation") == generation) for w in workers
    )
