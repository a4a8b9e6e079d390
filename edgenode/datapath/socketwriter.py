"""Writing to a TCP transport: straight to its socket while the transport holds nothing.

Twisted's `write()` only buffers: it registers a writer and sends in the next reactor
round (an epoll_ctl to add it, a doWrite, an epoll_ctl to remove it). What the edge writes
per request (a response, a request head) nearly always fits the socket buffer, so a
`SocketWriter` sends it at once. The client connection writes through one
(downstream.py); TLS connections, on both sides, write through the TLS transport
(tlstransport.py), which sends at once itself and whose handle is no socket.

Invariants:
- Order. Once the socket takes less than it was offered, the rest and every later write
  go to `transport.write`, until the transport reports its buffer empty: bytes reach the
  wire in the order they were written.
- The drain signal comes through the public IConsumer contract: a pull producer
  (`_Drained`) registered on the transport, whose resumeProducing() Twisted calls at
  registration and each time the transport's buffer empties. It occupies the transport's
  producer slot, so `release()` must unregister it before `transport.loseConnection()`,
  which a registered pull producer would otherwise hold open for ever.
- Backpressure. The push producer given to `pace()` (the download or upload behind this
  connection) is paused once more than HIGH_WATER bytes went to `transport.write` since
  the last drain, and resumed on the drain.
- A transport without a TCP socket (the tests' StringTransport) gets no watcher: every
  write goes to `transport.write` and `pace()` registers the producer on the transport,
  which then does the pausing itself.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IPullProducer, IPushProducer
from zope.interface import implementer

HIGH_WATER = 65536  # bytes handed to the transport before the paced producer waits


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket behind `transport`, with TCP_NODELAY set; None for anything else, TLS
    included: the TLS transport's handle is its SSL.Connection (tlstransport.py)."""
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    set_nodelay(sock)
    return sock


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on a TCP socket: each side writes whole messages, so Nagle's delay only
    adds latency. The one place it is set, for every connection of the data path."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SocketWriter:
    """The write side of one TCP transport (TCP_NODELAY set on it)."""

    __slots__ = ("_direct", "_paused", "_producer", "_queued", "_socket", "_watching", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._socket: socket.socket | None = None
        self._watching = False  # _Drained is registered on the transport
        self._direct = False  # the transport holds nothing: the socket may take writes
        self._queued = 0  # bytes handed to the transport since it last drained
        self._producer: IPushProducer | None = None
        self._paused = False
        sock = tcp_socket(transport)
        if sock is not None:
            self._socket = sock
            self._watching = True
            transport.registerProducer(_Drained(self), False)  # resumes it now: direct

    @property
    def producer(self) -> IPushProducer | None:
        return self._producer

    def write(self, data: bytes) -> None:
        if self._direct:
            try:
                sent = self._socket.send(data)  # type: ignore[union-attr]
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # the transport's own write meets the error and reports it
            if sent == len(data):
                return
            data = data[sent:]
            self._direct = False
        self.transport.write(data)
        if self._watching:
            self._queued += len(data)
            producer = self._producer
            if self._queued > HIGH_WATER and producer is not None and not self._paused:
                self._paused = True
                producer.pauseProducing()

    def drained(self) -> None:
        """The transport sent everything it held: writes may go straight out again."""
        self._direct = self._watching
        self._queued = 0
        if self._paused:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()

    def pace(self, producer: IPushProducer) -> None:
        """Pause `producer` while the peer does not keep up with what it makes us write."""
        self._producer = producer
        self._paused = False
        if self._socket is None:
            self.transport.registerProducer(producer, True)  # the transport does it all
        elif self._queued > HIGH_WATER:
            self._paused = True
            producer.pauseProducing()

    def unpace(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        self._paused = False
        if self._socket is None:
            self.transport.unregisterProducer()

    def release(self) -> None:
        """No more direct sends; the transport's producer slot is free for its close."""
        self._direct = False
        if self._watching:
            self._watching = False
            self.transport.unregisterProducer()

    def connection_lost(self) -> IPushProducer | None:
        """The connection is gone. Returns the paced producer when it is for the caller to
        stop: the transport stops only the producers registered with it."""
        self._direct = False
        self._watching = False
        producer, self._producer = self._producer, None
        self._paused = False
        return producer if self._socket is not None else None


@implementer(IPullProducer)
class _Drained:
    """Registered with a transport so that it says when its buffer is empty."""

    __slots__ = ("_writer",)

    def __init__(self, writer: SocketWriter) -> None:
        self._writer = writer

    def resumeProducing(self) -> None:
        self._writer.drained()

    def stopProducing(self) -> None:
        """The connection is gone; its protocol's connectionLost says so."""
