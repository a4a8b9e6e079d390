"""TLS for both sides of the data path: pyOpenSSL's `SSL.Connection` on the TCP socket
itself, the transport its own reactor descriptor.

`TLSTransport` is the transport of one wrapped protocol: on the origin side (the client
end of TLS, `connect_tls`) under an `UpstreamConnection` or the probe's handshake, on the
client side (the server end, `TLSListener`, SPEC §8) under a `DownstreamProtocol`. It owns
the non-blocking socket, gives OpenSSL its file descriptor (`SSL.Connection(ctx, sock)`),
and registers itself with `IReactorFDSet.addReader/addWriter` as an `IReadWriteDescriptor`.
Per read one `SSL_read` (OpenSSL does the recv), per write one `SSL_write` (OpenSSL does
the send), and no Twisted `tcp.Connection` in between: it replaced memory BIOs under
Twisted's TCP transport, at about two thirds of the instructions per TLS round trip
(issue 16, bench/README.md). Public APIs only: the reactor's `IReactorFDSet` and
`IReactorPluggableNameResolver`, pyOpenSSL's `Connection(ctx, socket)`, `socket`.

What the wrapped protocol sees:
- Eager writes, order kept. A write goes to `SSL_write` at once while nothing is queued;
  what the socket does not take is queued (plaintext; OpenSSL keeps the record it already
  made and the retry passes the same bytes first) and sent from `doWrite`, in order.
- Upload backpressure. A streaming producer registered here is paused once more than
  HIGH_WATER plaintext bytes are queued and resumed when the queue is empty; it gets
  stopProducing() when the connection is lost.
- Reads. One `dataReceived` per readable event: the records read, joined, at most 64 KiB
  (what one TCP read of Twisted's brings at most; upstream.py counts a read that is
  still in the head against the head limit). A read stops after a record shorter than
  the maximum (the sender had no more); a full record means more is probably there, so
  it reads on until OpenSSL wants more or 64 KiB are read (level-triggered polling
  brings the rest in the next turn).
- Ends, as with Twisted's TLSMemoryBIOProtocol, so that `ConnectionTLS.setup_failure`
  classifies them: connectionLost gets the `SSL.Error` that ended TLS (handshake failure,
  fatal alert; OpenSSL sent our alert before); an EOF without close_notify, or a reset, is
  `ConnectionLost`; a TLS close (close_notify either way) or our loseConnection is
  `ConnectionDone`; abortConnection is `ConnectionAborted`. connectionLost is never
  called from inside a call the wrapped protocol made (it comes in a later reactor turn,
  as with Twisted's TCP transport).
- loseConnection sends close_notify once the queue is empty (after the producer is
  unregistered), then closes TCP; before the handshake finished it aborts. The peer's
  close_notify: what is queued still goes, then ours, then the close.
- `getHandle()` is the SSL.Connection, never the socket: whoever writes through this
  transport must not find the socket there and write around TLS (socketwriter.py sends
  straight to a handle that is a socket). TCP_NODELAY is set on the socket here.
- `handshake_started` says whether the peer sent a byte (server side: a port check sends
  none; one MSG_PEEK recv per connection).

Connecting (`connect_tls`) is connectTCP's part, as Twisted's TCP client does it: a
literal address, or a name resolved on the reactor's resolver (IPv4, as `reactor.resolve`
asks) whose addresses are tried in order; one timer for all of it; failures with
Twisted's exceptions (ConnectionRefusedError, TimeoutError, DNSLookupError), never inside
the call that started the connect. So the SPEC §4 codes and details stay Twisted's.

Known differences from TLS over Twisted's TCP transport (memory BIOs):
- OpenSSL reads a record in two read() calls (header, then body): pyOpenSSL has no public
  SSL_CTX_set_read_ahead. One more system call per TLS read; fewer Python calls still win.
- The handshake's last flight and a request written in handshakeCompleted leave in two
  sends, not one (once per connection).
- Our events run under the log systems "TLSTransport", "TLSConnector" and "TLSListener",
  not Twisted's "Protocol,N,peer".
- An exception in the wrapped protocol's dataReceived closes with a reset (the reactor calls
  connectionLost); Twisted's TCP closes in order there.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import address as twaddress
from twisted.internet import error as neterror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHandshakeListener,
    IHostResolution,
    IListeningPort,
    ILoggingContext,
    IProtocol,
    IPushProducer,
    IReadDescriptor,
    IReadWriteDescriptor,
    IResolutionReceiver,
    ISystemHandle,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from edgenode.datapath.socketwriter import HIGH_WATER, set_nodelay
from edgenode.reactors import ITLSReactor

_RECV_SIZE = 65536  # > one record's plaintext (16 KiB): each SSL_read takes a whole record
_MAX_RECORD = 16384  # a record this full says the sender had more
_MAX_READ = 65536  # plaintext per event at most, as Twisted's TCP reads 64 KiB at most


def _address(sockaddr: Any, family: int) -> Any:
    if family == socket.AF_INET6:
        return twaddress.IPv6Address("TCP", sockaddr[0], sockaddr[1])
    return twaddress.IPv4Address("TCP", sockaddr[0], sockaddr[1])


@implementer(
    ITransport,
    IConsumer,
    IPushProducer,
    ISystemHandle,
    IReadWriteDescriptor,
    ILoggingContext,
)
class TLSTransport:
    """TLS on one connected non-blocking socket (client end, or with `accept` the server
    end); the transport of one wrapped protocol, and its own reactor descriptor."""

    disconnecting = False

    def __init__(
        self,
        reactor: ITLSReactor,
        sock: socket.socket,
        new_connection: Callable[[socket.socket], SSL.Connection],
        wrapped: IProtocol,
        *,
        accept: bool = False,
    ) -> None:
        self.reactor = reactor
        self.socket = sock
        self._fd = sock.fileno()
        self.wrappedProtocol: Any = wrapped
        self._accept = accept
        self._new_connection = new_connection
        self._listener = IHandshakeListener.providedBy(wrapped)
        self._tls: SSL.Connection | None = None
        self.handshake_started = not accept
        self._handshake_done = False
        self._tls_over = False  # TLS ended: no more SSL I/O (close_notify excepted)
        self._closed = False  # the socket is closed (connectionLost comes, or came)
        self._lost = False  # connectionLost delivered
        self._reading = False  # registered with addReader
        self._writing = False  # registered with addWriter
        self._read_paused = False  # pauseProducing (reading backpressure)
        self._read_wants_write = False  # SSL_read / handshake needs the socket writable
        self._write_wants_read = False  # SSL_write needs a read first (renegotiation)
        self._out: list[bytes] = []  # plaintext not written yet, in order
        self._queued = 0
        self._producer: Any = None
        self._producer_paused = False
        self._close_when_unregistered = False
        self._close_when_drained = False
        self._closing_tls = False  # close_notify did not go out whole yet
        self._write_broken = False  # a write failed: nothing more goes out
        self._no_more_writes = False  # the peer closed TLS: what is queued goes, no more
        self._reason: Failure | None = None
        self._family = sock.family
        self._peer = _address(sock.getpeername(), sock.family)
        self._host = _address(sock.getsockname(), sock.family)

    # -- start ----------------------------------------------------------------

    def start(self) -> None:
        """The socket is connected: make TLS, tell the wrapped protocol, start reading (and
        on the client end send the ClientHello)."""
        sock = self.socket
        sock.setblocking(False)
        set_nodelay(sock)
        tls = self._new_connection(sock)
        if self._accept:
            tls.set_accept_state()
        else:
            tls.set_connect_state()
        self._tls = tls
        self.wrappedProtocol.makeConnection(self)
        if self._closed:  # the wrapped protocol aborted already
            return
        self._start_reading()
        if not self._accept:
            self._handshake()

    # -- the reactor's descriptor -------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "TLSTransport"

    def doRead(self) -> None:
        if self._closed:
            return None
        if not self._handshake_done:
            if not self.handshake_started:
                try:
                    self.handshake_started = bool(self.socket.recv(1, socket.MSG_PEEK))
                except BlockingIOError:
                    return None
                except OSError:
                    pass
            if not self._handshake():
                return None
        if self._write_wants_read:
            self._write_wants_read = False
            self._send_out()
            if self._tls_over:
                return None
        if not self._read_paused:
            self._read()
        return None

    def doWrite(self) -> None:
        if self._closed:
            return None
        if self._closing_tls:
            self._shutdown()
            return None
        if self._read_wants_write:
            self._read_wants_write = False
            if not self._handshake_done:
                if not self._handshake():
                    return None
            elif not self._read_paused:
                self._read()
                if self._tls_over:
                    return None
        if self._out and not self._write_wants_read:
            self._send_out()
            if self._tls_over:
                return None
        if not self._out and not self._read_wants_write:
            self._stop_writing()
            self._drained()
        return None

    def connectionLost(self, reason: Failure) -> None:
        """From the reactor: it is shutting down, or a callback of ours raised."""
        if self._lost:
            return
        self._tls_over = True
        if not self._closed:
            self._close_socket(orderly=False)
        self._deliver_lost(reason)

    # -- handshake ------------------------------------------------------------

    def _handshake(self) -> bool:
        """Take the handshake one step; True once it completed."""
        tls = self._tls
        assert tls is not None
        try:
            tls.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.WantWriteError:
            self._read_wants_write = True
            self._start_writing()
            return False
        except SSL.Error:
            self._fail(Failure())
            return False
        self._handshake_done = True
        if self._out:
            self._send_out()
        if self._listener and not self._tls_over:
            self.wrappedProtocol.handshakeCompleted()
        return not self._tls_over

    # -- reading --------------------------------------------------------------

    def _read(self) -> None:
        tls = self._tls
        assert tls is not None
        pieces: list[bytes] = []
        closed = False
        failure: Failure | None = None
        total = 0
        while True:
            try:
                data = tls.recv(_RECV_SIZE)
            except SSL.WantReadError:
                break
            except SSL.WantWriteError:
                self._read_wants_write = True  # a reply OpenSSL owes (key update) waits
                self._start_writing()
                break
            except SSL.ZeroReturnError:
                closed = True
                break
            except SSL.Error:
                failure = Failure()
                break
            pieces.append(data)
            total += len(data)
            if len(data) < _MAX_RECORD or total + _MAX_RECORD > _MAX_READ:
                break
        if pieces:
            self.wrappedProtocol.dataReceived(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self._tls_over:  # the wrapped protocol closed or aborted while it read
            return
        if closed:
            self._peer_closed()
        elif failure is not None:
            self._fail(failure)

    # -- writing --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if (
            self._tls_over
            or self._write_broken
            or self._no_more_writes
            or (self.disconnecting and self._producer is None)
        ):
            return
        if not data:
            return
        if self._out or not self._handshake_done:
            self._queue(data)
            return
        tls = self._tls
        assert tls is not None
        try:
            sent = tls.send(data)
        except SSL.WantWriteError:
            self._queue(data)
            self._start_writing()
            return
        except SSL.WantReadError:
            self._queue(data)
            self._write_wants_read = True
            return
        except SSL.Error:
            self._write_failed(Failure())
            return
        if sent < len(data):
            self._queue(data[sent:])
            self._send_out()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._queued += len(data)
        producer = self._producer
        if self._queued > HIGH_WATER and producer is not None and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()

    def _send_out(self) -> None:
        """Write the queue in order until the socket blocks."""
        tls = self._tls
        assert tls is not None
        out = self._out
        while out:
            data = out[0]
            try:
                sent = tls.send(data)
            except SSL.WantWriteError:
                self._start_writing()
                return
            except SSL.WantReadError:
                self._write_wants_read = True
                return
            except SSL.Error:
                self._write_failed(Failure())
                return
            self._queued -= sent
            if sent < len(data):
                out[0] = data[sent:]
            else:
                del out[0]
        if self._writing and not self._read_wants_write:
            self._stop_writing()
        self._drained()

    def _drained(self) -> None:
        if self._producer_paused and self._producer is not None:
            self._producer_paused = False
            self._producer.resumeProducing()
        if self._close_when_drained and not self._out:
            self._close_when_drained = False
            self._shutdown()

    def _write_failed(self, failure: Failure) -> None:
        """The socket refused a write (reset, broken pipe). Nothing more is written; in a
        later turn (never inside the wrapped protocol's write) what the peer sent before
        it (an alert, say) is read, as the TCP transport would have, then it is closed."""
        if self._write_broken:
            return
        self._write_broken = True
        self._out.clear()
        self._queued = 0
        self._stop_writing()
        self.reactor.callLater(0, self._after_write_failure, failure)

    def _after_write_failure(self, failure: Failure) -> None:
        if self._closed:
            return
        if not self._tls_over and self._handshake_done:
            self._read()
        if not self._closed:
            self._record(Failure(neterror.ConnectionLost(str(failure.value))))
            self._tls_over = True
            self._close_socket(orderly=False)
            self._lose_later(Failure(neterror.ConnectionLost()))

    # -- IConsumer: the upload producer -----------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not streaming:
            raise TypeError("TLSTransport takes streaming (push) producers only")
        if self._producer is not None:
            raise RuntimeError(f"cannot register {producer}: {self._producer} is registered")
        if self._closed or self._tls_over:
            producer.stopProducing()
            return
        self._producer = producer
        self._producer_paused = False
        if self._queued > HIGH_WATER:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        self._producer_paused = False
        if self._close_when_unregistered:
            self._close_when_unregistered = False
            self._close_after_queue()

    # -- closing --------------------------------------------------------------

    def loseConnection(self) -> None:
        """close_notify once the queue is sent, then close TCP (abort before the handshake)."""
        if self.disconnecting or self._closed:
            return
        if not self._handshake_done:
            self.abortConnection()
            return
        self.disconnecting = True
        if self._producer is not None:
            self._close_when_unregistered = True  # Twisted's rule: the producer goes first
            return
        self._close_after_queue()

    def _peer_closed(self) -> None:
        """The peer sent close_notify: what is queued still goes out, then ours, then close
        (as before, where the ciphertext already in the TCP transport went first)."""
        self.disconnecting = True
        self._no_more_writes = True
        self._close_after_queue()

    def _close_after_queue(self) -> None:
        if self._out and not self._write_broken:
            # As Twisted's loseConnection: no more reading, the queue, then the close.
            if not self._write_wants_read:
                self._stop_reading()
                self._read_paused = True
            self._close_when_drained = True
        else:
            self._shutdown()

    def abortConnection(self) -> None:
        if self._closed:
            return
        self.disconnecting = True
        self._tls_over = True
        self._close_socket(orderly=False)
        self._lose_later(Failure(neterror.ConnectionAborted()))

    def _shutdown(self) -> None:
        """Send close_notify (answering the peer's, or ours), then close."""
        if self._closed:
            return
        self._tls_over = True
        tls = self._tls
        assert tls is not None
        try:
            tls.shutdown()
        except SSL.WantWriteError:
            self._closing_tls = True  # the socket is full: doWrite tries again
            self._stop_reading()
            self._start_writing()
            return
        except SSL.Error:
            pass  # nothing more to say to a peer TLS failed with
        self._closing_tls = False
        self._close()

    def _fail(self, failure: Failure) -> None:
        """TLS failed: OpenSSL already wrote the alert it had; close and keep the reason."""
        self._record(failure)
        self._tls_over = True
        self._close()

    def _record(self, failure: Failure) -> None:
        value = failure.value
        if _represents_eof(value) or isinstance(value, SSL.SysCallError):
            # An EOF in violation of TLS, or a reset: a lost connection.
            failure = Failure(neterror.ConnectionLost("Connection lost"))
        if self._reason is None:
            self._reason = failure

    def _close(self) -> None:
        """Close TCP in order (what we had to send went out) and report it later."""
        self._close_socket(orderly=True)
        self._lose_later(Failure(neterror.ConnectionDone("Connection was closed cleanly.")))

    def _close_socket(self, *, orderly: bool) -> None:
        self._closed = True
        self._stop_reading()
        self._stop_writing()
        sock = self.socket
        try:
            if orderly:
                sock.shutdown(socket.SHUT_RDWR)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()
        self._fd = -1

    def _lose_later(self, reason: Failure) -> None:
        self.reactor.callLater(0, self._deliver_lost, reason)

    def _deliver_lost(self, reason: Failure) -> None:
        if self._lost:
            return
        self._lost = True
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()  # what the TCP transport does for its producer
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None  # no cycle left behind
        reason, self._reason = self._reason or reason, None
        if wrapped is not None:
            wrapped.connectionLost(reason)

    # -- registration -------------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self.reactor.addReader(self)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def _start_writing(self) -> None:
        if not self._writing and not self._closed:
            self._writing = True
            self.reactor.addWriter(self)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    # -- the rest of the transport API ------------------------------------------

    def pauseProducing(self) -> None:
        """Reading backpressure: stop reading the peer's socket."""
        self._read_paused = True
        self._stop_reading()

    def resumeProducing(self) -> None:
        if self._tls_over or self._close_when_drained:
            return  # closing: no more reading
        self._read_paused = False
        self._start_reading()

    def stopProducing(self) -> None:
        self.loseConnection()

    def getHandle(self) -> Any:
        """The SSL.Connection, never the socket (see the module's docstring)."""
        return self._tls

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host


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


# -- connecting (the origin side) ------------------------------------------------------


@implementer(IReadWriteDescriptor, IResolutionReceiver, ILoggingContext)
class _Connector:
    """One TCP connect for a TLS origin, as Twisted's TCP client makes it: a literal
    address, or a name resolved on the reactor's resolver (IPv4, as `reactor.resolve`)
    whose addresses are tried in order; one timer for all of it. The connector the factory
    sees."""

    def __init__(
        self,
        reactor: ITLSReactor,
        host: str,
        port: int,
        factory: Any,
        timeout: float,
        new_connection: Callable[[socket.socket], SSL.Connection],
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self._new_connection = new_connection
        self._timer: Any = None
        self._done = False
        self._starting = False  # inside connect(): a failure is reported in a later turn
        self._writing = False
        self._addresses: list[str] = []  # resolved, not tried yet
        self.socket: socket.socket | None = None
        self._target: tuple[str, int] = (host, port)  # this attempt's address
        self._fd = -1

    def connect(self) -> None:
        self.factory.startedConnecting(self)
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        self._starting = True
        try:
            if isIPAddress(self.host) or isIPv6Address(self.host):  # as tcp.Client decides
                self._attempt(self.host)
            else:
                self.reactor.nameResolver.resolveHostName(
                    self, self.host, self.port, [twaddress.IPv4Address], "TCP"
                )
        finally:
            self._starting = False

    # IResolutionReceiver
    def resolutionBegan(self, resolution: IHostResolution) -> None:
        return None

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and host not in self._addresses:
            self._addresses.append(host)

    def resolutionComplete(self) -> None:
        if self._done:
            return  # timed out or stopped while resolving
        if not self._addresses:
            self._failed(neterror.DNSLookupError(self.host))  # as reactor.resolve says it
            return
        self._attempt(self._addresses.pop(0))

    def _attempt(self, address: str) -> None:
        """Connect a new socket to `address`."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            self._failed(neterror.ConnectBindError(e.errno, e.strerror))
            return
        sock.setblocking(False)
        self.socket = sock
        self._fd = sock.fileno()
        self._target = (address, self.port)
        try:
            code = sock.connect_ex(self._target)
        except OSError as e:
            self._attempt_failed(neterror.ConnectError(string=str(e)))
            return
        if code in (0, errno.EISCONN):
            self._connected()
            return
        if code not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self._attempt_failed(_connect_error(code))
            return
        self._writing = True
        self.reactor.addWriter(self)

    # IWriteDescriptor
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "TLSConnector"

    def doWrite(self) -> None:
        self._check()
        return None

    def doRead(self) -> None:
        """Only a writer is registered, but an event of an earlier socket that had the same
        number may still come (the reactor looks its descriptor up by number)."""
        self._check()
        return None

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the socket hang up (epoll: ERR|HUP without IN for a refused
        connect, as only the writer is registered) and unregistered it: the socket says why,
        or that it is still connecting (the event was an earlier socket's)."""
        self._writing = False
        sock = self.socket
        if self._done or sock is None:
            return
        self._check()
        if self.socket is sock and not self._done and not self._writing:
            self._writing = True
            self.reactor.addWriter(self)

    def _check(self) -> None:
        """Whether this attempt's connect finished, as Twisted's TCP client asks (doConnect):
        the socket's error, else connect_ex again (EISCONN once connected). Any event may be
        a stale one, so one that finds the connect still going changes nothing."""
        sock = self.socket
        if self._done or sock is None:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not code:
            code = sock.connect_ex(self._target)
            if code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                return  # not yet
            if code == errno.EISCONN:
                code = 0
        if code:
            self._attempt_failed(_connect_error(code))
        else:
            self._connected()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def _close_socket(self) -> None:
        self._stop_writing()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        self._fd = -1

    def _attempt_failed(self, exc: BaseException) -> None:
        """This address did not take the connection: the next one, or the failure (the
        last address's, as HostnameEndpoint reports)."""
        self._close_socket()
        if self._addresses and not self._done:
            # In a later turn: the reactor may still hold an event of the closed socket
            # (doWrite after doRead), which must not reach the next attempt's socket.
            self.reactor.callLater(0, self._next_attempt, exc)
        else:
            self._failed(exc)

    def _next_attempt(self, exc: BaseException) -> None:
        if self._done:
            return
        if self._addresses:
            self._attempt(self._addresses.pop(0))
        else:
            self._failed(exc)

    def _timed_out(self) -> None:
        self._timer = None
        self._failed(neterror.TimeoutError())

    def _failed(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        self._close_socket()
        if self._starting:  # never inside the call that started the connect, as Twisted
            self.reactor.callLater(0, self.factory.clientConnectionFailed, self, Failure(exc))
        else:
            self.factory.clientConnectionFailed(self, Failure(exc))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _connected(self) -> None:
        sock = self.socket
        assert sock is not None
        try:
            peer = sock.getpeername()
        except OSError as e:
            self._attempt_failed(_connect_error(e.errno or errno.ENOTCONN))
            return
        self._done = True
        self._cancel_timer()
        self._stop_writing()
        self.socket = None  # the transport's from here
        wrapped = self.factory.buildProtocol(_address(peer, sock.family))
        if wrapped is None:
            sock.close()
            return
        TLSTransport(self.reactor, sock, self._new_connection, wrapped).start()

    def stopConnecting(self) -> None:
        self._failed(neterror.UserError(string="stopConnecting"))

    def getDestination(self) -> Any:
        return _address((self.host, self.port), socket.AF_INET6 if ":" in self.host else 0)


def _connect_error(code: int) -> BaseException:
    """As Twisted's TCP client says it (`error.getConnectError`)."""
    return neterror.getConnectError((code, os.strerror(code)))


def connect_tls(
    reactor: ITLSReactor,
    host: str,
    port: int,
    factory: Any,
    timeout: float,
    new_connection: Callable[[socket.socket], SSL.Connection],
) -> _Connector:
    """connectTCP's part for a TLS origin: connect `host` (a literal address or a name)
    within `timeout`, then run the protocol `factory` builds over a TLSTransport
    (client end); a connect that fails reaches `factory.clientConnectionFailed`, in a
    later turn, with the exception Twisted's TCP client gives (ConnectionRefusedError,
    TimeoutError, DNSLookupError, ...)."""
    connector = _Connector(reactor, host, port, factory, timeout, new_connection)
    connector.connect()
    return connector


# -- accepting (the client side) ---------------------------------------------------------


@implementer(IListeningPort, IReadDescriptor, ILoggingContext)
class TLSListener:
    """A listening socket accepted from by hand (the reactor's reader); each connection is
    the server end of TLS over a TLSTransport around what `build_wrapped(addr)` makes."""

    accepts_per_read = 32

    def __init__(
        self,
        reactor: ITLSReactor,
        sock: socket.socket,
        new_connection: Callable[[socket.socket], SSL.Connection],
        build_wrapped: Callable[[Any], IProtocol | None],
    ) -> None:
        self.reactor = reactor
        self.socket = sock
        sock.setblocking(False)
        self._fd = sock.fileno()
        self._new_connection = new_connection
        self._build_wrapped = build_wrapped
        self._listening = False

    def startListening(self) -> None:
        if not self._listening:
            self._listening = True
            self.reactor.addReader(self)

    def stopListening(self) -> None:
        if self._listening:
            self._listening = False
            self.reactor.removeReader(self)
            self.socket.close()
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "TLSListener"

    def getHost(self) -> Any:
        return _address(self.socket.getsockname(), self.socket.family)

    def doRead(self) -> None:
        for _ in range(self.accepts_per_read):
            try:
                conn, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                if e.errno in (
                    errno.EMFILE,
                    errno.ENFILE,
                    errno.ENOBUFS,
                    errno.ENOMEM,
                    errno.ECONNABORTED,
                ):
                    return None
                raise
            wrapped = self._build_wrapped(_address(addr, conn.family))
            if wrapped is None:
                conn.close()
                continue
            try:
                TLSTransport(self.reactor, conn, self._new_connection, wrapped, accept=True).start()
            except OSError:
                conn.close()  # gone before we looked (getpeername on a reset socket)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()
