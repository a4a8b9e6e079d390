"""A fleet edge's domains from etcd (SPEC §9): read once before serving (`read_start`),
then followed (`ClusterSource`), every change applied as one new generation through the
one reload flow (edgenode.control.reloading).

    start      read_start: one read of <prefix>domains/ at one revision, blocking, before
               the reactor runs (else the cache file; else exit 1 after startup_timeout)
    follow     PrefixFollower from that revision + 1: a snapshot (replace) or a batch
               (change) at a time, across outages, compactions and restores
    apply      DomainBook: the next domain set (invalid documents keep their domain's
               previous settings); Reloader.reload with the running file settings and
               those domains: built whole, then swapped; the cache file rewritten
    file       SIGHUP / POST /reload: the file's node-local settings, the cluster's domains

In a supervisor (`workers` > 1) this runs once, in the supervisor: each new generation
goes to the workers through the state file, as a file reload does, so a node holds one
watch on etcd, whatever its number of workers, and its workers cannot disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edgenode.config import Config, EtcdSettings
from edgenode.control.domainset import (
    DomainBook,
    DomainSet,
    Proposal,
    Rejection,
    config_with,
    read_cache,
    write_cache,
)
from edgenode.control.etcd import (
    Batch,
    EtcdError,
    EtcdUnavailable,
    Snapshot,
    read_prefix_blocking,
)
from edgenode.control.follower import FollowerState, PrefixFollower, PrefixSource
from edgenode.control.reloading import (
    Candidate,
    ConfigSource,
    Errors,
    Reloader,
    ReloadTarget,
    Reports,
)
from edgenode.errors import ConfigError, Problem
from edgenode.runtime import Runtime

log = Logger()

ATTEMPT_TIMEOUT = 2.0  # seconds for one endpoint to answer the read at start
RETRY_EVERY = 0.5  # seconds between rounds of the read at start


class ClusterClient(PrefixSource, Protocol):
    """What the cluster needs of etcd (`edgenode.control.etcd.EtcdClient`)."""

    @property
    def endpoint(self) -> str: ...

    def close(self) -> defer.Deferred[None]: ...


# --- Start: one read before serving ------------------------------------------------------------


class ClusterStartError(Exception):
    """Neither etcd nor the cache file can say which domains to serve: the edge must not
    start (the message names the endpoints tried and the cache file)."""


@attrs.frozen
class StartPoint:
    """What a fleet edge starts on: its domain book (the set applied, on the node config),
    and the snapshot it was read from; None when it came from the cache file (etcd was
    unreachable), so the follower reads etcd again before watching."""

    book: DomainBook = attrs.field(eq=False)
    snapshot: Snapshot | None
    rejected: tuple[str, ...]  # why documents were not applied, one line each
    note: str  # where the domains came from, for the start line of the log

    @property
    def config(self) -> Config:
        """The node config serving the domains of the start point."""
        return config_with(self.book.node, self.book.running_domains)


def read_token(settings: EtcdSettings) -> str | None:
    """The etcd auth token of `token_file` (None without one); ClusterStartError if it
    cannot be read (the config check saw it, but it may have gone since)."""
    if settings.token_file is None:
        return None
    try:
        return settings.token_file.read_text(encoding="utf-8").strip() or None
    except (OSError, ValueError) as exc:
        raise ClusterStartError(f"cluster.etcd.token_file {settings.token_file}: {exc}") from None


def read_start(
    node: Config,
    *,
    read: Callable[..., Snapshot] = read_prefix_blocking,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StartPoint:
    """The domains to start on (SPEC §9 "Start"): every key under `<prefix>domains/` read
    at one revision, blocking; when etcd cannot be read, the cache file's set at once; with
    no usable cache, the read is tried again until `startup_timeout`, then
    `ClusterStartError`. An etcd that refuses (a bad token) is not waited for."""
    assert node.cluster is not None
    settings = node.cluster.etcd
    token = read_token(settings)
    try:
        cached: DomainSet | None = read_cache(settings.cache_file, settings.prefix)
        no_cache = ""
    except ValueError as exc:
        cached, no_cache = None, str(exc)
    deadline = clock() + settings.startup_timeout
    while True:
        timeout = min(ATTEMPT_TIMEOUT, settings.startup_timeout)
        try:
            snapshot = read(
                settings.endpoints, settings.domains_prefix, token=token, timeout=timeout
            )
        except EtcdUnavailable as exc:
            problem, final = str(exc), False
        except EtcdError as exc:
            problem, final = str(exc), True
        else:
            return _from_snapshot(node, snapshot)
        if cached is not None:
            return _from_cache(node, cached, problem)
        if final or clock() >= deadline:
            waited = "" if final else f" within startup_timeout ({settings.startup_timeout:g}s)"
            raise ClusterStartError(
                f"cannot read the domains from etcd{waited}: {problem}; and no cache to start "
                f"from ({no_cache}; one is written each time etcd has been read)"
            )
        sleep(max(0.0, min(RETRY_EVERY, deadline - clock())))


def _from_snapshot(node: Config, snapshot: Snapshot) -> StartPoint:
    assert node.cluster is not None
    book = DomainBook(node, node.cluster.etcd.prefix)
    items = {key: kv.value for key, kv in snapshot.items.items()}
    proposal = book.snapshot(items, snapshot.revision)
    book.commit(proposal)
    note = f"read from etcd at revision {snapshot.revision}"
    return StartPoint(book, snapshot, tuple(r.describe() for r in proposal.rejected), note)


def _from_cache(node: Config, cached: DomainSet, problem: str) -> StartPoint:
    """The cache file's set, validated again on this node config (a document it no longer
    accepts is left out), as if etcd had held it at the cache's revision."""
    book = DomainBook(node, cached.prefix)
    items = {doc.key: doc.text.encode() for doc in cached.documents.values()}
    book.commit(book.snapshot(items, cached.revision))
    rejected = tuple(f"{r.describe()} (left out of the cached set)" for r in book.rejected.values())
    note = f"from the cache file at revision {cached.revision} (etcd unreachable: {problem})"
    return StartPoint(book, None, rejected, note)


