"""The etcd v3 client of a fleet edge (SPEC §9): range, txn and watch through etcd's
HTTP/JSON gateway, on the reactor (treq over Twisted's `Agent`; no thread, no gRPC).

The gateway speaks etcd's protobuf messages as JSON: keys and values are base64, 64-bit
integers are strings, fields at their default value are left out, and a watch is a POST
whose response body is a stream of JSON objects, one per line. This module turns that
into small frozen values (`Snapshot`, `Batch`, `TxnResult`) and one exception family
(`EtcdError`), so that no treq or Twisted exception reaches a caller.

Endpoints are tried in turn, starting with the last one that answered. A request that
may already have reached etcd is tried on the next endpoint only when repeating it is
harmless (a range, a watch); a transaction is repeated only when it certainly was not
sent, so a lost answer never applies it twice (the caller gets `EtcdUnavailable` saying
the outcome is unknown).

Keys are text: UTF-8, with undecodable bytes kept as surrogates (`surrogateescape`), so
every key etcd holds round-trips through `str` unchanged.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs
from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.interfaces import (
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgent, IResponse

_T = TypeVar("_T")


class IEtcdReactor(IReactorTCP, IReactorTime, IReactorPluggableNameResolver):
    """What the etcd client needs of the reactor: what treq's `Agent` connects with
    (TCP, time, name resolution), as treq types it (`_ITreqReactor`)."""


# --- Values ----------------------------------------------------------------------------------


@attrs.frozen
class KeyValue:
    """One key under a prefix as etcd holds it."""

    key: str
    value: bytes
    mod_revision: int  # the revision of the last write to this key


@attrs.frozen
class Snapshot:
    """Every key under a prefix, read at one revision (etcd's header revision)."""

    revision: int
    items: Mapping[str, KeyValue]


EventKind = Literal["put", "delete"]


@attrs.frozen
class Event:
    """One change to one key; a delete has no value."""

    kind: EventKind
    key: str
    value: bytes | None
    mod_revision: int


@attrs.frozen
class Batch:
    """The events of one watch message: one revision (one transaction), or, while a
    watch catches up on history, several whole revisions at once.

    `revision` is the highest `mod_revision` of its events: once the batch is applied the
    consumer holds everything up to it, and a watch resumed from `revision + 1` misses
    nothing. (The message's header revision is etcd's current one, which while catching
    up can be ahead of the events the message carries.)
    """

    revision: int
    events: tuple[Event, ...]


@attrs.frozen
class TxnResult:
    """Whether the transaction's compares held (so `success` ran, else `failure`), and
    the revision etcd was at after it."""

    succeeded: bool
    revision: int


# --- Errors ----------------------------------------------------------------------------------


class EtcdError(Exception):
    """etcd refused a request or answered with something unexpected; the message names the
    endpoint(s) involved, which are also in `endpoints`."""

    def __init__(self, message: str, endpoints: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.endpoints = tuple(endpoints)


class EtcdUnavailable(EtcdError):
    """No endpoint answered (refused, timed out, connection lost), or a watch stream ended."""


class Compacted(EtcdError):
    """The revision asked for is older than etcd's history: re-read everything.

    `compact_revision` is the oldest revision etcd still has.
    """

    def __init__(self, message: str, compact_revision: int, endpoints: Sequence[str] = ()) -> None:
        super().__init__(message, endpoints)
        self.compact_revision = compact_revision


# --- Keys and transaction operations ---------------------------------------------------------


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _key_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def prefix_range_end(prefix: bytes) -> bytes:
    """The `range_end` that makes [prefix, range_end) every key starting with `prefix`:
    the prefix with its last byte below 0xff incremented and the rest dropped (etcd
    clientv3's GetPrefixRangeEnd); b"\\0" (every key from prefix on) if there is none."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"


def _prefix_range(prefix: str) -> dict[str, str]:
    raw = _key_bytes(prefix)
    return {"key": _b64(raw), "range_end": _b64(prefix_range_end(raw))}


def put_op(key: str, value: bytes) -> dict[str, Any]:
    """A transaction operation that sets `key` to `value`."""
    return {"request_put": {"key": _b64(_key_bytes(key)), "value": _b64(value)}}


def delete_op(key: str) -> dict[str, Any]:
    """A transaction operation that deletes `key` (nothing if it is absent)."""
    return {"request_delete_range": {"key": _b64(_key_bytes(key))}}


CompareOp = Literal["=", "!=", "<", ">"]
_COMPARE_RESULTS: dict[str, str] = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


def compare_mod_revision(key: str, op: CompareOp, revision: int) -> dict[str, Any]:
    """A transaction compare: `key`'s mod_revision `op` `revision`. An absent key has
    mod_revision 0, so `compare_mod_revision(k, "=", 0)` means "k does not exist"."""
    return {
        "key": _b64(_key_bytes(key)),
        "target": "MOD",
        "result": _COMPARE_RESULTS[op],
        "mod_revision": str(revision),
    }


def compare_prefix_mod_revision(prefix: str, op: CompareOp, revision: int) -> dict[str, Any]:
    """A transaction compare over every key under `prefix` (etcd compares each key of the
    range and needs all of them to hold; an empty range compares as one absent key, whose
    mod_revision is 0).

    `compare_prefix_mod_revision(prefix, "<", rev + 1)` holds when no key under the prefix
    was created or changed after revision `rev`. It cannot see a delete, since a deleted
    key is no longer in the range: `unchanged_since` adds what does.
    """
    compare = compare_mod_revision(prefix, op, revision)
    compare["range_end"] = _prefix_range(prefix)["range_end"]
    return compare


def unchanged_since(prefix: str, snapshot: Snapshot) -> list[dict[str, Any]]:
    """Compares that hold only if nothing under `prefix` changed since `snapshot` was read:
    no key created or modified (one compare over the prefix) and none deleted (one
    `mod_revision =` compare per key of the snapshot; a deleted key compares as 0).

    This is what a read-then-write transaction (`edgenode push`) guards with, so that the
    second of two concurrent writers fails instead of overwriting what it never saw. etcd
    bounds the compares of one transaction (`--max-txn-ops`, 128 by default).
    """
    kept = [compare_mod_revision(kv.key, "=", kv.mod_revision) for kv in snapshot.items.values()]
    return [compare_prefix_mod_revision(prefix, "<", snapshot.revision + 1), *kept]


# --- Parsing the gateway's JSON --------------------------------------------------------------


class _Malformed(Exception):
    """A gateway message without the fields etcd always sends."""


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Malformed(f"expected an integer, got {value!r}")
    return int(value)


def _header_revision(result: Mapping[str, Any]) -> int:
    return _int(result["header"]["revision"])


def _key_value(kv: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=_key_text(_unb64(kv["key"])),
        value=_unb64(kv.get("value", "")),
        mod_revision=_int(kv["mod_revision"]),
    )


def _event(event: Mapping[str, Any]) -> Event:
    kv = event["kv"]
    key = _key_text(_unb64(kv["key"]))
    mod_revision = _int(kv["mod_revision"])
    kind = event.get("type", "PUT")
    if kind == "DELETE":
        return Event("delete", key, None, mod_revision)
    if kind == "PUT":
        return Event("put", key, _unb64(kv.get("value", "")), mod_revision)
    raise _Malformed(f"unknown event type {kind!r}")


def _batch(events: Sequence[Mapping[str, Any]]) -> Batch:
    parsed = tuple(_event(event) for event in events)
    return Batch(max(event.mod_revision for event in parsed), parsed)


def _snapshot(payload: Mapping[str, Any]) -> Snapshot:
    if payload.get("more"):
        raise _Malformed("the range was truncated (more: true) although no limit was set")
    items = {kv.key: kv for kv in map(_key_value, payload.get("kvs", []))}
    return Snapshot(_header_revision(payload), items)


def _txn_result(payload: Mapping[str, Any]) -> TxnResult:
    return TxnResult(bool(payload.get("succeeded", False)), _header_revision(payload))


def _error_text(body: bytes) -> str:
    """What an error answer of the gateway says: its message and gRPC code when it is the
    usual `{"error", "message", "code"}` JSON, else the start of the body."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        nested = payload.get("error")
        if isinstance(nested, dict):  # the stream form: {"error": {"message", "grpc_code"}}
            payload = nested
        message = payload.get("message") or payload.get("error")
        code = payload.get("code", payload.get("grpc_code"))
        if message:
            return f"{message} (code {code})" if code is not None else str(message)
    return repr(body[:200])


class JsonLines:
    """Splits the watch's response body into its messages: one JSON object per line.

    The HTTP client delivers the body in chunks that have nothing to do with the
    messages: a message may arrive in several chunks, and a chunk may end one message,
    hold several, and start the next. Pure (no I/O), so every way of splitting a stream
    can be tested.
    """

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the start of a line whose end has not come yet

    def feed(self, chunk: bytes) -> list[Any]:
        """The messages completed by `chunk`, in order; ValueError on a line that is not JSON."""
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            self._partial.append(chunk)
            return []
        lines[0] = b"".join([*self._partial, lines[0]])
        self._partial = [lines[-1]] if lines[-1] else []
        return [json.loads(line) for line in lines[:-1] if line.strip()]


# --- Transport failures ----------------------------------------------------------------------


class _Busy(Exception):
    """An endpoint answered 502, 503 or 504: it is there but cannot serve (no leader, a
    timeout inside etcd), and another member may."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {_error_text(body)}")


class _TimedOut(Exception):
    """An endpoint did not answer within the client's timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer within {timeout:g}s")


# Failures that happen before any byte of the request reached etcd: safe to repeat anything.
_NOT_SENT = (error.ConnectError, RequestNotSent, RequestTransmissionFailed, SchemeNotSupported)

# What Agent raises when a request dies midway; `reasons` holds the underlying Failures.
_WRAPPED = (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)


def _is_cancellation(exc: BaseException) -> bool:
    """Whether `exc` is how Agent reports a cancelled request: plain, while connecting, or
    wrapped (a request cancelled once sent fails with ResponseNeverReceived([Cancelled]))."""
    if isinstance(exc, defer.CancelledError | error.ConnectingCancelledError):
        return True
    return isinstance(exc, _WRAPPED) and any(r.check(defer.CancelledError) for r in exc.reasons)


def _describe(exc: BaseException) -> str:
    """A short reason for the endpoint list of an `EtcdUnavailable`."""
    if isinstance(exc, _WRAPPED):
        reasons = ", ".join(r.getErrorMessage() or r.type.__name__ for r in exc.reasons)
        return f"connection lost ({reasons or 'no reason given'})"
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    return str(exc).rstrip(".") or type(exc).__name__


# --- The client ------------------------------------------------------------------------------


class EtcdClient:
    """etcd v3 through its HTTP/JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`).

    `endpoints` are base URLs (`http://127.0.0.1:2379`), tried in turn; `token` is sent as
    the `Authorization` header (the gateway's convention for an etcd auth token);
    `timeout` bounds each attempt on one endpoint (for a watch: until etcd accepts it).
    `agent` replaces the default `Agent` with a persistent connection pool.

    Every failure is an `EtcdError`; a request its caller cancels (`Deferred.cancel` on
    `Deferred.fromCoroutine(client.range_prefix(...))`) fails with `CancelledError`.
    """

    def __init__(
        self,
        reactor: IEtcdReactor,
        endpoints: Sequence[str],
        *,
        token: str | None = None,
        timeout: float = 5.0,
        agent: IAgent | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self._reactor = reactor
        self._endpoints = tuple(endpoint.rstrip("/") for endpoint in endpoints)
        self._first = 0  # index of the endpoint that answered last: tried first
        self._headers: dict[bytes | str, bytes | str] = {"Authorization": token} if token else {}
        self._timeout = timeout
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, pool=self._pool)
        self._http = HTTPClient(agent)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    @property
    def endpoint(self) -> str:
        """The endpoint that answered last (the first, before any did): tried first next."""
        return self._endpoints[self._first]

    def close(self) -> defer.Deferred[None]:
        """Close the pooled connections (not watches: cancel those). Fires when closed."""
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()

    async def range_prefix(self, prefix: str) -> Snapshot:
        """Every key under `prefix`, read at one revision (linearizable, no limit)."""
        payload = await self._unary("/v3/kv/range", _prefix_range(prefix), idempotent=True)
        return self._parsed(_snapshot, payload, "/v3/kv/range")

    async def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> TxnResult:
        """One etcd transaction: if every `compare` holds, apply `success`, else `failure`.

        Build the operations with `put_op`, `delete_op`, `compare_mod_revision`,
        `compare_prefix_mod_revision` and `unchanged_since` (keys and values are base64
        in them already). Not repeated on another endpoint once it may have been sent.
        """
        body = {"compare": compare, "success": success, "failure": failure or []}
        payload = await self._unary("/v3/kv/txn", body, idempotent=False)
        return self._parsed(_txn_result, payload, "/v3/kv/txn")

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_batch: Callable[[Batch], None],
        *,
        on_created: Callable[[int], None] | None = None,
    ) -> Watch:
        """Watch every key under `prefix` from `start_revision` on: each message of events
        is handed to `on_batch` as one `Batch`. `on_created`, if given, is called once
        etcd has accepted the watch, with etcd's current revision (a follower compares it
        with what it has seen). See `Watch` for how it ends.
        """
        body = {"create_request": {**_prefix_range(prefix), "start_revision": str(start_revision)}}
        watch = Watch(on_batch, on_created)
        watch._begin(defer.Deferred.fromCoroutine(self._open_stream("/v3/watch", body)))
        return watch

    # -- one request, across the endpoints --

    async def _unary(self, path: str, body: dict[str, Any], *, idempotent: bool) -> Any:
        async def exchange(endpoint: str) -> Any:
            response = await self._http.post(
                endpoint + path, json=body, headers=self._headers, allow_redirects=False
            )
            return self._answer(endpoint, path, response.code, await response.content())

        return await self._across_endpoints(path, exchange, idempotent=idempotent)

    async def _open_stream(self, path: str, body: dict[str, Any]) -> tuple[str, IResponse]:
        """A streaming POST: the response once its status is 200 (its body still to come)."""

        async def open_on(endpoint: str) -> tuple[str, IResponse]:
            response = await self._http.post(
                endpoint + path,
                json=body,
                headers=self._headers,
                allow_redirects=False,
                unbuffered=True,
            )
            if response.code != 200:
                self._answer(endpoint, path, response.code, await response.content())
            return endpoint, response

        return await self._across_endpoints(path, open_on, idempotent=True)

    async def _across_endpoints(
        self,
        path: str,
        attempt: Callable[[str], Coroutine[Any, Any, _T]],
        *,
        idempotent: bool,
    ) -> _T:
        """`attempt` on each endpoint in turn, each within the timeout, until one answers.

        An `EtcdError` (etcd answered, and said no) is final. A transport failure moves
        on to the next endpoint if repeating the request is harmless: always for a range
        or a watch, for a transaction only if it certainly was not sent.
        """
        problems = []
        count = len(self._endpoints)
        for index in [(self._first + i) % count for i in range(count)]:
            endpoint = self._endpoints[index]
            try:
                result = await self._within_timeout(attempt(endpoint))
            except (EtcdError, defer.CancelledError):
                raise
            except Exception as exc:
                reason = _describe(exc)
                if not (idempotent or isinstance(exc, _NOT_SENT)):
                    raise EtcdUnavailable(
                        f"etcd at {endpoint}: {path}: {reason}; it may or may not have been "
                        "applied (not repeated on another endpoint)",
                        [endpoint],
                    ) from None
                problems.append(f"{endpoint} ({reason})")
                continue
            self._first = index
            return result
        raise EtcdUnavailable(
            f"no etcd endpoint answered {path}: {', '.join(problems)}", self._endpoints
        )

    async def _within_timeout(self, attempt: Coroutine[Any, Any, _T]) -> _T:
        """`attempt`, cancelled after the timeout (then `_TimedOut`). A cancellation from
        outside comes out as `CancelledError`, however Agent reported it."""
        running = defer.Deferred.fromCoroutine(attempt)
        timer = self._reactor.callLater(self._timeout, running.cancel)
        try:
            return await running
        except Exception as exc:
            if not timer.active():
                raise _TimedOut(self._timeout) from None
            if _is_cancellation(exc):
                raise defer.CancelledError() from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    def _answer(self, endpoint: str, path: str, status: int, body: bytes) -> Any:
        """The JSON of a 200 answer; else `_Busy` (try another endpoint) or `EtcdError`."""
        if status in (502, 503, 504):
            raise _Busy(status, body)
        if status != 200:
            raise EtcdError(
                f"etcd at {endpoint} refused {path} (HTTP {status}): {_error_text(body)}",
                [endpoint],
            )
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            text = f"etcd at {endpoint}: {path}: not a JSON object: {body[:200]!r}"
            raise EtcdError(text, [endpoint])
        return payload

    def _parsed(self, parse: Callable[[Any], _T], payload: Any, path: str) -> _T:
        try:
            return parse(payload)
        except (_Malformed, KeyError, TypeError, ValueError) as exc:
            raise EtcdError(
                f"etcd at {self.endpoint}: {path}: unexpected answer ({exc!r})", [self.endpoint]
            ) from None


# --- Before the reactor runs ------------------------------------------------------------------

# No proxy, whatever the environment says: etcd is reached directly, as treq's Agent does.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def read_prefix_blocking(
    endpoints: Sequence[str], prefix: str, *, token: str | None = None, timeout: float = 2.0
) -> Snapshot:
    """Every key under `prefix` at one revision, like `EtcdClient.range_prefix`, but blocking:
    the one read an edge makes at start, before twistd runs the reactor, so that a start
    with neither etcd nor a cache exits 1 the way a config error does (the reactor-based
    client has no reactor to run on yet). Each endpoint in turn, each within `timeout`.

    The same request and the same parsing as the client; raises `EtcdUnavailable` when no
    endpoint answered, `EtcdError` when one refused or answered nonsense.
    """
    body = json.dumps(_prefix_range(prefix)).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
    problems = []
    for endpoint in (e.rstrip("/") for e in endpoints):
        request = urllib.request.Request(endpoint + "/v3/kv/range", body, headers)
        try:
            with _DIRECT.open(request, timeout=timeout) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        except (OSError, ValueError) as exc:  # refused, timed out, reset, a bad URL
            reason = getattr(exc, "reason", None) or exc
            problems.append(f"{endpoint} ({_describe_blocking(reason)})")
            continue
        if status in (502, 503, 504):
            problems.append(f"{endpoint} ({_Busy(status, answer)})")
            continue
        if status != 200:
            raise EtcdError(
                f"etcd at {endpoint} refused /v3/kv/range (HTTP {status}): {_error_text(answer)}",
                [endpoint],
            )
        try:
            return _snapshot(json.loads(answer))
        except (_Malformed, KeyError, TypeError, ValueError) as exc:
            raise EtcdError(
                f"etcd at {endpoint}: /v3/kv/range: unexpected answer ({exc!r})", [endpoint]
            ) from None
    raise EtcdUnavailable(
        f"no etcd endpoint answered /v3/kv/range: {', '.join(problems)}", tuple(endpoints)
    )


