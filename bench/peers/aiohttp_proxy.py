#!/usr/bin/env python3
"""The Python peer of the bench: an aiohttp + uvloop reverse proxy doing the edge's job.

    python3 bench/peers/aiohttp_proxy.py --port 8080 --origin 127.0.0.1:8443 \\
        --ca-file ca.pem --route bench-a.test=bench-a.test --route bench-b.test=bench-b.test

The same job as edgenode and the nginx edge of bench/run.py, written the way an asyncio
engineer would, with the best asyncio stack (issue 16: "the table shows edgenode against
the best asyncio stack as well as nginx"):

- one process, one uvloop event loop, aiohttp.web on the client side;
- routes by Host (port ignored, case-insensitive) to the origin; an unknown Host gets 404;
- HTTPS to the origin with SNI = the route's origin SNI, the certificate verified against
  `--ca-file` and that name (`ssl.SSLContext` with `check_hostname`, `server_hostname=`);
- one `ClientSession` whose `TCPConnector` keeps a keep-alive pool; aiohttp's pool key
  holds `server_hostname`, so a connection opened for one SNI never serves another (with
  an aiohttp whose key does not, each SNI gets a context object of its own, which is in
  the key);
- bodies stream both ways: the request body is handed to the client as an async iterator
  of its chunks, the response relayed chunk by chunk (`iter_chunked`) into a
  `StreamResponse`, never held whole; the transport's write buffer gives backpressure;
- hop-by-hop headers dropped both ways (RFC 9110 §7.6.1: Connection and every header it
  names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade);
  X-Forwarded-For appended to, X-Forwarded-Proto and -Host and Via set, and
  X-Edge-Request-Id on the response: the headers edgenode and the bench's nginx set;
- no access log unless `--access-log PATH`: then one JSON line per request (the fields of
  the bench's nginx log format), written through a 64 KiB buffer flushed every second,
  as nginx's `buffer=64k flush=1s`.

Optionally an HTTPS listener for clients (`--tls-port`, `--tls-cert`, `--tls-key`), the
same proxying behind it. At start it prints one line naming the versions and the event
loop class, so the bench can prove what ran.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict

try:
    import orjson

    def dump_line(record: dict[str, Any]) -> bytes:
        return orjson.dumps(record) + b"\n"

except ImportError:  # pragma: no cover - orjson comes with edgenode
    import json

    def dump_line(record: dict[str, Any]) -> bytes:
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"


# RFC 9110 §7.6.1, plus Proxy-Connection (RFC 9112 appendix C.2.2). Lower case.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by this proxy, never copied from the client; and Expect, which aiohttp.web has
# already answered (100 Continue) when the handler reads the body.
REQUEST_SET = frozenset({"host", "x-forwarded-proto", "x-forwarded-host", "via", "expect"})
CHUNK = 65536


def end_to_end(headers: Iterable[tuple[str, str]], connection: str | None) -> CIMultiDict[str]:
    """The headers minus hop-by-hop ones and those the Connection header names."""
    named = HOP_BY_HOP
    if connection:
        named = named | {t.strip().lower() for t in connection.split(",") if t.strip()}
    return CIMultiDict((k, v) for k, v in headers if k.lower() not in named)


class Proxy:
    """The request handler: route, forward with the pooled session, relay the response."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.origin_host, port = args.origin.rsplit(":", 1)
        self.origin_port = int(port)
        self.origin_label = f"{self.origin_host}:{self.origin_port}"
        self.routes: dict[str, str] = {}  # Host (lower case, no port) -> origin SNI
        for route in args.route:
            host, _, sni = route.partition("=")
            self.routes[host.lower()] = sni or host
        trust = ssl.create_default_context(cafile=args.ca_file)  # check_hostname, CERT_REQUIRED
        key_fields = getattr(aiohttp.client_reqrep, "ConnectionKey", None)
        separate = "server_hostname" not in getattr(key_fields, "_fields", ())
        # One context for every route when the pool key holds the SNI; else one per SNI.
        self.contexts = {
            sni: (ssl.create_default_context(cafile=args.ca_file) if separate else trust)
            for sni in set(self.routes.values())
        }
        self.pool_limit = args.pool_limit
        self.session: aiohttp.ClientSession | None = None
        self.log_file = open(args.access_log, "ab", buffering=CHUNK) if args.access_log else None  # noqa: SIM115 - closed in close()
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)

    async def start(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.pool_limit, limit_per_host=0, keepalive_timeout=300, ttl_dns_cache=None
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=self.timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        if self.log_file is not None:
            asyncio.get_running_loop().call_later(1.0, self.flush_log)

    async def close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()
        if self.log_file is not None:
            self.log_file.close()

    def flush_log(self) -> None:
        if self.log_file is not None and not self.log_file.closed:
            self.log_file.flush()
            asyncio.get_running_loop().call_later(1.0, self.flush_log)

    async def body_of(self, request: web.Request) -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        request_id = os.urandom(16).hex()
        host_header = request.headers.get("Host", "")
        host = host_header.rsplit(":", 1)[0].lower() if host_header else ""
        sni = self.routes.get(host)
        if sni is None:
            return self.finish(
                request,
                web.Response(status=404, text="unknown domain\n"),
                started,
                request_id,
                host,
                "-",
                0,
            )
        client_ip = request.remote or ""
        headers = end_to_end(request.headers.items(), request.headers.get("Connection"))
        for name in REQUEST_SET:
            headers.popall(name, None)
        forwarded = request.headers.getall("X-Forwarded-For", [])
        headers.popall("X-Forwarded-For", None)
        headers["X-Forwarded-For"] = ", ".join([*forwarded, client_ip])
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = host_header
        headers["Via"] = f"1.{request.version.minor} aiohttp"
        headers["Host"] = host_header
        has_body = request.body_exists
        if not has_body:
            headers.popall("Content-Length", None)
        assert self.session is not None
        url = f"https://{self.origin_label}{request.raw_path}"
        try:
            upstream = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=self.body_of(request) if has_body else None,
                allow_redirects=False,
                server_hostname=sni,
                ssl=self.contexts[sni],
            )
        except TimeoutError:
            return self.finish(
                request,
                web.Response(status=504, text="origin timeout\n"),
                started,
                request_id,
                host,
                "-",
                0,
            )
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            text = f"origin error: {type(exc).__name__}\n"
            return self.finish(
                request, web.Response(status=502, text=text), started, request_id, host, "-", 0
            )
        out_headers = end_to_end(
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers),
            upstream.headers.get("Connection"),
        )
        out_headers["X-Edge-Request-Id"] = request_id
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=out_headers
        )
        sent = 0
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)  # waits while the client's buffer is full
                sent += len(chunk)
            await response.write_eof()
        except ConnectionError:
            # The client left (ConnectionResetError, aiohttp's ClientConnectionResetError):
            # the origin connection, its body unread, is closed rather than pooled.
            upstream.close()
        except (aiohttp.ClientError, OSError):
            # The origin failed mid-body after the head went out: the client must see a
            # truncated response, so its connection is closed too.
            upstream.close()
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.release()
        return self.finish(request, response, started, request_id, host, upstream.status, sent)

    def finish(
        self,
        request: web.Request,
        response: web.StreamResponse,
        started: float,
        request_id: str,
        host: str,
        origin_status: int | str,
        sent: int,
    ) -> web.StreamResponse:
        if self.log_file is not None:
            self.log_file.write(
                dump_line(
                    {
                        "ts": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                        "request_id": request_id,
                        "client": request.remote,
                        "method": request.method,
                        "host": host,
                        "path": request.raw_path,
                        "status": response.status,
                        "body_bytes_sent": sent,
                        "duration_s": round(time.monotonic() - started, 6),
                        "origin": self.origin_label if origin_status != "-" else "-",
                        "origin_status": str(origin_status),
                    }
                )
            )
        return response


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="plain HTTP port")
    parser.add_argument("--origin", required=True, help="ADDRESS:PORT of the TLS origin")
    parser.add_argument("--ca-file", required=True, help="PEM CA that origin certificates chain to")
    parser.add_argument(
        "--route",
        action="append",
        required=True,
        metavar="HOST[=SNI]",
        help="a domain served, and the SNI (and verify name) to the origin (default: HOST)",
    )
    parser.add_argument("--pool-limit", type=int, default=256, help="origin connections at most")
    parser.add_argument("--access-log", metavar="PATH", help="one JSON line per request")
    parser.add_argument("--tls-port", type=int, help="also an HTTPS listener on this port")
    parser.add_argument("--tls-cert", help="PEM certificate chain of the HTTPS listener")
    parser.add_argument("--tls-key", help="PEM key of the HTTPS listener")
    args = parser.parse_args(argv)
    if args.tls_port is not None and not (args.tls_cert and args.tls_key):
        parser.error("--tls-port needs --tls-cert and --tls-key")
    return args


async def serve(args: argparse.Namespace) -> None:
    proxy = Proxy(args)
    app = web.Application(client_max_size=0)
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.close)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
    if args.tls_port is not None:
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.minimum_version = ssl.TLSVersion.TLSv1_2
        server_tls.load_cert_chain(args.tls_cert, args.tls_key)
        await web.TCPSite(
            runner, args.host, args.tls_port, ssl_context=server_tls, backlog=1024
        ).start()
    loop = asyncio.get_running_loop()
    print(
        f"aiohttp_proxy: pid {os.getpid()}, aiohttp {aiohttp.__version__}, uvloop "
        f"{uvloop.__version__}, loop {type(loop).__module__}.{type(loop).__qualname__}, "
        f"listening on {args.host}:{args.port}"
        + (f" and https {args.host}:{args.tls_port}" if args.tls_port else "")
        + f", access log {'off' if not args.access_log else args.access_log}",
        flush=True,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
