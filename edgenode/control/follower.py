"""`PrefixFollower`: a consumer's view of every key under an etcd prefix, kept equal to
etcd's across outages, compactions and restores (SPEC §9, "Start", "Updates", "Outage").

The consumer sees a `Snapshot` (replace everything you hold with this), then `Batch`es
(apply these changes), each exactly once and in revision order. The follower keeps the
revision of the last thing it delivered; after any failure it resumes the watch from the
next revision, so nothing is lost or delivered twice. When that is impossible it reads
everything again and delivers a fresh snapshot:

- the revision to resume from was compacted (the watch ends with `Compacted`);
- etcd is behind the revision already delivered (its history was restored from an older
  backup, or replaced by a new cluster on the same endpoint): seen when a watch is
  created, whose answer carries etcd's current revision. A restored etcd that has
  already been written past our revision again cannot be told apart this way.

Apache APISIX follows etcd the same way (apisix/core/config_etcd.lua: a watch cancelled
with a `compact_revision`, or a header revision smaller than the one it holds, makes it
read the whole directory again).

States, and what moves between them (`FollowerState.state`):

    event                                    state after     then
    start()                                  connecting      read the prefix
    start(known snapshot)                    connecting      watch from its R+1
    snapshot read                            (unchanged)     on_snapshot, watch from R+1
    watch created, etcd at >= R              connected       backoff reset
    batch                                    connected       on_batch
    watch created, etcd at < R (restored)    connecting      read the prefix again now
    watch ends with Compacted                connecting      read the prefix again now
    any other failure (read or watch)        disconnected    retry after the backoff
    stop()                                   (unchanged)     nothing more is delivered

A second resync in a row without a batch between them waits for the backoff instead of
going at once, so an etcd that compacts faster than we can read is not hammered.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from edgenode.control.etcd import Batch, Compacted, EtcdError, Snapshot

log = Logger()

_T = TypeVar("_T")

StateName = Literal["connecting", "connected", "disconnected"]


@attrs.frozen
class FollowerState:
    """Where a follower is (SPEC §9 "Visible state"): whether it is watching etcd, the
    revision of the last snapshot or batch it delivered (0 before the first), and why it
    is not connected (None once it is)."""

    state: StateName
    revision: int
    last_error: str | None = None


class WatchHandle(Protocol):
    """What a follower needs of a running watch (`edgenode.control.etcd.Watch`)."""

    @property
    def done(self) -> defer.Deferred[None]: ...

    def cancel(self) -> None: ...


class PrefixSource(Protocol):
    """What a follower needs of etcd (`edgenode.control.etcd.EtcdClient`)."""

    async def range_prefix(self, prefix: str) -> Snapshot: ...

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_batch: Callable[[Batch], None],
        *,
        on_created: Callable[[int], None] | None = None,
    ) -> WatchHandle: ...


REWATCH_AFTER = 60.0  # seconds a watch lives before a new one replaces it (see _renew_watch)


def retry_delay(
    failures: int, initial: float, maximum: float, random: Callable[[], float]
) -> float:
    """The wait before retrying after `failures` failures in a row (>= 1): `initial`
    doubling with each failure up to `maximum`, minus up to 20% at random.

    The jitter only ever shortens the wait, so the cap holds, and edges that lost etcd
    together spread their returns over the last fifth of each step instead of arriving
    at once.
    """
    nominal = min(maximum, initial * 2.0 ** min(failures - 1, 64))
    return nominal * (1.0 - 0.2 * random())


class PrefixFollower:
    """Follows every key under `prefix` (see the module docstring for the guarantees).

    `on_snapshot` receives the whole set (replace what you hold), `on_batch` the changes
    since, `on_state` every new `FollowerState` (whenever any of its fields changes:
    after each delivery too, with the new revision). An exception from any of them is
    logged and does not stop the follower. All run in the reactor thread.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        client: PrefixSource,
        prefix: str,
        *,
        on_snapshot: Callable[[Snapshot], None],
        on_batch: Callable[[Batch], None],
        on_state: Callable[[FollowerState], None],
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        random: Callable[[], float] = _random.random,
        rewatch_after: float = REWATCH_AFTER,
    ) -> None:
        self._reactor = reactor
        self._client = client
        self._prefix = prefix
        self._on_snapshot = on_snapshot
        self._on_batch = on_batch
        self._on_state = on_state
        self._backoff = (backoff_initial, backoff_max)
        self._random = random
        self._revision = 0  # of the last snapshot or batch delivered
        self._state = FollowerState("connecting", 0)
        self._need_snapshot = True  # at start, and after a compaction or a restore
        self._failures = 0  # in a row, for the backoff
        self._resyncing = False  # a resync went at once and no batch has come since
        self._started = False
        self._stopped = False
        self._reading: defer.Deferred[Snapshot] | None = None
        self._watch: WatchHandle | None = None
        self._retry: IDelayedCall | None = None
        self._rewatch_after = rewatch_after
        self._rewatch: IDelayedCall | None = None

    @property
    def state(self) -> FollowerState:
        return self._state

    @property
    def revision(self) -> int:
        """The revision of the last snapshot or batch delivered (0 before the first)."""
        return self._revision

    @property
    def prefix(self) -> str:
        return self._prefix

    def start(self, known: Snapshot | None = None) -> None:
        """Read the prefix, deliver it, and follow it until `stop()`.

        With `known`, a snapshot the consumer read and applied itself (an edge's read at
        start, before the reactor ran), nothing is read or delivered first: the watch
        starts from `known.revision + 1`, and a compaction or restore past it still
        brings a fresh snapshot.
        """
        if self._started:
            raise RuntimeError("a PrefixFollower starts once")
        self._started = True
        if known is not None:
            self._revision = known.revision
            self._need_snapshot = False
            self._state = FollowerState("connecting", known.revision)
        self._deliver(self._on_state, self._state, "state")  # connecting, at its revision
        self._connect()

    def stop(self) -> None:
        """Cancel the read, the watch and any retry: nothing is delivered after this."""
        self._stopped = True
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        self._cancel_rewatch()

    # -- one attempt: read (if needed), then watch --

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        if not self._need_snapshot:
            self._watch_next()
            return
        reading = defer.Deferred.fromCoroutine(self._client.range_prefix(self._prefix))
        self._reading = reading
        reading.addCallbacks(self._got_snapshot, self._read_failed)

    def _got_snapshot(self, snapshot: Snapshot) -> None:
        self._reading = None
        if self._stopped:
            return
        self._need_snapshot = False
        self._revision = snapshot.revision
        self._deliver(self._on_snapshot, snapshot, "snapshot")
        self._report(self._state.state, self._state.last_error)
        if not self._stopped:  # the consumer may have stopped us
            self._watch_next()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = None
        self._failed(failure)

    def _watch_next(self) -> None:
        watch = self._client.watch_prefix(
            self._prefix, self.revision + 1, self._got_batch, on_created=self._created
        )
        self._watch = watch
        watch.done.addBoth(self._watch_ended, watch)
        self._cancel_rewatch()
        self._rewatch = self._reactor.callLater(self._rewatch_after, self._renew_watch)

    def _renew_watch(self) -> None:
        """Open a new watch from the next revision and drop the old one.

        A connection that died without a FIN or RST (a host gone, a NAT that forgot it)
        looks like a quiet watch for ever: the gateway's one-way stream cannot carry
        etcd's progress requests, and TCP gives up only after many minutes. A new watch
        every `rewatch_after` seconds opens a new connection, which fails fast if etcd is
        gone (the usual backoff follows), and costs one request when all is well.
        Nothing is lost or repeated: it starts at `revision + 1`.
        """
        self._rewatch = None
        watch, self._watch = self._watch, None
        if watch is None or self._stopped:
            return
        watch.cancel()  # no longer ours: its end is ignored (_watch_ended)
        self._watch_next()

    def _cancel_rewatch(self) -> None:
        rewatch, self._rewatch = self._rewatch, None
        if rewatch is not None and rewatch.active():
            rewatch.cancel()

    def _created(self, etcd_revision: int) -> None:
        if self._stopped:
            return
        if etcd_revision < self.revision:
            self._resync(
                f"etcd is at revision {etcd_revision}, behind the {self.revision} already "
                "applied (restored from an older backup?): reading everything again"
            )
            return
        if not self._resyncing:  # a resync that keeps being needed keeps backing off
            self._failures = 0
        self._report("connected", None)

    def _got_batch(self, batch: Batch) -> None:
        if self._stopped:
            return
        if batch.revision <= self.revision:  # never happens with etcd; never deliver twice
            log.warn(
                "etcd {prefix}: ignored a batch at revision {batch}, not after {revision}",
                prefix=self._prefix,
                batch=batch.revision,
                revision=self.revision,
            )
            return
        self._failures = 0
        self._resyncing = False
        self._revision = batch.revision
        self._deliver(self._on_batch, batch, "batch")
        self._report("connected", None)

    def _watch_ended(self, result: Failure | None, watch: WatchHandle) -> None:
        if watch is not self._watch or self._stopped:
            return  # a watch we cancelled ourselves
        self._watch = None
        self._cancel_rewatch()
        if result is None:
            return  # cancelled by someone else: nothing to deliver, nothing to retry
        if result.check(Compacted):
            self._resync(f"{result.getErrorMessage()}: reading everything again")
        else:
            self._failed(result)

    # -- after a failure --

    def _resync(self, why: str) -> None:
        """Drop the watch and read the whole prefix again (a fresh snapshot)."""
        log.warn("etcd {prefix}: {why}", prefix=self._prefix, why=why)
        self._need_snapshot = True
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        self._cancel_rewatch()
        if self._resyncing:
            self._failures += 1
            delay = self._delay()
        else:
            delay = 0.0
        self._resyncing = True
        self._report("connecting", why)
        self._schedule(delay)

    def _failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        if failure.check(EtcdError):
            log.warn("etcd {prefix}: {error}", prefix=self._prefix, error=failure.getErrorMessage())
        else:
            log.failure("etcd {prefix}: following failed", failure, prefix=self._prefix)
        self._failures += 1
        self._resyncing = False
        self._report("disconnected", failure.getErrorMessage())
        self._schedule(self._delay())

    def _delay(self) -> float:
        initial, maximum = self._backoff
        return retry_delay(self._failures, initial, maximum, self._random)

    def _schedule(self, delay: float) -> None:
        if not self._stopped:  # a consumer callback may have stopped us meanwhile
            log.debug(
                "etcd {prefix}: next attempt in {delay:.1f}s", prefix=self._prefix, delay=delay
            )
            self._retry = self._reactor.callLater(delay, self._connect)

    # -- the consumer --

    def _deliver(self, callback: Callable[[_T], None], value: _T, what: str) -> None:
        """Call a consumer callback; what it raises is logged, never propagated."""
        try:
            callback(value)
        except Exception:
            log.failure(
                "etcd {prefix}: the {what} consumer raised; following goes on",
                prefix=self._prefix,
                what=what,
            )

    def _report(self, state: StateName, last_error: str | None) -> None:
        new = FollowerState(state, self._revision, last_error)
        if new != self._state:
            self._state = new
            self._deliver(self._on_state, new, "state")
