"""The edge's own Python cost per request, in memory: no sockets, no TLS, no wrk.

One keep-alive client connection and one pooled origin connection (a plain-HTTP route)
on a MemoryReactorClock, wired exactly as the edge's DataPath (control/serving.py) wires
the real thing, with the access log and metrics on. It sends N requests through and
reports CPU µs per request, then (with --profile) where the time goes. Deterministic
enough to compare two commits on a busy machine, which wrk runs are not; it leaves out
the kernel and OpenSSL, which bench/run.py measures against nginx.

    python3 bench/inproc.py [--requests 20000] [--body 1024] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgenode.accesslog import AccessLog
from edgenode.config import config_from_mapping
from edgenode.datapath.downstream import DownstreamFactory
from edgenode.datapath.monitor import Monitor
from edgenode.datapath.pool import OriginPool
from edgenode.datapath.proxy import Proxy
from edgenode.runtime import RuntimeHolder, build_runtime

REQUEST = (
    b"GET /1k HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
    b"Accept-Encoding: gzip\r\n\r\n"
)


class _TCPTransport(StringTransport):
    def getHandle(self) -> None:
        return None


def build(log_path: Path):
    config = config_from_mapping(
        {
            "domains": {
                "bench.test": {
                    "origin_protocol": "http",
                    "origins": [{"address": "192.0.2.1", "port": 8080}],
                }
            }
        },
        base_dir=Path("."),
    )
    reactor = MemoryReactorClock()
    holder = RuntimeHolder(build_runtime(config, 1))
    pool = OriginPool(reactor, max_per_server=16, queue_timeout=5)
    proxy = Proxy(holder, pool, AccessLog(log_path), reactor, Monitor(reactor, pool))
    factory = DownstreamFactory(proxy, config.limits, reactor)
    client = factory.buildProtocol(None)
    client_transport = _TCPTransport()
    client.makeConnection(client_transport)
    return reactor, client, client_transport


def run(n: int, body: int, log_path: Path) -> float:
    reactor, client, client_out = build(log_path)
    response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 11:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
        b"Connection: keep-alive\r\nETag: \"abc\"\r\n\r\n" % body
    ) + b"x" * body
    # The first request makes the one origin connection; later ones reuse it.
    client.dataReceived(REQUEST)
    origin = reactor.tcpClients[0][2].buildProtocol(None)
    origin_out = StringTransport()
    origin.makeConnection(origin_out)
    origin.dataReceived(response)
    start = time.process_time()
    for _ in range(n):
        client_out.clear()
        origin_out.clear()
        client.dataReceived(REQUEST)
        origin.dataReceived(response)
    elapsed = time.process_time() - start
    assert client_out.value().startswith(b"HTTP/1.1 200 OK"), client_out.value()[:200]
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--once", action="store_true", help="one run, no warm-up (for valgrind --tool=callgrind)"
    )
    args = parser.parse_args()
    if args.once:
        with tempfile.TemporaryDirectory() as tmp:
            run(args.requests, args.body, Path(tmp) / "access.log")
        return
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "access.log"
        run(2000, args.body, log_path)  # warm-up
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run(args.requests, args.body, log_path)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        best = min(run(args.requests, args.body, log_path) for _ in range(3))
    print(f"edge Python cost: {best:.1f} µs CPU per request (best of 3 x {args.requests})")


if __name__ == "__main__":
    main()
