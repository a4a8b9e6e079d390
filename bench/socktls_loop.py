"""TLS transports over a real loopback TCP connection and a real reactor: memory BIOs over
Twisted's TCP transport (`bio`, tlstransport.TLSTransport) against pyOpenSSL on the socket
(`sock`, socktls.SocketTLSTransport). A client and a server in one process, one
connection; each round trip is a 1 KiB request (client write, server read) and a 1 KiB
response (server write, client read): the two TLS reads and two TLS writes the edge makes
per HTTPS request, plus the reactor turns between them.

    python3 bench/socktls_loop.py MODE N [WARMUP]   # prints CPU µs per round trip (user+sys)

Under callgrind the difference of two runs removes the set-up (user-space instructions
only: the kernel's share of the system calls is not counted):

    PY=$(python3 -c 'import sys; print(sys.executable)')   # not a pyenv shim: valgrind it
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.200 $PY bench/socktls_loop.py sock 200
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.1200 $PY bench/socktls_loop.py sock 1200
"""

from __future__ import annotations

import os
import resource
import socket
import sys

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import epollreactor

epollreactor.install()
from twisted.internet import reactor  # noqa: E402
from twisted.internet.interfaces import IHandshakeListener  # noqa: E402
from twisted.internet.protocol import ClientFactory, Protocol  # noqa: E402
from zope.interface import implementer  # noqa: E402

from edgenode.datapath import socktls, tlstransport  # noqa: E402

SIZE = int(os.environ.get("SIZE", "1024"))
mode = sys.argv[1]
n = int(sys.argv[2])
warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 0

ca = trustme.CA()
leaf = ca.issue_cert("a.test")
sctx = SSL.Context(SSL.TLS_METHOD)
sctx.use_certificate(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
sctx.use_privatekey(serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None))
cctx = SSL.Context(SSL.TLS_METHOD)
if os.environ.get("TLS12"):
    cctx.set_max_proto_version(SSL.TLS1_2_VERSION)


class Server(Protocol):
    got = 0

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)
        while self.got >= SIZE:
            self.got -= SIZE
            self.transport.write(b"R" * SIZE)


@implementer(IHandshakeListener)
class Client(Protocol):
    got = 0
    done = 0
    t0: tuple[float, float] | None = None

    def handshakeCompleted(self) -> None:
        self.transport.write(b"Q" * SIZE)

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < SIZE:
            return
        self.got -= SIZE
        self.done += 1
        if self.done == warmup:
            self.t0 = cpu()
        if self.done == warmup + n:
            reactor.stop()
            return
        self.transport.write(b"Q" * SIZE)


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


client = Client()

if mode == "bio":
    port = reactor.listenTCP(
        0,
        tlstransport.ClientTLSFactory(lambda: SSL.Connection(sctx, None), lambda a: Server()),
        interface="127.0.0.1",
    )
    wrapped = ClientFactory.forProtocol(lambda: client)
    wrapped.buildProtocol = lambda addr: client
    reactor.connectTCP(
        "127.0.0.1",
        port.getHost().port,
        tlstransport.OriginTLSFactory(lambda: SSL.Connection(cctx, None), wrapped),
    )
elif mode == "sock":
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    listener = socktls.TLSListener(
        reactor, lsock, lambda s: SSL.Connection(sctx, s), lambda a: Server()
    )
    listener.startListening()
    wrapped = ClientFactory()
    wrapped.buildProtocol = lambda addr: client
    socktls.connect_tls(
        reactor,
        "127.0.0.1",
        lsock.getsockname()[1],
        wrapped,
        5.0,
        lambda s: SSL.Connection(cctx, s),
    )
else:
    raise SystemExit(f"mode: bio or sock, not {mode!r}")

reactor.run()
t1 = cpu()
assert client.done == warmup + n, client.done
if client.t0 is not None:
    user = (t1[0] - client.t0[0]) / n * 1e6
    system = (t1[1] - client.t0[1]) / n * 1e6
    print(
        f"{mode} size={SIZE} n={n}: {user + system:.2f} µs CPU per round trip "
        f"(user {user:.2f}, sys {system:.2f})"
    )
