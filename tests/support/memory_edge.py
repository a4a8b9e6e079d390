"""The edge's real data path in memory, for unit tests of the exchange and its failures.

`Edge` builds a `DataPath` as the service does, on a MemoryReactorClock, with an access
log that keeps its records: client and origin transports are StringTransports, origin
connects are completed by hand, routes are plain HTTP (no TLS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgenode.accesslog import AccessLog, AccessRecord
from edgenode.config import config_from_mapping
from edgenode.control.serving import DataPath
from edgenode.datapath.downstream import DownstreamProtocol
from edgenode.datapath.upstream import UpstreamConnection

from .transport import TCPStringTransport

WWW = b"Host: www.example.com\r\n"
OK_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: origin\r\n\r\nhello"


def http_domain(*origins: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {
        "origin_protocol": "http",
        "origin_host": "origin.example",
        "origins": list(origins),
        **settings,
    }


TWO_ORIGINS = http_domain(
    {"address": "192.0.2.1", "port": 8080, "priority": 1},
    {"address": "192.0.2.2", "priority": 2},
)


class RecordingAccessLog(AccessLog):
    """An AccessLog that keeps its records instead of writing lines."""

    def __init__(self) -> None:
        super().__init__(None)
        self.records: list[AccessRecord] = []

    def write(self, record: AccessRecord) -> None:
        self.records.append(record)


class Edge:
    """The edge's data path as the service builds it, on a MemoryReactorClock, with an
    access log that keeps its records. Not started: the only timers are the ones a
    request sets, which a test drives with `reactor.advance`."""

    def __init__(
        self, domain: dict[str, Any] = TWO_ORIGINS, limits: dict[str, Any] | None = None
    ) -> None:
        mapping: dict[str, Any] = {"domains": {"www.example.com": domain}}
        if limits:
            mapping["limits"] = limits
        config = config_from_mapping(mapping, base_dir=Path("."))
        self.reactor = MemoryReactorClock()
        self.log = RecordingAccessLog()
        self.data = DataPath(
            config, self.reactor, process="single", generation=1, access_log=self.log
        )
        self.pool = self.data.pool
        self.proxy = self.data.proxy

    def client(self) -> tuple[DownstreamProtocol, TCPStringTransport]:
        proto = self.data.factory.buildProtocol(None)
        transport = TCPStringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def connects(self) -> list[tuple[str, int]]:
        return [(c[0], c[1]) for c in self.reactor.tcpClients]

    def origin(self, index: int = -1) -> tuple[UpstreamConnection, StringTransport]:
        """Complete the connect at `index`: the origin connection and its transport."""
        factory = self.reactor.tcpClients[index][2]
        conn = factory.buildProtocol(None)
        transport = StringTransport()
        conn.makeConnection(transport)
        return conn, transport

    def refuse(self, index: int = -1) -> None:
        self.reactor.tcpClients[index][2].clientConnectionFailed(
            None, Failure(ConnectionRefusedError())
        )


def lose(proto: Any, reason: type[Exception] = ConnectionDone) -> None:
    proto.connectionLost(Failure(reason()))
