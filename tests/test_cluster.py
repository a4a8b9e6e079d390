"""A fleet edge's domains from etcd (SPEC §9), without etcd: the `cluster` config and one
domain document's validation, the domain book's rules, the cache file, the read at start,
and `ClusterSource` driving the real reload flow on a MemoryReactorClock.

The same against a real etcd and real edges: tests/test_fleet.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from edgenode.config import (
    Config,
    load_domains_file,
    parse_config,
    parse_domain_document,
)
from edgenode.control.cluster import ClusterSource, ClusterStartError, StartPoint, read_start
from edgenode.control.domainset import (
    Document,
    DomainBook,
    DomainSet,
    read_cache,
    write_cache,
)
from edgenode.control.etcd import (
    Batch,
    EtcdError,
    EtcdUnavailable,
    Event,
    KeyValue,
    Snapshot,
)
from edgenode.control.reloading import ConfigFile, Reloader
from edgenode.control.serving import DataPath
from edgenode.errors import ConfigError
from tests.support.memory_edge import RecordingAccessLog
from tests.support.pki import PKI

PREFIX = "/edgenode/"
KEYS = PREFIX + "domains/"


def node_config(tmp_path: Path, tls: dict[str, Any] | None = None, **etcd: Any) -> Config:
    """A fleet edge's node config (no domains) in `tmp_path`."""
    settings = {"endpoints": ["http://127.0.0.1:2379"], **etcd}
    top = {"cluster": {"etcd": settings}, "timeouts": {"connect": 3}, "tls": tls or {}}
    text = json.dumps(top)
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return parse_config(text, base_dir=tmp_path, source=str(path))


def doc(port: int = 80, **settings: Any) -> bytes:
    """A domain document: one plain-HTTP origin on 192.0.2.1:`port`."""
    body = {
        "origin_protocol": "http",
        "origins": [{"address": "192.0.2.1", "port": port}],
        **settings,
    }
    return json.dumps(body).encode()


BAD = doc(port=99999)


