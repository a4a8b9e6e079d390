"""The twistd service: as an operator starts it (bad configs, help, a taken port), and in
memory on a MemoryReactorClock (the reload flow, the graceful stop)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgenode.config import load_config
from edgenode.control.service import SHUTDOWN_GRACE, EdgeService
from tests.support.net import free_port

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def _twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "edgenode.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_error_at_start_prints_problems_and_exits_1(tmp_path) -> None:
    """A broken config stops startup with exit 1 and every problem printed, no traceback."""
    path = _write(
        tmp_path,
        {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "domains": {
                "a.test": {
                    "origin_sni": {"enabled": True, "value": "*.a.test"},
                    "origins": [{"address": "127.0.0.1", "port": 70000}],
                }
            },
        },
    )
    done = _twistd("edgenode", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "domains.a.test.origin_sni.value" in out and "wildcard" in out
    assert "domains.a.test.origins[0].port" in out
    assert "Traceback" not in out


def test_port_in_use_stops_startup(tmp_path, pki) -> None:
    """If the client port is taken, the edge does not start (and says why)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _write(
            tmp_path,
            {
                "listen": f"tcp:{port}:interface=127.0.0.1",
                "admin": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "tls": {"ca_file": str(pki.ca_file)},
                "domains": {"a.test": {"origins": [{"address": "127.0.0.1", "port": 9}]}},
            },
        )
        done = _twistd(
            "--logfile",
            str(tmp_path / "twistd.log"),
            "edgenode",
            "--config",
            str(path),
            cwd=tmp_path,
        )
    assert done.returncode != 0
    assert "Address already in use" in (tmp_path / "twistd.log").read_text() + done.stderr


