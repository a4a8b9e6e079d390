"""The TLS layer's own cost: 1 KiB request and 1 KiB response through two TLSTransports
(edgenode/datapath/tlstransport.py), client and server, wired to each other in memory.

No sockets and no reactor, so under callgrind the instruction count per round trip is
repeatable on a busy machine; the difference of two runs removes the set-up:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.200 python3 bench/tlsloop.py 200
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.700 python3 bench/tlsloop.py 700
    # (totals of cg.700 - totals of cg.200) / 500 = instructions per round trip

`python3 bench/tlsloop.py N off` turns the record framer off (reads go on until OpenSSL
raises WantReadError, as before it), to measure what it saves.
"""

import sys

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from edgenode.datapath import tlstransport

if len(sys.argv) > 2 and sys.argv[2] == "off":
    tlstransport._RecordFramer.feed = lambda self, data: -1

ca = trustme.CA()
leaf = ca.issue_cert("a.test")
sctx = SSL.Context(SSL.TLS_METHOD)
sctx.use_certificate(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
sctx.use_privatekey(serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None))
cctx = SSL.Context(SSL.TLS_METHOD)


class Pipe(StringTransport):
    peer = None

    def getHandle(self):
        return None

    def write(self, data):
        self.peer_proto.dataReceived(data)


class Server(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"R" * 1024)


class Client(Protocol):
    got = 0

    def dataReceived(self, data):
        self.got += len(data)


c_app, s_app = Client(), Server()
ct = tlstransport.TLSTransport(lambda: SSL.Connection(cctx, None), c_app)
st = tlstransport.TLSTransport(lambda: SSL.Connection(sctx, None), s_app, accept=True)
c_tcp, s_tcp = Pipe(), Pipe()
c_tcp.peer_proto = st
s_tcp.peer_proto = ct
st.makeConnection(s_tcp)
ct.makeConnection(c_tcp)
n = int(sys.argv[1])
req = b"Q" * 1024
for _ in range(n):
    c_app.transport.write(req)
assert c_app.got == n * 1024, c_app.got
