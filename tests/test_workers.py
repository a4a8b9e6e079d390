"""Worker processes through the real twistd: `workers: 2` shares the port, restarts, reloads,
signals, summed metrics, one access log, and a clean stop.

Which process served a request is never in a response or the access log. The supervisor's
GET /workers reports each worker's own request counter (its prometheus multiprocess file),
and the tests check that those pids are children of the edge process, so "both workers
served" is counted on the server side, by the workers themselves. A worker publishes its
counts once a second, so the tests wait for all of them (`_published`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from edgenode.accesslog import parse_line
from edgenode.control.service import Options, makeService
from edgenode.control.supervisor import bind_listeners
from edgenode.control.worker import ControlChannel
from edgenode.control.workerpool import STABLE_AFTER, WorkerPool, WorkerProcess
from edgenode.endpoints import parse_server_endpoint
from tests.support.edge import EdgeProcess, Response
from tests.support.net import LOOPBACK, free_port
from tests.support.origin import TLSOrigin
from tests.support.pki import PKI

HOST = "shop.test"


def _config(pki: PKI, origin: TLSOrigin, sni: str = "a.test", workers: int = 2) -> dict[str, Any]:
    return {
        "workers": workers,
        "tls": {"ca_file": str(pki.ca_file)},
        "domains": {
            HOST: {
                "origin_sni": {"enabled": True, "value": sni},
                "origins": [{"address": "127.0.0.1", "port": origin.port}],
            }
        },
    }


def _until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        time.sleep(0.05)


def _workers(edge: EdgeProcess) -> list[dict[str, Any]]:
    r = edge.admin_request("GET", "/workers")
    assert r.status == 200, r.text
    return r.json()["workers"]


def _ready(edge: EdgeProcess, generation: int = 1, n: int = 2) -> list[dict[str, Any]]:
    """Wait until all `n` workers are up and confirmed `generation`; return /workers."""

    def check() -> list[dict[str, Any]] | None:
        workers = _workers(edge)
        done = len(workers) == n and all(
            w["ready"] and w["generation"] == generation for w in workers
        )
        return workers if done else None

    return _until(check, f"{n} workers ready on generation {generation}")  # type: ignore[no-any-return]


def _requests(edge: EdgeProcess, n: int, threads: int = 4, path: str = "/") -> list[Response]:
    """`n` requests, each on a new connection, from `threads` client threads."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: edge.request("GET", f"{path}?i={i}", host=HOST), range(n)))


def _served(edge: EdgeProcess) -> dict[int, int]:
    """Requests answered so far, by worker pid, as far as the workers published them."""
    return {w["pid"]: w["requests"] for w in _workers(edge) if w["pid"] is not None}


PUBLISHED_WITHIN = 5.0  # seconds: workers publish their counts once a second


def _published(edge: EdgeProcess, total: int) -> dict[int, int]:
    """`_served`, once the running workers have published `total` requests between them."""

    def check() -> dict[int, int] | None:
        served = _served(edge)
        return served if sum(served.values()) == total else None

    return _until(check, f"{total} requests published", PUBLISHED_WITHIN)  # type: ignore[no-any-return]


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample_sum(families: dict[str, Any], family: str, sample: str) -> float:
    """The sum of `sample` over every label set of `family` (0 if it is not there)."""
    found = families.get(family)
    return sum(s.value for s in found.samples if s.name == sample) if found else 0.0


def _metrics_counting(edge: EdgeProcess, requests: int) -> Response:
    """GET /metrics, once the workers have published `requests` requests and durations."""

    def check() -> Response | None:
        r = edge.admin_request("GET", "/metrics")
        families = _families(r.text)
        counted = _sample_sum(families, "edgenode_requests", "edgenode_requests_total")
        timed = _sample_sum(
            families,
            "edgenode_request_duration_seconds",
            "edgenode_request_duration_seconds_count",
        )
        return r if r.status == 200 and counted == timed == requests else None

    return _until(check, f"{requests} requests in /metrics", PUBLISHED_WITHIN)  # type: ignore[no-any-return]


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "(Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        # Gone before the open (ENOENT) or between the open and the read (ESRCH).
        return ""
    return "(" + stat.rsplit(")", 1)[1].split()[0]