# --- Following -----------------------------------------------------------------------------


class _Metrics:
    """edgenode_cluster_connected, edgenode_cluster_revision, edgenode_cluster_updates_total."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "edgenode_cluster_connected",
            "1 while the edge watches etcd, else 0",
            registry=registry,
        )
        self.revision = Gauge(
            "edgenode_cluster_revision",
            "etcd revision of the domain set the edge runs",
            registry=registry,
        )
        self.updates = Counter(
            "edgenode_cluster_updates",
            "Domain documents from etcd by result (applied, rejected)",
            ["result"],
            registry=registry,
        )
        for result in ("applied", "rejected"):
            self.updates.labels(result)  # both series exist from the start, at 0


class ClusterSource:
    """A fleet edge's domains, kept equal to etcd's (see the module docstring).

    Wire it into the reload flow (`file_source`, `target`), then `attach` the reloader and
    the registry the metrics go to, and `start`. `health` and `domains_source` are the
    admin API's views.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        client: ClusterClient,
        settings: EtcdSettings,
        start: StartPoint,
        *,
        text: str,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        self.settings = settings
        self.client = client
        self.book = start.book
        self.running_text = text  # the file's text of the running generation
        self._start = start
        self._reloader: Reloader | None = None
        self._metrics: _Metrics | None = None
        self._proposed: Proposal | None = None  # of the reload in progress
        self._latest_rejection: Rejection | None = None
        self._follower = PrefixFollower(
            reactor,
            client,
            settings.domains_prefix,
            on_snapshot=self._snapshot,
            on_batch=self._batch,
            on_state=self._state_changed,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        self._state = FollowerState("connecting", start.book.running.revision)

    @property
    def domain_set(self) -> DomainSet:
        """The etcd documents the running domains came from, at their revision."""
        return self.book.running

    @property
    def config(self) -> Config:
        """The node config serving the cluster's domains as they run now."""
        return config_with(self.book.node, self.book.running_domains)

    # -- wiring --

    def file_source(self, inner: ConfigSource) -> ConfigSource:
        """A file reload's source: the file's node-local settings, the cluster's domains."""
        return _FileSettings(inner, self)

    def target(self, inner: ReloadTarget) -> ReloadTarget:
        """`inner`, told about each new generation's domains (the cache file, the book)."""
        return _ClusterTarget(inner, self)

    def attach(self, reloader: Reloader, registry: CollectorRegistry) -> None:
        self._reloader = reloader
        self._metrics = _Metrics(registry)
        self._count("rejected", len(self._start.rejected))
        self._show_state()

    def start(self) -> None:
        """Log where the domains came from, keep them in the cache file, and follow etcd."""
        start = self._start
        log.info(
            "cluster: {n} domains {note}, under {prefix} of etcd {endpoints}",
            n=len(self.book.running_domains),
            note=start.note,
            prefix=self.settings.domains_prefix,
            endpoints=", ".join(self.settings.endpoints),
        )
        for line in start.rejected:
            log.warn("cluster: {line}", line=line)
        if start.snapshot is not None:
            self._write_cache(self.book.running)
        self._follower.start(start.snapshot)

    def stop(self) -> defer.Deferred[None]:
        """Stop following; fires once the client's connections are closed."""
        self._follower.stop()
        return self.client.close()

    # -- the admin API's views --

    def health(self) -> dict[str, Any]:
        """/healthz's `cluster` block."""
        connected = self._state.state == "connected"
        return {
            "state": "connected" if connected else "disconnected",
            "revision": self.book.running.revision,
            "last_error": self._last_error(),
            "rejected": sorted(self.book.rejected),
        }

    def domains_source(self) -> dict[str, Any]:
        """GET /config's `domains_source`."""
        return {
            "kind": "etcd",
            "endpoints": list(self.settings.endpoints),
            "prefix": self.settings.prefix,
            "revision": self.book.running.revision,
        }

    def _last_error(self) -> str | None:
        """Why etcd is not followed now; else the latest rejection of a document etcd still
        holds (else the first by key of those rejected); else None."""
        if self._state.state != "connected" and self._state.last_error:
            return self._state.last_error
        rejected = self.book.rejected
        latest = self._latest_rejection
        if latest is not None and latest.key in rejected:
            return rejected[latest.key].describe()
        return rejected[min(rejected)].describe() if rejected else None

    # -- the follower's deliveries --

    def _snapshot(self, snapshot: Snapshot) -> None:
        items = {key: kv.value for key, kv in snapshot.items.items()}
        proposal = self.book.snapshot(items, snapshot.revision)
        self._apply(proposal, f"etcd snapshot at revision {snapshot.revision}")

    def _batch(self, batch: Batch) -> None:
        changes = [(event.key, event.value) for event in batch.events]
        proposal = self.book.batch(changes, batch.revision)
        self._apply(proposal, f"etcd revision {batch.revision}")

    def _apply(self, proposal: Proposal, trigger: str) -> None:
        """One delivery, one generation: rejections reported, the rest applied at once."""
        for rejection in proposal.rejected:
            kept = proposal.domain_set.documents.get(self.book.name_of(rejection.key))
            effect = "keeps its previous settings" if kept is not None else "is not served"
            log.warn(
                "cluster: {what}; the domain {effect}",
                what=rejection.describe(),
                effect=effect,
            )
        self._count("rejected", len(proposal.rejected))
        if proposal.rejected:
            self._latest_rejection = proposal.rejected[-1]
        if not proposal.changed:
            self._committed(proposal)  # the revision moves on; nothing to swap
            return
        assert self._reloader is not None, "attach() before start()"
        self._proposed = proposal
        outcome = self._reloader.reload(trigger, _Update(self, proposal))
        outcome.addErrback(lambda f: log.failure("cluster: applying {t} failed", f, t=trigger))
        if self.book.running is proposal.domain_set:  # swapped in (before reload() returned)
            self._count("applied", proposal.applied)

    def _state_changed(self, state: FollowerState) -> None:
        before, self._state = self._state, state
        if state.state == "connected" and before.state != "connected":
            log.info(
                "cluster: watching {prefix} on etcd {endpoint} from revision {revision}",
                prefix=self.settings.domains_prefix,
                endpoint=self.client.endpoint,
                revision=state.revision + 1,
            )
        elif state.state == "disconnected" and before.state != "disconnected":
            log.warn(
                "cluster: disconnected from etcd ({error}); serving the domains of revision "
                "{revision} meanwhile, retrying with backoff",
                error=state.last_error,
                revision=self.book.running.revision,
            )
        self._show_state()

    # -- after a swap --

    def _committed(self, proposal: Proposal) -> None:
        changed = proposal.domain_set != self.book.running
        self.book.commit(proposal)
        if changed:
            self._write_cache(proposal.domain_set)
        self._show_state()

    def _write_cache(self, domain_set: DomainSet) -> None:
        try:
            write_cache(self.settings.cache_file, domain_set)
        except OSError as exc:
            log.warn(
                "cluster: cannot write the cache file {path} ({error}); a start while etcd "
                "is down would not have these domains",
                path=str(self.settings.cache_file),
                error=exc,
            )

    def _count(self, result: str, n: int) -> None:
        if self._metrics is not None and n:
            self._metrics.updates.labels(result).inc(n)

    def _show_state(self) -> None:
        if self._metrics is not None:
            self._metrics.connected.set(1 if self._state.state == "connected" else 0)
            self._metrics.revision.set(self.book.running.revision)


# --- The reload flow's pieces ------------------------------------------------------------------


class _Update:
    """The source of a reload made by etcd: the running file settings (the file is not
    read: an etcd write must not apply a half-edited file), the proposal's domains."""

    def __init__(self, cluster: ClusterSource, proposal: Proposal) -> None:
        self.cluster = cluster
        self.proposal = proposal

    def next(self, old: Runtime) -> Candidate:
        config = config_with(old.config, self.proposal.domains)
        domains = self.proposal.domain_set
        return Candidate(config, old.generation + 1, self.cluster.running_text, domains)


class _FileSettings:
    """The source of a file reload (SIGHUP, POST /reload): the file's node-local settings,
    the cluster's domains validated again on them. Following another etcd (other
    endpoints, another prefix) needs a restart; so does leaving the cluster."""

    def __init__(self, inner: ConfigSource, cluster: ClusterSource) -> None:
        self.inner = inner
        self.cluster = cluster

    def next(self, old: Runtime) -> Candidate:
        candidate = self.inner.next(old)
        node, running = candidate.config, old.config.cluster
        if node.cluster is None:
            raise ConfigError(
                [
                    Problem(
                        "cluster",
                        "is gone from the file, but this edge follows etcd until it restarts; "
                        "restart it to serve the file's domains",
                    )
                ],
                source=str(node.source),
            )
        if node.cluster != running:
            log.warn(
                "reload: cluster.etcd changed in the file; that needs a restart, this edge "
                "keeps following {endpoints} under {prefix}",
                endpoints=", ".join(self.cluster.settings.endpoints),
                prefix=self.cluster.settings.domains_prefix,
            )
            node = attrs.evolve(node, cluster=running)
        proposal = self.cluster.book.for_node(node)
        self.cluster._proposed = proposal
        return attrs.evolve(
            candidate, config=config_with(node, proposal.domains), domains=proposal.domain_set
        )


class _ClusterTarget:
    """The reload target of a fleet edge: the usual one (a data path, the workers), and
    the cluster told which domain set runs once it is swapped in."""

    def __init__(self, inner: ReloadTarget, cluster: ClusterSource) -> None:
        self.inner = inner
        self.cluster = cluster
        self.restart_note = inner.restart_note
        self._staged: Candidate | None = None

    def stage(self, candidate: Candidate) -> None:
        self._staged = candidate
        self.inner.stage(candidate)

    def applied(self, new: Runtime, old: Runtime) -> str:
        done = self.inner.applied(new, old)
        staged, proposal = self._staged, self.cluster._proposed
        if staged is not None:
            self.cluster.running_text = staged.text
            if proposal is not None and proposal.domain_set is staged.domains:
                self.cluster._committed(proposal)
        return done

    async def confirmed(self, trigger: str, generation: int) -> tuple[Errors, Reports]:
        return await self.inner.confirmed(trigger, generation)