def _describe_blocking(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    return str(reason).rstrip(".") or type(reason).__name__


# --- A watch stream --------------------------------------------------------------------------


class Watch:
    """One watch stream, from the request to its end.

    `done` fires exactly once:

    - with None when `cancel()` is called (from then on no callback is made);
    - with a Failure of `Compacted` when the start revision is older than etcd's history;
    - with a Failure of `EtcdUnavailable` when no endpoint accepts the watch or the stream
      ends or breaks (etcd stopped, connection lost);
    - with a Failure of `EtcdError` when etcd refuses or cancels the watch, or sends
      something unexpected;
    - with the Failure of whatever `on_batch` or `on_created` raised: the stream stops
      there, since its consumer is broken (`PrefixFollower` never lets its consumer's
      exceptions reach a watch).
    """

    def __init__(
        self, on_batch: Callable[[Batch], None], on_created: Callable[[int], None] | None
    ) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self._on_batch = on_batch
        self._on_created = on_created
        self._ended = False
        self._opening: defer.Deferred[tuple[str, IResponse]] | None = None
        self._stream: _StreamProtocol | None = None
        self._endpoint = ""
        self._lines = JsonLines()

    def cancel(self) -> None:
        """Stop watching: the request is abandoned or the stream closed; `done` fires with
        None now (unless the watch had already ended)."""
        if self._ended:
            return
        self._end(None)
        if self._opening is not None:
            self._opening.cancel()

    # -- fed by the client --

    def _begin(self, opening: defer.Deferred[tuple[str, IResponse]]) -> None:
        self._opening = opening
        opening.addCallbacks(self._opened, self._not_opened)

    def _opened(self, opened: tuple[str, IResponse]) -> None:
        self._opening = None
        self._endpoint, response = opened
        self._stream = _StreamProtocol(self)
        response.deliverBody(self._stream)
        if self._ended:  # defensive: cancel() abandons a response still to come
            self._stream.abort()

    def _not_opened(self, failure: Failure) -> None:
        self._opening = None
        self._end(failure)

    def _data(self, chunk: bytes) -> None:
        try:
            messages = self._lines.feed(chunk)
        except ValueError as exc:
            self._fail(EtcdError(f"etcd at {self._endpoint}: watch: not JSON ({exc})", self._at))
            return
        for message in messages:
            if self._ended:
                return
            self._message(message)

    def _lost(self, reason: Failure) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            why = f"etcd at {self._endpoint} ended the watch stream"
        else:
            why = f"lost the watch stream from {self._endpoint}: {_describe(reason.value)}"
        self._end(Failure(EtcdUnavailable(why, self._at)))

    # -- messages --

    @property
    def _at(self) -> list[str]:
        return [self._endpoint]

    def _message(self, message: Any) -> None:
        """Handle one message of the stream: an error, a cancel, the creation, or events."""
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict):
            text = _error_text(json.dumps(message).encode())
            self._fail(EtcdError(f"etcd at {self._endpoint}: watch failed: {text}", self._at))
        elif result.get("canceled"):  # before `created`: a refused watch has both
            self._fail(self._cancelled(result))
        elif result.get("created"):
            self._call(self._on_created, result, _header_revision)
        elif result.get("events"):
            self._call(self._on_batch, result["events"], _batch)
        # anything else (a progress notification) carries no change

    def _cancelled(self, result: Mapping[str, Any]) -> EtcdError:
        compact_revision = _int(result.get("compact_revision", 0))
        if compact_revision > 0:
            return Compacted(
                f"etcd at {self._endpoint}: the watch's start revision was compacted "
                f"(the oldest revision kept is {compact_revision})",
                compact_revision,
                self._at,
            )
        reason = result.get("cancel_reason") or "no reason given"
        return EtcdError(f"etcd at {self._endpoint} cancelled the watch: {reason}", self._at)

    def _call(
        self, callback: Callable[[_T], None] | None, raw: Any, parse: Callable[[Any], _T]
    ) -> None:
        try:
            value = parse(raw)
        except (_Malformed, KeyError, TypeError, ValueError) as exc:
            text = f"etcd at {self._endpoint}: watch: unexpected message ({exc!r})"
            self._fail(EtcdError(text, self._at))
            return
        if callback is None:
            return
        try:
            callback(value)
        except Exception:
            self._end(Failure())
            self._close_stream()

    def _fail(self, problem: EtcdError) -> None:
        self._end(Failure(problem))
        self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.abort()

    def _end(self, result: Failure | None) -> None:
        if self._ended:
            return
        self._ended = True
        if result is None:
            self._close_stream()
            self.done.callback(None)
        else:
            self.done.errback(result)


class _StreamProtocol(Protocol):
    """The watch's response body as it arrives, handed to its `Watch`."""

    def __init__(self, watch: Watch) -> None:
        self._watch: Watch | None = watch

    def dataReceived(self, data: bytes) -> None:
        if self._watch is not None:
            self._watch._data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch._lost(reason)

    def abort(self) -> None:
        """Stop reading: close the connection; nothing more reaches the watch."""
        self._watch = None
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