def _rewrite(edge: EdgeProcess, config: dict[str, Any]) -> None:
    edge.config.update(config)
    edge.config_path.write_text(yaml.safe_dump(edge.config, sort_keys=False))


def _whole_log(edge: EdgeProcess) -> str:
    """The twistd log, with the part SIGUSR1 rotated away (twistd rotates its own log)."""
    rotated = edge.log_path.with_name(edge.log_path.name + ".1")
    return (rotated.read_text() if rotated.exists() else "") + edge.log_text()


def _access_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of an access log file; each must be whole JSON (a torn line fails)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n"), f"{path} ends in a partial line"
    records = []
    for line in raw.splitlines():
        record = parse_line(line)
        assert record is not None, f"not a whole access-log line: {line[:200]!r}"
        records.append(record)
    return records


def test_both_workers_serve_new_connections(edge_factory, pki, origin) -> None:
    """Two workers, children of the edge, both answer requests arriving on new connections."""
    edge = edge_factory(_config(pki, origin))
    workers = _ready(edge)
    assert [w["worker"] for w in workers] == [1, 2]
    for worker in workers:
        assert _parent_of(worker["pid"]) == edge.pid
    responses = _requests(edge, 200)
    assert [r.status for r in responses] == [200] * 200
    assert {r.json()["vhost"] for r in responses} == {"a.test"}
    served = _published(edge, 200)
    assert sum(served.values()) == 200
    assert all(n > 0 for n in served.values()), served
    health = edge.admin_request("GET", "/healthz", token=None).json()
    assert health == {"status": "ok", "generation": 1, "workers": {"configured": 2, "ready": 2}}


def test_a_killed_worker_is_restarted_and_requests_keep_succeeding(
    edge_factory, pki, origin
) -> None:
    """kill -9 of a worker: requests still succeed, and a new worker takes its place."""
    edge = edge_factory(_config(pki, origin))
    victim = _ready(edge)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    responses = _requests(edge, 100)
    assert [r.status for r in responses] == [200] * 100
    _until(lambda: not _alive(victim), "the killed worker reaped")

    def replaced() -> list[dict[str, Any]] | None:
        workers = _workers(edge)
        first = workers[0]
        ok = first["pid"] not in (None, victim) and first["ready"] and first["restarts"] == 1
        return workers if ok else None

    workers = _until(replaced, "worker 1 restarted")
    assert _parent_of(workers[0]["pid"]) == edge.pid
    assert f"worker 1 (pid {victim}) was killed by SIGKILL; restarting it in" in edge.log_text()
    before = _published(edge, 100)  # the victim died before it could answer any
    assert [r.status for r in _requests(edge, 100)] == [200] * 100
    after = _published(edge, 200)
    assert after[workers[0]["pid"]] - before.get(workers[0]["pid"], 0) > 0


def test_sighup_reload_reaches_every_worker(edge_factory, pki, origin) -> None:
    """After SIGHUP changes the SNI, every worker sends the new SNI on new connections."""
    edge = edge_factory(_config(pki, origin, sni="a.test"))
    _ready(edge)
    assert {r.json()["sni"] for r in _requests(edge, 20)} == {"a.test"}
    _rewrite(edge, _config(pki, origin, sni="b.test"))
    edge.signal(signal.SIGHUP)
    _ready(edge, generation=2)
    assert edge.admin_request("GET", "/healthz", token=None).json()["generation"] == 2
    handshakes_before = len(origin.handshakes)
    before = _published(edge, 20)
    responses = _requests(edge, 100)
    assert [(r.status, r.json()["sni"], r.json()["vhost"]) for r in responses] == [
        (200, "b.test", "b.test")
    ] * 100
    after = _published(edge, 120)
    assert all(after[pid] > before[pid] for pid in after), (before, after)
    new_handshakes = origin.handshakes[handshakes_before:]
    assert len(new_handshakes) >= 2  # each worker has its own origin pool
    assert {h["sni"] for h in new_handshakes} == {"b.test"}
    ids = {r.header("X-Edge-Request-Id") for r in responses}
    records = edge.access_records(120, timeout=10)  # each worker flushes its own buffer
    assert {r["generation"] for r in records if r["request_id"] in ids} == {2}


