"""The admin site on twisted.web: token auth, reload, config views (SPEC §5)."""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from edgenode.hostnames import normalize_request_host
from edgenode.runtime import RuntimeHolder, certificates_view, effective_config, effective_domain

log = Logger()

MAX_ADMIN_BODY = 65536  # the admin API takes no real bodies; anything larger is refused


@attrs.frozen
class ReloadResult:
    """The outcome of one reload: the new generation and diff, or the problems.

    With worker processes, `workers` holds each worker's answer, and a config the
    supervisor applied that a worker rejected or never confirmed is not `ok` either:
    it has a diff (`changed`) and `errors` naming the workers.
    """

    ok: bool
    generation: int
    changed: dict[str, Any] | None = None
    errors: tuple[dict[str, str], ...] = ()
    workers: tuple[dict[str, Any], ...] = ()

    @property
    def status(self) -> int:
        """200 applied; 422 rejected, nothing changed; 500 applied, but not by every worker."""
        if self.ok:
            return 200
        return 422 if self.changed is None else 500

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"generation": self.generation}
        if self.changed is not None:
            restart = self.changed.get("restart_required", [])
            body["changed"] = {k: v for k, v in self.changed.items() if k != "restart_required"}
            body["restart_required"] = restart
        if not self.ok:
            body["errors"] = list(self.errors)
        if self.workers:
            body["workers"] = list(self.workers)
        return body


class ClusterView(Protocol):
    """What the admin API shows of a fleet edge's etcd (edgenode.control.cluster)."""

    def health(self) -> dict[str, Any]:
        """/healthz's `cluster` block: state, revision, last_error."""
        ...

    def domains_source(self) -> dict[str, Any]:
        """GET /config's `domains_source`: etcd's endpoints, prefix, revision."""
        ...


FILE_SOURCE: dict[str, Any] = {"kind": "file"}  # domains_source of an edge without cluster