def problems_of(call: Callable[[], object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        call()
    return [str(p) for p in info.value.problems]


# --------------------------------------------------------------------------
# Config: cluster.etcd, and one domain document
# --------------------------------------------------------------------------


def test_cluster_config_defaults_and_no_domains(tmp_path: Path) -> None:
    """With cluster.etcd the file needs no domains; the defaults are SPEC §9's."""
    config = node_config(tmp_path)
    assert config.cluster is not None
    etcd = config.cluster.etcd
    assert etcd.endpoints == ("http://127.0.0.1:2379",)
    assert (etcd.prefix, etcd.token_file, etcd.startup_timeout) == (PREFIX, None, 10.0)
    assert etcd.cache_file == tmp_path / "cluster-cache.json"
    assert etcd.domains_prefix == KEYS
    assert dict(config.domains) == {}


def test_cluster_config_problems_name_path_value_and_what_is_accepted(tmp_path: Path) -> None:
    """Every cluster problem at once, in the usual format; domains beside cluster is one."""
    text = """
cluster:
  etcd:
    endpoints: ["https://etcd:2379", "http://etcd:2379/v3", "http://a:1", "http://a:1"]
    prefix: edgenode
    token_file: missing.token
    cache_file: no/such/dir/cache.json
    startup_timeout: -1
    watch: yes
domains:
  www.example.com: {origins: [{address: 192.0.2.1}]}
"""
    found = problems_of(lambda: parse_config(text, base_dir=tmp_path, source="edge.yaml"))
    paths = [p.split(":", 1)[0] for p in found]
    assert paths == [
        "cluster.etcd.watch",
        "cluster.etcd.endpoints[0]",
        "cluster.etcd.endpoints[1]",
        "cluster.etcd.endpoints[3]",
        "cluster.etcd.prefix",
        "cluster.etcd.token_file",
        "cluster.etcd.cache_file",
        "cluster.etcd.startup_timeout",
        "domains",
    ]
    assert "must use http://" in found[1]
    assert "listed twice" in found[3]
    assert "ending in '/'" in found[4]
    assert "must be absent when cluster is set" in found[-1]


def test_a_domain_document_is_validated_like_a_file_entry(tmp_path: Path) -> None:
    """Problems of an etcd document name its key; the key's last segment is the name,
    normalised; the node's timeouts are the defaults; JSON is read strictly."""
    node = node_config(tmp_path)
    domain = parse_domain_document(KEYS + "WWW.Example.COM.", doc(), node)
    assert domain.name == "www.example.com"
    assert domain.timeouts.connect == 3.0  # the node's
    assert problems_of(lambda: parse_domain_document(KEYS + "www.example.com", BAD, node)) == [
        f"etcd:{KEYS}www.example.com.origins[0].port: must be 1..65535, got 99999"
    ]
    assert problems_of(lambda: parse_domain_document(KEYS + "*.example.com", doc(), node)) == [
        f"etcd:{KEYS}*.example.com: '*.example.com' is a wildcard; wildcard domains are not "
        "supported in this version, list each domain name, e.g. 'www.example.com'"
    ]
    twice = b'{"origins": [], "origins": [{"address": "192.0.2.1"}]}'
    assert (
        "duplicate key 'origins'"
        in problems_of(lambda: parse_domain_document(KEYS + "a.example", twice, node))[0]
    )
    for garbage in (b"NaN", b"\xff{}", b"{", b"[]", b"null"):
        assert problems_of(lambda g=garbage: parse_domain_document(KEYS + "a.example", g, node))
    redirect = doc(https_redirect=True)
    assert (
        "no certificate in tls.certificates covers"
        in problems_of(lambda: parse_domain_document(KEYS + "a.example", redirect, node))[0]
    )


def test_domains_file_for_push(tmp_path: Path) -> None:
    """A push file: every rule of check, names normalised, the entry as written as JSON."""
    node = node_config(tmp_path)
    good = tmp_path / "domains.yaml"
    good.write_text(
        "domains:\n"
        "  B.Example.: {origin_protocol: http, origins: [{address: 192.0.2.1, port: 8080}]}\n"
        "  a.example: {origin_sni: {value: x.example}, origins: [{address: 192.0.2.2}]}\n"
    )
    entries = load_domains_file(good, node)
    assert [e.name for e in entries] == ["a.example", "b.example"]
    assert json.loads(entries[1].document) == {
        "origin_protocol": "http",
        "origins": [{"address": "192.0.2.1", "port": 8080}],
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "domains:\n"
        "  a.example: {origins: [{address: 192.0.2.2, port: 0}]}\n"
        "  a.example: {origins: []}\n"
        "listen: tcp:1\n"
    )
    found = problems_of(lambda: load_domains_file(bad, node))
    assert any(p.startswith("domains.a.example: duplicate key") for p in found)
    assert any(p.startswith("listen: unknown key") for p in found)
    empty = tmp_path / "empty.yaml"
    empty.write_text("domains: {}\n")
    assert problems_of(lambda: load_domains_file(empty, node))[0].startswith("domains: no domains")


# --------------------------------------------------------------------------
# The domain book
# --------------------------------------------------------------------------


def book_at(tmp_path: Path, items: dict[str, bytes], revision: int = 10) -> DomainBook:
    book = DomainBook(node_config(tmp_path), PREFIX)
    book.commit(book.snapshot(items, revision))
    return book


def ports(book: DomainBook) -> dict[str, int]:
    return {name: d.origins[0].port for name, d in book.running_domains.items()}


def test_an_invalid_document_keeps_the_previous_settings_or_stays_absent(tmp_path: Path) -> None:
    """A rejected change keeps the domain as it was; a rejected new domain is not served;
    the others of the same batch apply; a later valid document applies."""
    book = book_at(tmp_path, {KEYS + "a.example": doc(81)})
    proposal = book.batch(
        [(KEYS + "a.example", BAD), (KEYS + "b.example", BAD), (KEYS + "c.example", doc(83))], 11
    )
    assert {r.key for r in proposal.rejected} == {KEYS + "a.example", KEYS + "b.example"}
    assert proposal.applied == 1  # c added
    book.commit(proposal)
    assert ports(book) == {"a.example": 81, "c.example": 83}
    assert sorted(book.rejected) == [KEYS + "a.example", KEYS + "b.example"]
    assert book.running.revision == 11

    again = book.batch([(KEYS + "c.example", doc(84))], 12)
    assert again.rejected == ()  # each rejection is reported once
    book.commit(again)
    fixed = book.batch([(KEYS + "a.example", doc(91))], 13)
    book.commit(fixed)
    assert ports(book) == {"a.example": 91, "c.example": 84}
    assert sorted(book.rejected) == [KEYS + "b.example"]


def test_a_delete_removes_the_domain_and_forgets_its_last_valid_document(tmp_path: Path) -> None:
    book = book_at(tmp_path, {KEYS + "a.example": doc(81), KEYS + "b.example": doc(82)})
    book.commit(book.batch([(KEYS + "a.example", None)], 11))
    assert ports(book) == {"b.example": 82}
    book.commit(book.batch([(KEYS + "a.example", BAD)], 12))
    assert ports(book) == {"b.example": 82}  # recreated invalid: absent, not the old one


def test_a_merged_batch_ends_where_separate_batches_do(tmp_path: Path) -> None:
    """valid, valid, invalid in one batch or in three: the second valid one runs."""
    writes = [
        (KEYS + "a.example", doc(81)),
        (KEYS + "a.example", doc(82)),
        (KEYS + "a.example", BAD),
    ]
    together = book_at(tmp_path, {})
    together.commit(together.batch(writes, 14))
    apart = book_at(tmp_path, {})
    for revision, write in enumerate(writes, 12):
        apart.commit(apart.batch([write], revision))
    assert ports(together) == ports(apart) == {"a.example": 82}


def test_a_snapshot_keeps_what_ran_for_an_invalid_document_and_drops_deleted_keys(
    tmp_path: Path,
) -> None:
    """After a compaction: a key now invalid keeps what ran; a key gone is removed."""
    book = book_at(tmp_path, {KEYS + "a.example": doc(81), KEYS + "b.example": doc(82)})
    proposal = book.snapshot({KEYS + "a.example": BAD, KEYS + "c.example": doc(83)}, 20)
    book.commit(proposal)
    assert ports(book) == {"a.example": 81, "c.example": 83}
    assert proposal.applied == 2  # b removed, c added


def test_two_keys_for_one_domain_the_normalised_spelling_wins(tmp_path: Path) -> None:
    """Whatever the order of the writes, every edge picks the same key."""
    book = book_at(tmp_path, {KEYS + "WWW.example.com": doc(81)})
    assert ports(book) == {"www.example.com": 81}
    proposal = book.batch([(KEYS + "www.example.com", doc(82))], 11)
    book.commit(proposal)
    assert ports(book) == {"www.example.com": 82}
    assert [r.key for r in proposal.rejected] == [KEYS + "WWW.example.com"]
    assert "names the same domain as" in proposal.rejected[0].describe()


def test_a_file_reload_that_would_drop_a_running_domain_is_a_config_error(
    tmp_path: Path, pki: PKI
) -> None:
    """A domain valid on the old node config but not on the new one (its https_redirect
    needs a certificate the new file no longer has): the file reload is refused."""
    cert_file, key_file = pki.write(pki.leaf("a.example"), "a-example")
    certificates = {"certificates": [{"cert_file": str(cert_file), "key_file": str(key_file)}]}
    with_certificate = node_config(tmp_path, tls=certificates)
    book = DomainBook(with_certificate, PREFIX)
    book.commit(book.snapshot({KEYS + "a.example": doc(81, https_redirect=True)}, 10))
    assert ports(book) == {"a.example": 81}
    same = book.for_node(node_config(tmp_path, tls=certificates))
    assert list(same.domains) == ["a.example"] and same.applied == 0
    with pytest.raises(ConfigError) as info:
        book.for_node(node_config(tmp_path))
    assert [p.path for p in info.value.problems] == [f"etcd:{KEYS}a.example.https_redirect"]


# --------------------------------------------------------------------------
# The cache file and the read at start
# --------------------------------------------------------------------------


def test_cache_file_round_trip_atomic_and_for_its_prefix_only(tmp_path: Path) -> None:
    path = tmp_path / "cluster-cache.json"
    domain_set = DomainSet(7, PREFIX, {"a.example": Document(KEYS + "a.example", doc().decode())})
    write_cache(path, domain_set)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert json.loads(path.read_text())["domains"]["a.example"]["origins"][0]["port"] == 80
    read = read_cache(path, PREFIX)
    assert (read.revision, read.prefix, list(read.documents)) == (7, PREFIX, ["a.example"])
    assert json.loads(read.documents["a.example"].text) == json.loads(doc())
    with pytest.raises(ValueError, match="prefix '/edgenode/', not '/other/'"):
        read_cache(path, "/other/")
    with pytest.raises(ValueError, match="no cache file"):
        read_cache(tmp_path / "missing.json", PREFIX)
    path.write_text("{half")
    with pytest.raises(ValueError, match="cannot be read"):
        read_cache(path, PREFIX)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def snapshot_of(items: dict[str, bytes], revision: int) -> Snapshot:
    return Snapshot(revision, {k: KeyValue(k, v, revision) for k, v in items.items()})


def test_start_reads_etcd_once(tmp_path: Path) -> None:
    node = node_config(tmp_path)
    asked: list[tuple[Any, ...]] = []

    def read(endpoints: Any, prefix: str, **kwargs: Any) -> Snapshot:
        asked.append((endpoints, prefix))
        return snapshot_of({KEYS + "a.example": doc(), KEYS + "b.example": BAD}, 5)

    start = read_start(node, read=read)
    assert asked == [(("http://127.0.0.1:2379",), KEYS)]
    assert start.snapshot is not None and start.snapshot.revision == 5
    assert list(start.config.domains) == ["a.example"]
    assert len(start.rejected) == 1 and "b.example" in start.rejected[0]


def test_start_without_etcd_uses_the_cache_at_once(tmp_path: Path) -> None:
    node = node_config(tmp_path)
    documents = {"a.example": Document(KEYS + "a.example", doc(81).decode())}
    write_cache(node.cluster.etcd.cache_file, DomainSet(9, PREFIX, documents))  # type: ignore[union-attr]
    time = FakeTime()

    def unreachable(*args: Any, **kwargs: Any) -> Snapshot:
        raise EtcdUnavailable("no etcd endpoint answered: http://127.0.0.1:2379 (refused)")

    start = read_start(node, read=unreachable, clock=time.clock, sleep=time.sleep)
    assert start.snapshot is None and time.now == 0.0
    assert start.book.running.revision == 9 and list(start.config.domains) == ["a.example"]
    assert "from the cache file at revision 9" in start.note


def test_start_without_etcd_or_cache_gives_up_after_startup_timeout(tmp_path: Path) -> None:
    """It keeps trying until startup_timeout, then says which endpoints and which cache."""
    node = node_config(tmp_path, startup_timeout=3)
    time = FakeTime()
    tries: list[float] = []

    def unreachable(*args: Any, **kwargs: Any) -> Snapshot:
        tries.append(time.now)
        raise EtcdUnavailable("no etcd endpoint answered /v3/kv/range: http://127.0.0.1:2379 (x)")

    with pytest.raises(ClusterStartError) as info:
        read_start(node, read=unreachable, clock=time.clock, sleep=time.sleep)
    assert len(tries) > 3 and time.now == pytest.approx(3.0)
    message = str(info.value)
    assert "within startup_timeout (3s)" in message and "http://127.0.0.1:2379" in message
    assert str(tmp_path / "cluster-cache.json") in message

    def refused(*args: Any, **kwargs: Any) -> Snapshot:
        raise EtcdError("etcd at http://127.0.0.1:2379 refused /v3/kv/range (HTTP 401): x")

    time.now = 0.0
    with pytest.raises(ClusterStartError, match="HTTP 401"):
        read_start(node, read=refused, clock=time.clock, sleep=time.sleep)
    assert time.now == 0.0  # a refusal is not waited for


# --------------------------------------------------------------------------
# ClusterSource: the follower's deliveries through the real reload flow
# --------------------------------------------------------------------------


class FakeWatch:
    def __init__(self, on_batch: Callable[[Batch], None], on_created: Any) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.on_batch = on_batch
        self.on_created = on_created

    def cancel(self) -> None:
        if not self.done.called:
            self.done.callback(None)


class FakeEtcd:
    """A PrefixSource that answers a range with `items` and hands out watches."""

    endpoint = "http://127.0.0.1:2379"

    def __init__(self, items: dict[str, bytes], revision: int) -> None:
        self.items, self.revision = items, revision
        self.watches: list[tuple[int, FakeWatch]] = []
        self.closed = False

    async def range_prefix(self, prefix: str) -> Snapshot:
        return snapshot_of(self.items, self.revision)

    def watch_prefix(
        self, prefix: str, start_revision: int, on_batch: Any, *, on_created: Any = None
    ) -> FakeWatch:
        watch = FakeWatch(on_batch, on_created)
        self.watches.append((start_revision, watch))
        return watch

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    def put(self, revision: int, *changes: tuple[str, bytes | None]) -> None:
        """Deliver one batch on the current watch."""
        events = tuple(
            Event("put" if v is not None else "delete", k, v, revision) for k, v in changes
        )
        self.watches[-1][1].on_batch(Batch(revision, events))


def running_source(
    tmp_path: Path, items: dict[str, bytes], revision: int = 5
) -> tuple[ClusterSource, DataPath, FakeEtcd, CollectorRegistry]:
    node = node_config(tmp_path)
    assert node.cluster is not None
    start = read_start(node, read=lambda *a, **k: snapshot_of(items, revision))
    etcd = FakeEtcd(items, revision)
    reactor = MemoryReactorClock()
    source = ClusterSource(reactor, etcd, node.cluster.etcd, start, text="(text)")
    data = DataPath(
        source.config, reactor, process="single", generation=1, access_log=RecordingAccessLog()
    )
    file_source, target = source.file_source(ConfigFile(node.source, {})), source.target(data)
    reloader = Reloader(data.holder, data.monitor, file_source, target)
    registry = data.monitor.registry
    source.attach(reloader, registry)
    source.start()
    etcd.watches[-1][1].on_created(revision)
    return source, data, etcd, registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_each_batch_is_one_generation_and_unchanged_routes_keep_their_pool_keys(
    tmp_path: Path,
) -> None:
    """A batch of two changes is one new generation; the other domain's routes keep their
    pool keys (its pooled connections stay); the cache file follows."""
    items = {KEYS + "a.example": doc(81), KEYS + "b.example": doc(82)}
    source, data, etcd, registry = running_source(tmp_path, items)
    assert etcd.watches[0][0] == 6  # from the read's revision + 1
    before = data.holder.current
    etcd.put(7, (KEYS + "a.example", doc(91)), (KEYS + "c.example", doc(83)))
    after = data.holder.current
    assert after.generation == 2
    assert sorted(after.domains) == ["a.example", "b.example", "c.example"]
    assert (
        after.domains["b.example"].routes[0].pool_key
        == before.domains["b.example"].routes[0].pool_key
    )
    assert source.health() == {
        "state": "connected",
        "revision": 7,
        "last_error": None,
        "rejected": [],
    }
    assert source.domains_source()["revision"] == 7
    assert sample(registry, "edgenode_cluster_updates_total", result="applied") == 2
    assert sample(registry, "edgenode_cluster_revision") == 7
    assert sample(registry, "edgenode_cluster_connected") == 1
    cached = read_cache(tmp_path / "cluster-cache.json", PREFIX)
    assert cached.revision == 7 and sorted(cached.documents) == [
        "a.example",
        "b.example",
        "c.example",
    ]


def test_a_rejected_document_is_visible_and_counted_and_changes_nothing(tmp_path: Path) -> None:
    source, data, etcd, registry = running_source(tmp_path, {KEYS + "a.example": doc(81)})
    etcd.put(6, (KEYS + "a.example", BAD))
    assert data.holder.current.generation == 1  # nothing to swap
    health = source.health()
    assert health["revision"] == 6 and health["rejected"] == [KEYS + "a.example"]
    assert health["last_error"].startswith(
        f"{KEYS}a.example rejected: etcd:{KEYS}a.example.origins"
    )
    assert sample(registry, "edgenode_cluster_updates_total", result="rejected") == 1
    etcd.put(7, (KEYS + "a.example", None))
    assert list(data.holder.current.domains) == [] and source.health()["last_error"] is None


def test_a_file_reload_keeps_the_cluster_domains(tmp_path: Path) -> None:
    """SIGHUP / POST /reload: node settings from the file, domains from the cluster."""
    source, data, etcd, _ = running_source(tmp_path, {KEYS + "a.example": doc(81)})
    config_path = tmp_path / "edge.yaml"
    settings = json.loads(config_path.read_text())
    settings["timeouts"]["connect"] = 4
    config_path.write_text(json.dumps(settings))
    result = source_reload(data, source)
    assert result.ok, result.errors
    runtime = data.holder.current
    assert list(runtime.domains) == ["a.example"]
    assert runtime.domains["a.example"].config.timeouts.connect == 4.0
    etcd.put(6, (KEYS + "b.example", doc(82)))  # an etcd change keeps the new file settings
    assert data.holder.current.config.timeouts.connect == 4.0

    settings["domains"] = {"x.example": {"origins": [{"address": "192.0.2.9"}]}}
    config_path.write_text(json.dumps(settings))
    result = source_reload(data, source)
    assert not result.ok and result.errors[0]["path"] == "domains"


def source_reload(data: DataPath, source: ClusterSource) -> Any:
    reloader = source._reloader
    assert reloader is not None
    outcome: list[Any] = []
    reloader.reload("test").addCallback(outcome.append)
    return outcome[0]


def test_stop_stops_following_and_closes_the_client(tmp_path: Path) -> None:
    source, _, etcd, _ = running_source(tmp_path, {})
    source.stop()
    assert etcd.closed and etcd.watches[-1][1].done.called


def test_start_point_from_the_cache_is_followed_by_a_fresh_read(tmp_path: Path) -> None:
    """An edge started on its cache reads etcd again (a snapshot) before watching."""
    node = node_config(tmp_path)
    assert node.cluster is not None
    documents = {"a.example": Document(KEYS + "a.example", doc(81).decode())}
    write_cache(node.cluster.etcd.cache_file, DomainSet(9, PREFIX, documents))

    def unreachable(*args: Any, **kwargs: Any) -> Snapshot:
        raise EtcdUnavailable("down")

    start: StartPoint = read_start(node, read=unreachable)
    etcd = FakeEtcd({KEYS + "b.example": doc(82)}, 12)
    reactor = MemoryReactorClock()
    source = ClusterSource(reactor, etcd, node.cluster.etcd, start, text="")
    data = DataPath(
        source.config, reactor, process="single", generation=1, access_log=RecordingAccessLog()
    )
    reloader = Reloader(
        data.holder,
        data.monitor,
        source.file_source(ConfigFile(node.source, {})),
        source.target(data),
    )
    source.attach(reloader, data.monitor.registry)
    assert source.health()["state"] == "disconnected" and source.health()["revision"] == 9
    source.start()
    assert list(data.holder.current.domains) == ["b.example"]
    assert etcd.watches[-1][0] == 13


def test_check_says_where_a_fleet_edge_gets_its_domains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edgenode check` on a fleet edge's file: valid without domains, and says so."""
    from edgenode.tools.cli import main

    node_config(tmp_path)
    assert main(["check", str(tmp_path / "edge.yaml")]) == 0
    out = capsys.readouterr().out
    assert "domains from etcd http://127.0.0.1:2379 under /edgenode/domains/" in out


def test_changing_the_etcd_settings_is_a_restart_not_a_silent_change(tmp_path: Path) -> None:
    """The watch is set up at start: a reload that names another etcd or prefix must
    say it needs a restart (and keeps following the old one) rather than look applied."""
    from edgenode.config import parse_config
    from edgenode.runtime import config_diff

    def node(prefix: str) -> str:
        return (
            "cluster:\n  etcd:\n    endpoints: ['http://127.0.0.1:2379']\n"
            f"    prefix: '{prefix}'\n"
        )

    old = parse_config(node("/edgenode/"), base_dir=tmp_path)
    new = parse_config(node("/other/"), base_dir=tmp_path)
    diff = config_diff(old, new)
    assert diff["restart_required"] == ["cluster.etcd.prefix: /edgenode/ -> /other/"]
    assert diff["settings"] == []
