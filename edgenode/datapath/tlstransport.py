"""TLS over one TCP connection on pyOpenSSL memory BIOs, for both sides of the data path.

`TLSTransport` sits between the reactor's TCP transport and one wrapped protocol, in
place of Twisted's `TLSMemoryBIOProtocol`: on the origin side (`OriginTLSFactory`, the
client end of TLS) under an `UpstreamConnection`, on the client side (`ClientTLSFactory`,
the server end of TLS, SPEC §8) under a `DownstreamProtocol`. It exists for two costs
that one paid per request: a write only buffered, so a request head or a response waited
for the next reactor round (epoll_ctl add, doWrite, epoll_ctl remove), and its Python.

Invariants:
- Eager writes, order kept. The ciphertext of each write (and of each handshake or read
  step) is read from the BIO in one piece and written through the TCP transport's
  `SocketWriter` (socketwriter.py): straight to the socket while the transport holds
  nothing, through the transport otherwise, in order. The client Finished and a request
  head written from `handshakeCompleted` leave in one send. The writer's drain watcher is
  released before the transport's loseConnection.
- Upload backpressure. The upload producer registered on this transport is paced by the
  writer (paused beyond HIGH_WATER bytes queued in the TCP transport, resumed when it
  drains); it gets stopProducing() when the connection is lost, as the TCP transport
  would do for its own producer.
- Reads. One `bio_write` per TCP read, then `recv` until OpenSSL wants more; the wrapped
  protocol gets one dataReceived per TCP read (the plaintext joined), then whatever
  OpenSSL produced (tickets, key updates, alerts) is flushed.
- What the wrapped protocol sees when things end, as with TLSMemoryBIOProtocol, so that
  `ConnectionTLS.setup_failure` classifies them unchanged: connectionLost gets a Failure
  of the `SSL.Error` that ended TLS (a failed handshake, a fatal alert); an EOF without
  close_notify (FIN or RST, in or after the handshake) is `ConnectionLost`; a TLS close
  (close_notify either way) or our own close gives the TCP transport's reason
  (`ConnectionDone`). A handshake failure's alert is sent to the peer before closing.
- loseConnection sends close_notify and closes the TCP connection once its buffer is sent
  (it does not wait for the peer's close_notify); before the handshake finished it
  aborts. abortConnection resets without close_notify (an aborted transport would drop
  it anyway).
- `getHandle()` is the SSL.Connection, as with TLSMemoryBIOProtocol: whoever writes
  through this transport must never find the TCP socket there and write around TLS
  (socketwriter.py writes straight to a handle that is a socket); the TCP socket under
  it gets TCP_NODELAY from its own SocketWriter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import error as neterror
from twisted.internet.interfaces import (
    IConsumer,
    IHandshakeListener,
    IProtocol,
    IPushProducer,
    ISystemHandle,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edgenode.datapath.socketwriter import SocketWriter
from edgenode.datapath.transport import StreamTransport

_RECV_SIZE = 65536  # one record is at most 16 KiB of plaintext; room for more
_FLUSH_SIZE = 16384  # first BIO read when the plaintext size gives no hint
_FLUSH_SLACK = 4096  # record overhead for up to four records of one write (TLS 1.2 CBC: ~300 each)
_MAX_RECORD = 16384  # SSL_write takes one record per call (pyOpenSSL sets partial writes)


@implementer(ITransport, IConsumer, IPushProducer, ISystemHandle)
class TLSTransport(Protocol):
    """TLS over a TCP transport (the client end, or with `accept` the server end); the
    transport of one wrapped protocol."""

    disconnecting = False
    transport: StreamTransport  # type: ignore[assignment]  # the TCP transport, from makeConnection

    def __init__(
        self,
        new_connection: Callable[[], SSL.Connection],
        wrapped: IProtocol,
        *,
        accept: bool = False,
    ) -> None:
        self.wrappedProtocol: Any = wrapped
        self._accept = accept
        self.handshake_started = False  # the peer sent a byte of it (a port check sends none)
        self._framer = _RecordFramer()
        self._new_connection = new_connection
        self._listener = IHandshakeListener.providedBy(wrapped)
        self._tls: SSL.Connection | None = None
        self._handshake_done = False
        self._tls_over = False  # TLS ended (error, close_notify, our close): no more SSL I/O
        self._lost = False  # the TCP connection is gone
        self._close_when_unregistered = False
        self._reason: Failure | None = None  # why TLS ended, for the wrapped connectionLost
        self._pending: list[bytes] = []  # plaintext OpenSSL could not take yet
        self._writer: SocketWriter  # the TCP transport's (socketwriter.py), from connectionMade

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        tls = self._new_connection()
        if self._accept:
            tls.set_accept_state()
        else:
            tls.set_connect_state()
        self._tls = tls
        self._writer = SocketWriter(self.transport)
        self.wrappedProtocol.makeConnection(self)
        if not self._tls_over:  # the wrapped protocol may have aborted already
            self._handshake()

    def dataReceived(self, data: bytes) -> None:
        if self._tls_over:
            return
        tls = self._tls
        assert tls is not None
        tls.bio_write(data)
        records = self._framer.feed(data)
        if not self._handshake_done:
            self.handshake_started = True
            if not self._handshake():
                return
            records = -1  # some of this read went to the handshake: read until OpenSSL stops
        if self._pending:
            self._send_pending()  # a renegotiation step may have unblocked them
        self._read(records)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        producer = self._writer.connection_lost()
        if not self._tls_over:
            # The origin closed TCP without ending TLS: OpenSSL sees the EOF, may still
            # hold plaintext, and says what kind of end this was (EOF -> ConnectionLost).
            self._tls_over = True
            self._at_eof()
        if producer is not None:
            producer.stopProducing()  # what the TCP transport does for its own producer
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None  # no cycle left behind
        wrapped.connectionLost(self._reason or reason)
        self._reason = None

    # -- handshake ------------------------------------------------------------

    def _handshake(self) -> bool:
        """Take the handshake one step; True once it completed."""
        tls = self._tls
        assert tls is not None
        try:
            tls.do_handshake()
        except SSL.WantReadError:
            self._flush(_FLUSH_SIZE)  # a ClientHello or ServerHello, or the next flight
            return False
        except SSL.Error:
            self._fail(Failure())
            return False
        self._handshake_done = True
        if self._pending:
            self._send_pending(flush=False)
        if self._listener and not self._tls_over:
            self.wrappedProtocol.handshakeCompleted()
        # Our last flight (a client's Finished, a server's session tickets), unless a write
        # from handshakeCompleted already took it along.
        if not self._tls_over:
            self._flush(_FLUSH_SIZE)
        return not self._tls_over

    # -- reading --------------------------------------------------------------

    def _read(self, records: int = -1) -> None:
        """Hand the wrapped protocol what this read decrypted, in one piece.

        `records` is how many TLS records this read completed (`_RecordFramer`), or -1 when
        that is not known. Each `recv` takes at least one complete record, so after that
        many (and nothing left in OpenSSL's buffer) the next one would only raise
        WantReadError: an exception, and a flush that finds nothing, saved per read.
        """
        tls = self._tls
        assert tls is not None
        pieces: list[bytes] = []
        closed = False
        failure: Failure | None = None
        counted = records >= 0
        while True:
            if counted and records <= 0 and not tls.pending():
                break
            records -= 1
            try:
                pieces.append(tls.recv(_RECV_SIZE))
            except SSL.WantReadError:
                counted = False  # a record that brought no data (a ticket): flush below
                break
            except SSL.ZeroReturnError:
                closed = True
                break
            except SSL.Error:
                failure = Failure()
                break
        if pieces:
            self.wrappedProtocol.dataReceived(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self._tls_over:  # the wrapped protocol closed or aborted while it read
            return
        if closed:
            self._peer_closed()
        elif failure is not None:
            self._fail(failure)
        elif not counted:
            # OpenSSL may have something to send (an answer to a post-handshake message);
            # after a read of application data only, it goes with our next write.
            self._flush(_FLUSH_SIZE)

    def _at_eof(self) -> None:
        """The TCP connection is gone: let OpenSSL read the end of the stream."""
        tls = self._tls
        assert tls is not None
        tls.bio_shutdown()
        pieces: list[bytes] = []
        try:
            if not self._handshake_done:
                tls.do_handshake()
            else:
                while True:
                    pieces.append(tls.recv(_RECV_SIZE))
        except SSL.ZeroReturnError:
            pass  # a TLS close whose TCP close came with it
        except SSL.Error:
            self._record(Failure())
        if pieces:
            self.wrappedProtocol.dataReceived(b"".join(pieces))

    def _peer_closed(self) -> None:
        """The peer sent close_notify: answer it and close."""
        self._shutdown()

    # -- writing --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._tls_over or (self.disconnecting and self._writer.producer is None):
            return
        if not self._handshake_done or self._pending:
            self._pending.append(data)
            return
        if self._encrypt(data):
            self._flush(len(data) + _FLUSH_SLACK)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _encrypt(self, data: bytes) -> bool:
        """Give `data` to OpenSSL; False if TLS failed (then the connection is closing)."""
        tls = self._tls
        assert tls is not None
        offset = 0
        try:
            if len(data) <= _MAX_RECORD:
                tls.send(data)
                return True
            view = memoryview(data)
            while offset < len(data):
                offset += tls.send(view[offset : offset + _MAX_RECORD])
        except SSL.WantReadError:
            # Only mid-renegotiation: the rest waits for the peer's next read.
            self._pending.insert(0, data[offset:] if offset else data)
        except SSL.Error:
            self._fail(Failure())
            return False
        return True

    def _send_pending(self, *, flush: bool = True) -> None:
        pending, self._pending = self._pending, []
        for i, data in enumerate(pending):
            if not self._encrypt(data):
                return
            if self._pending:  # blocked again: keep the order
                self._pending.extend(pending[i + 1 :])
                break
        if flush:
            self._flush(_FLUSH_SIZE)

    def _flush(self, size: int) -> None:
        """Send what OpenSSL produced: straight to the socket while nothing is queued."""
        tls = self._tls
        assert tls is not None
        try:
            data = tls.bio_read(size)
        except SSL.WantReadError:
            return  # nothing to send
        if len(data) == size:  # maybe more: read until the BIO is empty
            chunks = [data]
            while True:
                try:
                    chunk = tls.bio_read(size)
                except SSL.WantReadError:
                    break
                chunks.append(chunk)
                if len(chunk) < size:
                    break
            data = b"".join(chunks)
        self._writer.write(data)

    # -- IConsumer: the upload producer -----------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not streaming:
            raise TypeError("TLSTransport takes streaming (push) producers only")
        if self._writer.producer is not None:
            raise RuntimeError(f"cannot register {producer}: {self._writer.producer} is registered")
        if self._lost or self._tls_over:
            producer.stopProducing()
            return
        self._writer.pace(producer)

    def unregisterProducer(self) -> None:
        if self._writer.producer is None:
            return
        self._writer.unpace()
        if self._close_when_unregistered:
            self._close_when_unregistered = False
            self._shutdown()

    # -- closing --------------------------------------------------------------

    def loseConnection(self) -> None:
        """close_notify, then close TCP once its buffer is sent (abort before the handshake)."""
        if self.disconnecting or self._lost:
            return
        if not self._handshake_done:
            # OpenSSL cannot shut down mid-handshake; nothing was sent, so reset.
            self.abortConnection()
            return
        self.disconnecting = True
        if self._writer.producer is not None:
            self._close_when_unregistered = True  # Twisted's rule: the producer goes first
            return
        self._shutdown()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._tls_over = True  # nothing more is read or written, not even close_notify
        self._writer.release()
        self.transport.abortConnection()

    def _shutdown(self) -> None:
        if self._tls_over:
            return
        self._tls_over = True
        tls = self._tls
        assert tls is not None
        with contextlib.suppress(SSL.Error):  # nothing more to say to a peer TLS failed with
            tls.shutdown()
        self._flush(_FLUSH_SIZE)
        self._close_tcp()

    def _fail(self, failure: Failure) -> None:
        """TLS failed: tell the peer why (the alert), close, and keep the reason."""
        self._record(failure)
        self._tls_over = True
        self._flush(_FLUSH_SIZE)
        self._close_tcp()

    def _record(self, failure: Failure) -> None:
        if _represents_eof(failure.value):
            # An EOF in violation of TLS is a lost connection, as TLSMemoryBIOProtocol says.
            failure = Failure(neterror.ConnectionLost("Connection lost"))
        if self._reason is None:
            self._reason = failure

    def _close_tcp(self) -> None:
        self._writer.release()  # its drain watcher would keep the transport from closing
        self.transport.loseConnection()

    # -- the rest of the transport API ------------------------------------------

    def pauseProducing(self) -> None:
        """Reading backpressure: stop reading the peer's socket."""
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    def getHandle(self) -> Any:
        """The SSL.Connection (see the module's invariants), as TLSMemoryBIOProtocol gives."""
        return self._tls

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()


class _RecordFramer:
    """Counts the TLS records a read completes, following the record layer's framing
    (type, version, 16-bit length) from the stream's first byte. Anything that does not
    look like TLS records (an SSLv2-style hello, garbage) turns it off for good: then
    `feed` says -1, "not known", and reads go on until OpenSSL stops, as before."""

    __slots__ = ("_header", "_left", "broken")

    def __init__(self) -> None:
        self._left = 0  # bytes of the current record's body still to come
        self._header = b""  # the start of a record header cut by the end of a read
        self.broken = False

    def feed(self, data: bytes) -> int:
        if self.broken:
            return -1
        complete = 0
        size = len(data)
        pos = self._left
        if pos:
            if pos > size:
                self._left = pos - size
                return 0
            complete = 1
        if self._header:
            data = self._header + data[pos:]
            size = len(data)
            pos = 0
            self._header = b""
        while pos + 5 <= size:
            if not 20 <= data[pos] <= 23 or data[pos + 1] != 3:
                self.broken = True
                return -1
            end = pos + 5 + ((data[pos + 3] << 8) | data[pos + 4])
            if end > size:
                self._left = end - size
                return complete
            complete += 1
            pos = end
        self._left = 0
        self._header = data[pos:]
        return complete


def _represents_eof(exc: BaseException) -> bool:
    """Whether an SSL error stands for the peer's EOF without close_notify (Twisted's test)."""
    if not isinstance(exc, SSL.Error):
        return False
    if isinstance(exc, SSL.SysCallError):
        text = exc.args[1] if len(exc.args) > 1 else ""
    else:
        queue = exc.args[0] if exc.args else None
        if not queue:
            return True  # OpenSSL 4 reports an EOF with an empty error queue
        last = queue[-1]
        text = last[-1] if isinstance(last, tuple | list) and last else ""
    return str(text).casefold().startswith("unexpected eof")


class OriginTLSFactory(ClientFactory):
    """Wraps the protocol `wrappedFactory` builds in an TLSTransport whose SSL.Connection
    `new_connection` makes (the route's OriginTLSCreator, bound to the connection's facts)."""

    noisy = False

    def __init__(self, new_connection: Callable[[], SSL.Connection], wrappedFactory: Any) -> None:
        self.new_connection = new_connection
        self.wrappedFactory = wrappedFactory

    def buildProtocol(self, addr: Any) -> TLSTransport | None:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        proto = TLSTransport(self.new_connection, wrapped)
        proto.factory = self
        return proto

    def startedConnecting(self, connector: Any) -> None:
        self.wrappedFactory.startedConnecting(connector)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.wrappedFactory.clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.wrappedFactory.clientConnectionLost(connector, reason)


class ClientTLSFactory(Factory):
    """The HTTPS listener's factory (SPEC §8): each accepted connection is the server end of
    TLS, on an SSL.Connection `new_connection` makes (the running `ServerTLS`'s, read at
    accept time, so a reload's certificates serve every handshake after it), around the
    protocol `build_wrapped` makes."""

    noisy = False

    def __init__(
        self,
        new_connection: Callable[[], SSL.Connection],
        build_wrapped: Callable[[Any], IProtocol | None],
    ) -> None:
        self.new_connection = new_connection
        self.build_wrapped = build_wrapped

    def buildProtocol(self, addr: Any) -> TLSTransport | None:
        wrapped = self.build_wrapped(addr)
        if wrapped is None:
            return None
        proto = TLSTransport(self.new_connection, wrapped, accept=True)
        proto.factory = self
        return proto