def test_bad_config_reload_is_422_and_no_worker_changes(edge_factory, pki, origin) -> None:
    """POST /reload of a bad config: 422 with the problems, and no worker is touched."""
    edge = edge_factory(_config(pki, origin))
    workers = _ready(edge)
    bad = _config(pki, origin)
    bad["domains"][HOST]["origin_sni"]["value"] = "*.example.com"
    _rewrite(edge, bad)
    r = edge.admin_request("POST", "/reload")
    assert r.status == 422
    body = r.json()
    assert body["generation"] == 1
    assert [e["path"] for e in body["errors"]] == [f"domains.{HOST}.origin_sni.value"]
    assert "workers" not in body
    now = _workers(edge)
    assert [(w["pid"], w["generation"], w["restarts"]) for w in now] == [
        (w["pid"], 1, 0) for w in workers
    ]
    assert "telling" not in edge.log_text()  # the workers never heard of it
    assert {x.json()["sni"] for x in _requests(edge, 20)} == {"a.test"}


def test_admin_reload_waits_for_every_worker(edge_factory, pki, origin) -> None:
    """POST /reload answers 200 once every worker confirmed the new generation."""
    edge = edge_factory(_config(pki, origin))
    workers = _ready(edge)
    _rewrite(edge, _config(pki, origin, sni="b.test"))
    r = edge.admin_request("POST", "/reload")
    assert r.status == 200, r.text
    body = r.json()
    assert body["generation"] == 2
    assert "origin_sni.value: a.test -> b.test" in body["changed"]["changed"][HOST]
    assert body["workers"] == [
        {"worker": w["worker"], "pid": w["pid"], "ok": True, "generation": 2} for w in workers
    ]


def test_a_worker_that_does_not_answer_fails_the_reload_and_is_replaced(
    edge_factory, pki, origin
) -> None:
    """A stopped worker makes POST /reload fail (500, naming it); it is replaced."""
    edge = edge_factory(_config(pki, origin))
    stuck, other = (w["pid"] for w in _ready(edge))
    _rewrite(edge, _config(pki, origin, sni="b.test"))
    os.kill(stuck, signal.SIGSTOP)
    try:
        r = edge.admin_request("POST", "/reload", timeout=30)
    finally:
        # The supervisor may kill it any moment now: between a check and a kill as well.
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    assert r.status == 500, r.text
    body = r.json()
    assert body["generation"] == 2
    assert [e["path"] for e in body["errors"]] == ["workers[1]"]
    assert "did not answer within" in body["errors"][0]["message"]
    assert body["workers"][1] == {"worker": 2, "pid": other, "ok": True, "generation": 2}
    workers = _ready(edge, generation=2)
    assert workers[0]["pid"] != stuck
    _until(lambda: not _alive(stuck), "the stuck worker killed")
    assert {x.json()["sni"] for x in _requests(edge, 20)} == {"b.test"}


def test_changing_workers_needs_a_restart(edge_factory, pki, origin) -> None:
    """A reload that changes `workers` says it needs a restart and keeps the workers."""
    edge = edge_factory(_config(pki, origin))
    _ready(edge)
    _rewrite(edge, {"workers": 3})
    r = edge.admin_request("POST", "/reload")
    assert r.status == 200, r.text
    assert r.json()["restart_required"] == ["workers: 2 -> 3"]
    assert len(_ready(edge, generation=2)) == 2


