"""`edgenode push` (SPEC §9 "Writing") against a real etcd: the command line as an operator
runs it (a subprocess), and two pushes interleaved on purpose (in the reactor thread),
since two real processes started together usually do not overlap at all.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from edgenode.config import load_config, load_domains_file
from edgenode.control.etcd import EtcdClient, Snapshot
from edgenode.tools.push import push
from tests.support.etcd import EtcdServer, started
from tests.support.net import LOOPBACK, free_port
from tests.support.origin import in_reactor


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = started(EtcdServer(tmp_path_factory.mktemp("push-etcd")))
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/push-{uuid.uuid4().hex[:8]}/"


def node_file(tmp_path: Path, endpoint: str, prefix: str) -> Path:
    path = tmp_path / "edge.yaml"
    etcd = {"endpoints": [endpoint], "prefix": prefix}
    path.write_text(json.dumps({"cluster": {"etcd": etcd}}))
    return path


def domains_file(tmp_path: Path, domains: dict[str, Any], name: str = "domains.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"domains": domains}))
    return path


def origin(port: int = 443, **settings: Any) -> dict[str, Any]:
    return {"origins": [{"address": "192.0.2.10", "port": port}], **settings}


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgenode.tools.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored(etcd: EtcdServer, prefix: str) -> dict[str, tuple[Any, int]]:
    """name -> (document, mod_revision) under <prefix>domains/."""
    keys = prefix + "domains/"
    end = keys[:-1] + chr(ord(keys[-1]) + 1)
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    answer = etcd.call("/v3/kv/range", {"key": b64(keys), "range_end": b64(end)})
    return {
        base64.b64decode(kv["key"]).decode()[len(keys) :]: (
            json.loads(base64.b64decode(kv["value"])),
            int(kv["mod_revision"]),
        )
        for kv in answer.get("kvs", [])
    }


def test_push_writes_one_transaction_prints_the_diff_and_prunes(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    """Added, changed, kept (without --prune), removed (with it), and nothing to do."""
    node = node_file(tmp_path, etcd.endpoint, prefix)
    first = domains_file(tmp_path, {"A.example.": origin(), "b.example": origin(8443)})
    done = cli("push", "--config", node, first)
    assert done.returncode == 0, done.stderr
    assert "  added    a.example\n  added    b.example\n" in done.stdout
    assert "wrote 2 changes in one transaction" in done.stdout
    written = stored(etcd, prefix)
    assert written["a.example"][0] == origin()  # as written, under its normalised name
    assert written["a.example"][1] == written["b.example"][1]  # one transaction

    second = domains_file(tmp_path, {"b.example": origin(9443), "c.example": origin()}, "2.yaml")
    done = cli("push", "--config", node, second)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "  added    c.example" in lines and "  changed  b.example" in lines
    assert "  kept     a.example (not in the file; --prune deletes it)" in lines
    assert sorted(stored(etcd, prefix)) == ["a.example", "b.example", "c.example"]

    done = cli("push", "--config", node, second, "--prune")
    assert done.returncode == 0, done.stderr
    assert "  removed  a.example" in done.stdout and "  2 unchanged" in done.stdout
    assert sorted(stored(etcd, prefix)) == ["b.example", "c.example"]

    done = cli("push", "--config", node, second, "--prune")
    assert done.returncode == 0 and "nothing to write" in done.stdout


def test_push_with_an_invalid_file_prints_every_problem_and_writes_nothing(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    node = node_file(tmp_path, etcd.endpoint, prefix)
    before = etcd.revision()
    bad = domains_file(
        tmp_path,
        {
            "good.example": origin(),
            "*.example": origin(),
            "port.example": origin(70000),
            "sni.example": origin(origin_sni={"value": "192.0.2.1"}),
        },
    )
    done = cli("push", "--config", node, bad)
    assert done.returncode == 1
    err = done.stderr
    assert "has 3 problems" in err
    assert "domains.*.example: '*.example' is a wildcard" in err
    assert "domains.port.example.origins[0].port: must be 1..65535, got 70000" in err
    assert "domains.sni.example.origin_sni.value" in err
    assert "nothing written" in err
    assert etcd.revision() == before and stored(etcd, prefix) == {}


def test_push_needs_a_fleet_config_and_a_reachable_etcd(tmp_path: Path, prefix: str) -> None:
    """No cluster.etcd in the config: exit 2. etcd unreachable: exit 2, naming it."""
    domains = domains_file(tmp_path, {"a.example": origin()})
    plain = tmp_path / "plain.yaml"
    plain.write_text(json.dumps({"domains": {"a.example": origin()}}))
    done = cli("push", "--config", plain, domains)
    assert done.returncode == 2 and "has no cluster.etcd" in done.stderr

    dead = f"http://{LOOPBACK}:{free_port()}"
    done = cli("push", "--config", node_file(tmp_path, dead, prefix), domains, "--timeout", "1")
    assert done.returncode == 2
    assert f"no etcd endpoint answered /v3/kv/range: {dead} (connection refused)" in done.stderr


def test_two_concurrent_pushes_one_wins_and_the_other_fails_cleanly(
    etcd: EtcdServer, prefix: str, tmp_path: Path, reactor_thread: Any, capsys: Any
) -> None:
    """Push B reads etcd; push A runs whole (read, write); then B writes: B's transaction
    finds etcd changed since its read and writes nothing, with a clear message."""
    node = load_config(node_file(tmp_path, etcd.endpoint, prefix))
    etcd.put(prefix + "domains/shared.example", json.dumps(origin()))
    entries_a = load_domains_file(
        domains_file(tmp_path, {"a.example": origin(), "shared.example": origin(1)}, "a.yaml"),
        node,
    )
    entries_b = load_domains_file(
        domains_file(tmp_path, {"b.example": origin(), "shared.example": origin(2)}, "b.yaml"),
        node,
    )
    codes: dict[str, int] = {}

    class ReadThenLetAWin(EtcdClient):
        async def range_prefix(self, prefix: str) -> Snapshot:
            snapshot = await super().range_prefix(prefix)
            other = EtcdClient(reactor_thread, [etcd.endpoint])
            codes["a"] = await push(other, node, entries_a)
            return snapshot

    def push_b() -> Deferred[int]:
        client = ReadThenLetAWin(reactor_thread, [etcd.endpoint])
        return Deferred.fromCoroutine(push(client, node, entries_b))

    codes["b"] = in_reactor(push_b)
    err = capsys.readouterr().err
    assert codes == {"a": 0, "b": 1}
    assert (
        f"edgenode: etcd changed under {prefix}domains/ since it was read (another push?); "
        "nothing was written; run push again"
    ) in err
    documents = {name: doc for name, (doc, _) in stored(etcd, prefix).items()}
    assert documents == {"a.example": origin(), "shared.example": origin(1)}


def test_probe_on_a_fleet_config_reads_the_domain_from_etcd(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    """`edgenode probe` on a fleet edge's config finds the domain where the edge does (in
    etcd) and probes its origin: here a closed port, so the verdict is a connect failure,
    not "unknown domain"."""
    node = node_file(tmp_path, etcd.endpoint, prefix)
    closed = free_port()
    pushed = cli("push", "--config", node, domains_file(tmp_path, {"p.example": origin()}))
    assert pushed.returncode == 0, pushed.stderr
    doc = {"origins": [{"address": LOOPBACK, "port": closed}]}
    assert cli("push", "--config", node, domains_file(tmp_path, {"p.example": doc})).returncode == 0
    done = cli("probe", "p.example", "--config", node, "--timeout", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{LOOPBACK}:{closed}" in done.stdout
    assert "origin_connect_failed" in done.stdout
