"""One client connection to the real client-side protocol, in memory.

The handler is the fake at the edge: it records what the protocol hands it and answers
through the real ClientStream, the way proxy.Proxy does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from edgenode.config import Limits
from edgenode.datapath.downstream import (
    ClientStream,
    DownstreamFactory,
    DownstreamProtocol,
    RequestHandler,
    RequestHead,
    RequestSink,
)
from edgenode.errors import ErrorCode

from .transport import TCPStringTransport

HOST = b"Host: www.example.com\r\n"


class RecordingSink:
    """A RequestSink that records the body, the end and the fate of one request."""

    def __init__(self, head: RequestHead, stream: ClientStream) -> None:
        self.head = head
        self.stream = stream
        self.events: list[Any] = []

    @property
    def body_bytes(self) -> bytes:
        return b"".join(e[1] for e in self.events if e[0] == "body")

    def body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def end(self) -> None:
        self.events.append(("end",))

    def client_lost(self) -> None:
        self.events.append(("client_lost",))

    def reject(self, code: ErrorCode, detail: str) -> None:
        self.events.append(("reject", code))
        self.stream.send_error(code, "test-id")  # as proxy.Exchange does

    def respond(self, body: bytes = b"ok", *, length: bool = True) -> None:
        """Answer 200 with `body`, with a Content-Length or (length=False) without one."""
        self.stream.start_response(200, b"OK", [], len(body) if length else None, no_body=False)
        self.stream.send_body(body)
        self.stream.end_response()


class RecordingHandler:
    """A RequestHandler recording starts and refusals; refusals are answered like the proxy's."""

    def __init__(self) -> None:
        self.sinks: list[RecordingSink] = []
        self.refused: list[tuple[ErrorCode, str]] = []

    def start(self, head: RequestHead, stream: ClientStream) -> RecordingSink:
        sink = RecordingSink(head, stream)
        self.sinks.append(sink)
        return sink

    def refuse(self, head: RequestHead, stream: ClientStream, code: ErrorCode, detail: str) -> None:
        self.refused.append((code, detail))
        stream.send_error(code, "test-id")


class Client:
    """One client connection to a DownstreamProtocol, with its clock and handler."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()
        handler: RequestHandler = self.handler
        self.factory = DownstreamFactory(handler, limits or Limits(), self.clock)
        self.proto: DownstreamProtocol = self.factory.buildProtocol(None)
        self.transport = TCPStringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def written(self) -> bytes:
        return self.transport.value()

    def lose(self) -> None:
        """The TCP connection is gone, as the reactor would report it."""
        self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def sinks(self) -> list[RecordingSink]:
        return self.handler.sinks


def _sink_is_a_request_sink(sink: RecordingSink) -> RequestSink:
    return sink  # mypy checks the fake against the real protocol