def test_metrics_are_the_sum_over_workers(edge_factory, pki, origin) -> None:
    """/metrics on the supervisor counts every request once, whichever worker served it."""
    edge = edge_factory(_config(pki, origin))
    _ready(edge)
    assert [r.status for r in _requests(edge, 150)] == [200] * 150
    served = _published(edge, 150)
    assert all(n > 0 for n in served.values()), served
    r = _metrics_counting(edge, 150)
    assert r.status == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    types = [line.split()[2] for line in r.text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a metric family appears twice"
    requests = families["edgenode_requests"].samples
    assert sum(s.value for s in requests if s.name == "edgenode_requests_total") == 150
    durations = families["edgenode_request_duration_seconds"].samples
    assert [s.value for s in durations if s.name.endswith("_count")] == [150]
    assert [s.value for s in families["edgenode_config_generation"].samples] == [1]
    open_connections = lambda: edge.admin_request("GET", "/metrics").text  # noqa: E731
    _until(
        lambda: "edgenode_origin_connections_open{" in open_connections(),
        "the workers' pooled connections in /metrics",
    )


def test_a_sigtermed_worker_loses_none_of_its_counts(edge_factory, pki, origin) -> None:
    """Requests answered just before a worker's SIGTERM still count: it publishes on its way
    out, after its last request, so /metrics has them all once it has exited."""
    edge = edge_factory(_config(pki, origin))
    pids = [w["pid"] for w in _ready(edge)]
    assert [r.status for r in _requests(edge, 60)] == [200] * 60
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    _until(lambda: not any(_alive(pid) for pid in pids), "both workers exited")
    # No waiting from here: the workers are gone, so their files are final.
    families = _families(edge.admin_request("GET", "/metrics").text)
    assert _sample_sum(families, "edgenode_requests", "edgenode_requests_total") == 60
    count = "edgenode_request_duration_seconds_count"
    assert _sample_sum(families, "edgenode_request_duration_seconds", count) == 60
    attempts = _sample_sum(families, "edgenode_origin_attempts", "edgenode_origin_attempts_total")
    assert attempts == 60


def test_access_log_lines_stay_whole_under_load(edge_factory, pki, origin) -> None:
    """Both workers append to one access log: every line whole, every request id once."""
    edge = edge_factory(_config(pki, origin))
    _ready(edge)
    pad = "p" * 3000  # long lines: a flush is many of them in one write
    responses = _requests(edge, 400, threads=8, path=f"/{pad}")
    assert {r.status for r in responses} == {200}
    assert all(n > 0 for n in _published(edge, 400).values())
    sent = {r.header("X-Edge-Request-Id") for r in responses}
    assert len(sent) == 400

    def logged() -> list[dict[str, Any]] | None:
        records = _access_lines(edge.access_log_path)
        return records if len(records) >= 400 else None

    ids = [record["request_id"] for record in _until(logged, "400 access log lines")]
    assert len(ids) == len(set(ids)) == 400
    assert set(ids) == sent


def test_sigusr1_reopens_every_workers_access_log(edge_factory, pki, origin) -> None:
    """After `mv access.log access.log.1` and SIGUSR1, every worker writes the new file."""
    edge = edge_factory(_config(pki, origin))
    _ready(edge)
    first = {r.header("X-Edge-Request-Id") for r in _requests(edge, 50)}
    rotated = edge.access_log_path.with_name("access.log.1")
    edge.access_log_path.rename(rotated)
    edge.signal(signal.SIGUSR1)
    _until(
        lambda: _whole_log(edge).count("access log reopened") == 2,
        "both workers reopened the access log",
    )
    before = _published(edge, 50)
    second = {r.header("X-Edge-Request-Id") for r in _requests(edge, 100)}
    after = _published(edge, 150)
    assert all(after[pid] > before[pid] for pid in after)
    new = _until(
        lambda: len(_access_lines(edge.access_log_path)) >= 100 and edge.access_log_path,
        "100 lines in the new access log",
    )
    assert {r["request_id"] for r in _access_lines(new)} == second
    assert {r["request_id"] for r in _access_lines(rotated)} == first


def test_sigterm_stops_every_worker_and_exits_0(edge_factory, pki, origin) -> None:
    """SIGTERM to the supervisor: every worker stops, the edge exits 0, the port closes."""
    edge = edge_factory(_config(pki, origin))
    pids = [w["pid"] for w in _ready(edge)]
    assert [r.status for r in _requests(edge, 20)] == [200] * 20
    assert edge.stop() == 0
    assert [pid for pid in pids if _alive(pid)] == []
    with socket.socket() as sock:
        assert sock.connect_ex((LOOPBACK, edge.port)) != 0
    assert "worker 1" in edge.log_text() and "exited with status 0" in edge.log_text()


def test_workers_stop_when_the_supervisor_is_killed(edge_factory, pki, origin) -> None:
    """kill -9 of the supervisor: the workers see their control channel close and exit."""
    edge = edge_factory(_config(pki, origin))
    pids = [w["pid"] for w in _ready(edge)]
    assert edge.pid is not None
    os.kill(edge.pid, signal.SIGKILL)
    assert edge.stop() == -signal.SIGKILL
    _until(lambda: not any(_alive(pid) for pid in pids), "the orphaned workers gone")


def test_workers_need_a_tcp_listen_endpoint(tmp_path, pki, capsys) -> None:
    """With workers > 1, a listen endpoint the supervisor cannot share refuses to start."""
    path = tmp_path / "edgenode.yaml"
    domain = {"origins": [{"address": "127.0.0.1", "port": free_port()}]}
    path.write_text(yaml.safe_dump({"domains": {HOST: domain}}))
    options = Options()
    options.parseOptions(
        ["--config", str(path), "--workers", "2", "--listen", f"unix:{tmp_path}/edge.sock"]
    )
    with pytest.raises(SystemExit) as exited:
        makeService(options)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "not starting" in err
    assert "workers: 2 workers share a listener that the supervisor binds itself" in err
    assert "'tcp:' or 'tcp6:'" in err


@pytest.mark.parametrize("value", ["0", "-1", "many", "1025"])
def test_workers_option_is_validated(value: str) -> None:
    """--workers takes 1..1024 or auto; anything else is a usage error."""
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="--workers must be a number of worker processes"):
        Options().parseOptions(["--config", "x.yaml", "--workers", value])