def ensure_token(path: Path) -> str:
    """The admin token from `path`, created (mode 0600, random) if the file is missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"admin token file {path} is empty") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("created admin token file {path} (mode 0600)", path=str(path))
    return token


class AdminResource(Resource):
    """Every endpoint of the admin API; all but GET /healthz need the bearer token."""

    isLeaf = True

    def __init__(
        self,
        holder: RuntimeHolder,
        token: str,
        reload: Callable[[str], Deferred[ReloadResult]],
        metrics: Callable[[], bytes] | None = None,
        workers: Callable[[], list[dict[str, Any]]] | None = None,
        health: Callable[[str], list[dict[str, object]] | None] | None = None,
        cluster: ClusterView | None = None,
    ) -> None:
        super().__init__()
        self._health = health  # per-origin health of a domain, in a process that serves
        self.holder = holder
        self._expected = f"Bearer {token}".encode()
        self._reload = reload
        self._metrics = metrics
        self._workers = workers  # a supervisor's view of its worker processes
        self._cluster = cluster  # a fleet edge's etcd (SPEC §9)

    def render(self, request: Request) -> bytes:
        path = request.path.rstrip(b"/") or b"/"
        method = request.method
        if path == b"/healthz":
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed(request, b"GET")
            health: dict[str, Any] = {
                "status": "ok",
                "generation": self.holder.current.generation,
            }
            if self._workers is not None:
                workers = self._workers()
                health["workers"] = {
                    "configured": len(workers),
                    "ready": sum(1 for w in workers if w["ready"]),
                }
            if self._cluster is not None:
                health["cluster"] = self._cluster.health()
            return _json(request, 200, health)
        if not self._authorized(request):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="edgenode admin"')
            return _json(
                request, 401, {"error": "unauthorized", "detail": "missing or wrong bearer token"}
            )
        if path == b"/reload":
            if method != b"POST":
                return _method_not_allowed(request, b"POST")
            return self._reload_reply(request, self._reload("admin"))
        if path == b"/workers" and self._workers is not None:
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed(request, b"GET")
            return _json(request, 200, {"workers": self._workers()})
        if path == b"/config":
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed(request, b"GET")
            view = effective_config(self.holder.current)
            source = self._cluster.domains_source() if self._cluster else FILE_SOURCE
            return _json(request, 200, {**view, "domains_source": source})
        if path == b"/certificates":
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed(request, b"GET")
            runtime = self.holder.current
            return _json(
                request,
                200,
                {
                    "listen_tls": runtime.config.listen_tls,
                    "unknown_sni": runtime.config.tls.unknown_sni,
                    "client_min_version": runtime.config.tls.client_min_version,
                    "certificates": certificates_view(runtime),
                },
            )
        if path == b"/metrics" and self._metrics is not None:
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed(request, b"GET")
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            return self._metrics()
        if path.startswith(b"/domains/"):
            if method not in (b"GET", b"HEAD"):
                return _method_not_allowed(request, b"GET")
            return self._domain(request, path[len(b"/domains/") :])
        return _json(
            request, 404, {"error": "not_found", "detail": f"no admin endpoint {_text(path)}"}
        )

    def _reload_reply(self, request: Request, result: Deferred[ReloadResult]) -> Any:
        """Answer when the reload is done: at once in an edge, once every worker has answered
        in a supervisor. A client that leaves does not cancel the reload: a supervisor has
        applied it and must see it through on every worker."""
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answer(status: int, body: dict[str, Any]) -> None:
            if not gone:
                data = _json(request, status, body)
                # Framed as a body returned from render() is, whenever the answer comes.
                request.setHeader(b"Content-Length", b"%d" % len(data))
                request.write(data)
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("reload failed", failure)
            answer(500, {"error": "internal_error", "detail": "the reload failed; see the log"})

        result.addCallbacks(lambda outcome: answer(outcome.status, outcome.to_json()), failed)
        return NOT_DONE_YET

    def _authorized(self, request: Request) -> bool:
        given = request.getHeader(b"authorization") or b""
        return hmac.compare_digest(given, self._expected)

    def _domain(self, request: Request, raw: bytes) -> bytes:
        name = normalize_request_host(raw) if b"/" not in raw else None
        runtime = self.holder.current
        domain = runtime.domains.get(name) if name else None
        if domain is None:
            return _json(
                request, 404, {"error": "unknown_domain", "detail": f"no domain {_text(raw)!r}"}
            )
        body = effective_domain(domain.config)
        body["generation"] = runtime.generation
        if domain.watched:
            states = self._health(domain.config.name) if self._health is not None else None
            # A supervisor serves nothing: each worker keeps its own (see /metrics).
            body["origin_health"] = states or "kept by each worker; see edgenode_origin_up"
        return _json(request, 200, body)


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")[:200]


def _json(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2).encode() + b"\n"


def _method_not_allowed(request: Request, allowed: bytes) -> bytes:
    request.setHeader(b"Allow", allowed)
    return _json(request, 405, {"error": "method_not_allowed", "allowed": allowed.decode()})


class _CappedRequest(Request):
    """A request whose body may not exceed MAX_ADMIN_BODY: 413 and close, unread.

    twisted.web reads (and spools to disk) any body before the resource runs; the admin
    API takes no bodies, so a large one is refused as soon as its length is known.
    """

    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_ADMIN_BODY:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        content = self.content
        assert content is not None  # gotLength made it
        if content.tell() + len(data) > MAX_ADMIN_BODY:  # chunked: counted as it comes
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            # The admin API reads no query. Dropping it here keeps a token put there out of
            # every log line: ours, and twisted.web's, which print request.uri and repr(request).
            super().requestReceived(command, path.split(b"?", 1)[0], version)

    def _refuse_body(self) -> None:
        self._refused = True
        self.requestHeaders.removeHeader(b"expect")  # or "100 Continue" would follow the 413
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            body = {"error": "request_too_large", "limit": MAX_ADMIN_BODY}
            transport.write(_raw_error(b"413 Content Too Large", body))
            transport.loseConnection()
        log.info("admin request refused: body above {limit} bytes", limit=MAX_ADMIN_BODY)


def _raw_error(status: bytes, body: dict[str, Any]) -> bytes:
    """A whole JSON error response for the transport, for refusals made outside any resource."""
    payload = json.dumps(body).encode()
    return (
        b"HTTP/1.1 %b\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (status, len(payload), payload)
    )


class _AdminChannel(HTTPChannel):
    """An admin connection that, like nginx and the data port, bounds each request head.

    twisted.web's only timer is an idle one that every byte resets, so a client trickling
    a head (slowloris) or leaving one half sent held the connection for ever. Here the
    whole head must arrive within `header_timeout` of the connection opening, or of its
    first byte on a kept-alive connection (before that, the idle timer runs); if not, 408
    and close. Line endings must be CRLF: a bare LF gets 400 and close, where twisted.web
    waited for a CRLF that never came.
    """

    delimiter = b"\n"  # split at LF, so that a line without its CR can be seen and refused
    header_timeout = 10.0  # set per connection by AdminSite
    _head_deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()  # starts the idle timer
        self._start_head_clock()  # a new connection owes its first head at once

    def dataReceived(self, data: bytes) -> None:
        if self.line_mode and self._head_deadline is None:
            self._start_head_clock()  # the next head on a kept-alive connection has begun
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not line.endswith(b"\r"):
            self._refuse(b"400 Bad Request", "request head lines must end in CRLF")
            return
        super().lineReceived(line[:-1])

    def allHeadersReceived(self) -> None:
        self._stop_head_clock()
        super().allHeadersReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_head_clock()
        super().connectionLost(reason)

    def _start_head_clock(self) -> None:
        self._head_deadline = self.callLater(self.header_timeout, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        detail = f"the request head did not arrive within {self.header_timeout:g}s"
        body = {"error": "request_timeout", "detail": detail}
        self._write(_raw_error(b"408 Request Timeout", body))
        self.timeoutConnection()  # close, and abort if the client does not take the 408

    def _refuse(self, status: bytes, detail: str) -> None:
        self._stop_head_clock()
        self._write(_raw_error(status, {"error": "bad_request", "detail": detail}))
        self.loseConnection()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


class AdminSite(Site):
    """The admin site; its request log goes to the twistd log with no query or header values.

    Each connection takes the head and idle timeouts of the config running when it
    opens (`limits.client_header_timeout`, `limits.client_idle_timeout`), as the data
    port does, so a reload changes them for new admin connections too.
    """

    protocol = _AdminChannel  # type: ignore[assignment]
    requestFactory = _CappedRequest

    def __init__(self, resource: AdminResource) -> None:
        super().__init__(resource, requestFactory=_CappedRequest)
        self.displayTracebacks = False
        self._holder = resource.holder

    # twisted.web types Site.protocol and buildProtocol as its generic channel wrapper;
    # a Site may use any HTTPChannel (it builds `protocol` and sets timeOut on it).
    def buildProtocol(self, addr: IAddress | None) -> _AdminChannel:  # type: ignore[override]
        channel = super().buildProtocol(addr)
        assert isinstance(channel, _AdminChannel)
        limits = self._holder.current.config.limits
        channel.header_timeout = limits.client_header_timeout
        channel.timeOut = limits.client_idle_timeout  # type: ignore[assignment]  # float is fine
        return channel

    def log(self, request: http.Request) -> None:
        log.info(
            "admin {method} {path} -> {code}",
            method=_text(request.method),
            path=_text(request.path),
            code=request.code,
        )
