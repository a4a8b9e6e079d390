"""The TLS layer's own cost: the edge's TLS transport (edgenode/datapath/tlstransport.py)
on both ends of a real loopback TCP connection, on a real reactor. A client
(`connect_tls`) and a server (`TLSListener`) in one process, one connection; each round
trip is a 1 KiB request (client write, server read) and a 1 KiB response (server write,
client read): the two TLS reads and two TLS writes the edge makes per HTTPS request, plus
the reactor turns between them.

    python3 bench/tlsloop.py N [WARMUP]   # prints CPU µs per round trip (user+sys)

Under callgrind the difference of two runs removes the set-up (user-space instructions
only: the kernel's share of the system calls is not counted):

    PY=$(python3 -c 'import sys; print(sys.executable)')   # not a pyenv shim: valgrind it
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.200 $PY bench/tlsloop.py 200
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.1200 $PY bench/tlsloop.py 1200
    # (totals of cg.1200 - totals of cg.200) / 1000 = instructions per round trip

SIZE=N changes the message size; TLS12=1 caps the client at TLS 1.2.
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

from edgenode.datapath import tlstransport  # noqa: E402

SIZE = int(os.environ.get("SIZE", "1024"))
n = int(sys.argv[1])
warmup = int(sys.argv[2]) if len(sys.argv) > 2 else 0

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

lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
listener = tlstransport.TLSListener(
    reactor, lsock, lambda s: SSL.Connection(sctx, s), lambda a: Server()
)
listener.startListening()
wrapped = ClientFactory()
wrapped.buildProtocol = lambda addr: client
tlstransport.connect_tls(
    reactor,
    "127.0.0.1",
    lsock.getsockname()[1],
    wrapped,
    5.0,
    lambda s: SSL.Connection(cctx, s),
)

reactor.run()
t1 = cpu()
assert client.done == warmup + n, client.done
if client.t0 is not None:
    user = (t1[0] - client.t0[0]) / n * 1e6
    system = (t1[1] - client.t0[1]) / n * 1e6
    print(
        f"size={SIZE} n={n}: {user + system:.2f} µs CPU per round trip "
        f"(user {user:.2f}, sys {system:.2f})"
    )