# --- In memory: the control channel and the restart policy -------------------------------------


class _FakeProcessTransport:
    """What WorkerProcess uses of a process transport: pid, writeToChild, signalProcess."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[bytes] = []
        self.signals: list[int] = []

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append(data)

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)


class _SpawningClock(Clock):
    """A Clock that also "spawns" processes: each gets a fake transport and the next pid."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProcess, dict[int, Any]]] = []

    def spawnProcess(self, proto: WorkerProcess, executable: str, args: Any, **kw: Any) -> None:
        proto.makeConnection(_FakeProcessTransport(1000 + len(self.spawned)))  # type: ignore[arg-type]
        self.spawned.append((proto, kw["childFDs"]))


def _died(worker: WorkerProcess, signum: int = signal.SIGKILL) -> None:
    worker.processEnded(Failure(ProcessTerminated(signal=signum)))


def test_control_channel_answers_each_command_with_its_id() -> None:
    """A worker answers every command line with one JSON line carrying the command's id."""
    lost: list[bool] = []

    def handle(message: dict[str, Any]) -> dict[str, Any]:
        if message["cmd"] == "boom":
            raise RuntimeError("boom")
        return {"ok": True, "generation": 3}

    channel = ControlChannel(handle, lambda: lost.append(True))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b'{"id": 7, "cmd": "reload"}\n{"id": 8, "cmd": "boom"}\n')
    answers = [json.loads(line) for line in transport.value().splitlines()]
    assert answers[0] == {"ok": True, "generation": 3, "id": 7}
    assert (answers[1]["id"], answers[1]["ok"]) == (8, False)
    channel.connectionLost(Failure(ConnectionDone()))
    assert lost == [True]