def test_help_lists_every_option(tmp_path) -> None:
    """`twistd edgenode --help` documents --config, --listen and --admin-listen."""
    done = _twistd("edgenode", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--config", "--listen", "--admin-listen", "--demo"):
        assert option in done.stdout


# --- In memory: the reload flow and the drain, on a MemoryReactorClock ---------------------------

ORIGIN_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class _TCPStringTransport(StringTransport):
    """A StringTransport with a handle, as a TCP transport has (ISystemHandle); no socket."""

    def getHandle(self) -> None:
        return None


def _write_config(tmp_path: Path, *names: str, **settings: Any) -> Path:
    """A config of plain-HTTP domains: nothing is bound on a MemoryReactor, no TLS is built."""
    domain = {"origin_protocol": "http", "origins": [{"address": "192.0.2.1", "port": 8080}]}
    return _write(
        tmp_path,
        {
            "listen": "tcp:8080:interface=127.0.0.1",
            "admin": {"listen": "tcp:8081:interface=127.0.0.1", "token_file": "admin.token"},
            "domains": {name: domain for name in names},
            **settings,
        },
    )


def _started_edge(tmp_path: Path, reactor: MemoryReactorClock) -> EdgeService:
    edge = EdgeService(load_config(_write_config(tmp_path, "a.test")), reactor)
    edge.privilegedStartService()
    edge.startService()
    return edge


def _result(deferred: defer.Deferred[Any]) -> Any:
    """What a Deferred that has fired fired with."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _request(edge: EdgeService, host: bytes) -> _TCPStringTransport:
    """A client connection that sent one GET for `host`; its request waits on an origin."""
    client = edge.data.factory.buildProtocol(None)
    transport = _TCPStringTransport()
    client.makeConnection(transport)
    transport.protocol = client
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    return transport


def _origin_answers(reactor: MemoryReactorClock, index: int) -> None:
    """Complete the origin connect at `index` and have the origin answer 200 with 5 bytes."""
    conn = reactor.tcpClients[index][2].buildProtocol(None)
    conn.makeConnection(StringTransport())
    conn.dataReceived(ORIGIN_HEAD)


def test_reload_answers_a_deferred_result_applied_or_rejected(tmp_path) -> None:
    """An edge's reload fires its Deferred with the outcome: the new generation and its diff,
    or every problem with nothing changed."""
    reactor = MemoryReactorClock()
    edge = _started_edge(tmp_path, reactor)
    _write_config(tmp_path, "a.test", "b.test", limits={"client_idle_timeout": 7})

    applied = _result(edge.reloader.reload("test"))

    assert (applied.ok, applied.generation, applied.status) == (True, 2, 200)
    assert applied.changed["added"] == ["b.test"]
    assert edge.data.holder.current.generation == 2
    assert edge.data.factory.limits.client_idle_timeout == 7  # applied beyond the runtime

    (tmp_path / "edgenode.yaml").write_text("domains: {a.test: {origins: []}}\n")
    rejected = _result(edge.reloader.reload("test"))

    assert (rejected.ok, rejected.generation, rejected.status) == (False, 2, 422)
    assert [e["path"] for e in rejected.errors] == ["domains.a.test.origins"]
    assert sorted(edge.data.holder.current.domains) == ["a.test", "b.test"]


def test_admin_reload_answers_with_a_content_length(tmp_path) -> None:
    """POST /reload answers 200 with the generation, framed by Content-Length, not chunked."""
    reactor = MemoryReactorClock()
    _started_edge(tmp_path, reactor)
    _write_config(tmp_path, "a.test", "b.test")
    site = reactor.tcpServers[1][1]  # the client listener first, then the admin site
    channel = site.buildProtocol(None)
    channel.callLater = reactor.callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    token = (tmp_path / "admin.token").read_text().strip()
    channel.dataReceived(
        b"POST /reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer %b\r\n"
        b"Content-Length: 0\r\n\r\n" % token.encode()
    )
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: %d" % len(body) in head
    assert b"chunked" not in head.lower()
    assert json.loads(body)["generation"] == 2


def _closed(transport: _TCPStringTransport) -> None:
    """The client connection closed, as the reactor reports once its last bytes are sent."""
    transport.protocol.connectionLost(Failure(ConnectionDone()))


def test_stop_waits_for_the_requests_in_flight_then_closes(tmp_path) -> None:
    """A graceful stop closes the listeners and idle connections at once, and completes once
    every client connection has closed after its last response, not before."""
    reactor = MemoryReactorClock()
    edge = _started_edge(tmp_path, reactor)
    first, second = _request(edge, b"a.test"), _request(edge, b"a.test")
    idle = _TCPStringTransport()
    idle.protocol = edge.data.factory.buildProtocol(None)
    idle.protocol.makeConnection(idle)

    stopped = edge.stopService()

    assert idle.disconnecting and not stopped.called
    _closed(idle)
    _origin_answers(reactor, 0)
    assert first.value().endswith(b"hello") and first.disconnecting
    _closed(first)
    assert not stopped.called  # the second request is still in flight
    _origin_answers(reactor, 1)
    assert second.disconnecting and not stopped.called  # its response is still leaving
    _closed(second)
    assert stopped.called
    assert second.value().startswith(b"HTTP/1.1 200 OK") and second.value().endswith(b"hello")


def test_stop_cuts_what_is_still_in_flight_after_the_grace(tmp_path) -> None:
    """A request still waiting for its origin when the grace period ends is cut off, and the
    stop completes then (the service exits 0, not after the request's own timeouts)."""
    reactor = MemoryReactorClock()
    edge = _started_edge(tmp_path, reactor)
    waiting = _request(edge, b"a.test")
    conn = reactor.tcpClients[0][2].buildProtocol(None)
    conn.makeConnection(StringTransport())  # connected; the origin never answers

    stopped = edge.stopService()

    reactor.advance(SHUTDOWN_GRACE - 0.5)
    assert not stopped.called and not waiting.disconnecting
    reactor.advance(0.5)
    assert stopped.called
    assert waiting.disconnected  # aborted