def test_a_worker_that_keeps_dying_young_is_restarted_ever_more_slowly(tmp_path) -> None:
    """Restarts wait 0.5 s, then double per quick death up to 30 s; a long run resets that."""
    clock = _SpawningClock()
    pool = WorkerPool(clock, 2, ["python"], {}, tmp_path, listen_fds=[11, 12])
    pool.start()
    assert [fds[4] for _, fds in clock.spawned] == [11, 12]  # each worker its own socket
    delays = []
    for _ in range(8):
        worker = pool.workers[0]
        assert worker is not None
        _died(worker)
        (call,) = [c for c in clock.getDelayedCalls() if c.active()]
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert pool.restarts == [8, 0]
    clock.advance(STABLE_AFTER)  # this one ran long enough
    worker = pool.workers[0]
    assert worker is not None
    _died(worker)
    assert [c.getTime() - clock.seconds() for c in clock.getDelayedCalls()] == [0.5]
    clock.advance(0.5)
    assert clock.spawned[-1][1][4] == 11  # the successor gets the same socket


def test_a_stopping_pool_restarts_nobody(tmp_path) -> None:
    """After stop(), a worker's exit starts no successor; stop() fires once all are reaped."""
    clock = _SpawningClock()
    pool = WorkerPool(clock, 2, ["python"], {}, tmp_path, listen_fds=[11, 12])
    pool.start()
    workers = [w for w in pool.workers if w is not None]
    stopped = pool.stop(grace=5.0)
    assert [w.transport.signals for w in workers] == [[signal.SIGTERM], [signal.SIGTERM]]  # type: ignore[union-attr]
    for worker in workers:
        _died(worker, signal.SIGTERM)
    clock.advance(0.1)
    assert stopped.called
    assert len(clock.spawned) == 2
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("listen", "family"),
    [
        ("tcp:0:interface=127.0.0.1:backlog=7", socket.AF_INET),
        (r"tcp6:0:interface=\:\:1", socket.AF_INET6),
    ],
)
def test_the_supervisor_binds_one_socket_per_worker_on_one_port(
    listen: str, family: socket.AddressFamily
) -> None:
    """Each worker gets its own non-blocking socket of the endpoint's family, on one port."""
    sockets = bind_listeners(parse_server_endpoint(listen), 3)
    try:
        assert len({sock.fileno() for sock in sockets}) == 3
        assert len({sock.getsockname()[1] for sock in sockets}) == 1
        assert all(sock.family == family and not sock.getblocking() for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_control_channel_answers_a_deferred_answer_when_it_fires() -> None:
    """A command whose answer comes later (a reload) is answered then, with its id."""
    pending: defer.Deferred[dict[str, Any]] = defer.Deferred()
    channel = ControlChannel(lambda message: pending, lambda: None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b'{"id": 9, "cmd": "reload"}\n')
    assert transport.value() == b""
    pending.callback({"ok": True, "generation": 4})
    assert json.loads(transport.value()) == {"ok": True, "generation": 4, "id": 9}


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(tmp_path) -> None:
    """stop(): SIGTERM, then SIGKILL for a worker still running after the grace; it fires
    once that worker is reaped, with nothing left scheduled."""
    clock = _SpawningClock()
    pool = WorkerPool(clock, 2, ["python"], {}, tmp_path, listen_fds=[11, 12])
    pool.start()
    polite, stubborn = [w for w in pool.workers if w is not None]
    stopped = pool.stop(grace=5.0)
    _died(polite, signal.SIGTERM)
    clock.advance(4.9)
    assert stubborn.transport.signals == [signal.SIGTERM]  # type: ignore[union-attr]
    clock.advance(0.1)
    assert stubborn.transport.signals == [signal.SIGTERM, signal.SIGKILL]  # type: ignore[union-attr]
    assert not stopped.called
    _died(stubborn, signal.SIGKILL)
    assert stopped.called
    assert clock.getDelayedCalls() == []
