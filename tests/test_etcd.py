"""The etcd client and the prefix follower (SPEC §9), against a real etcd through the real
reactor (running in its thread, `reactor_thread`), and on a `Clock` for the backoff.

Tests that only read and write share one etcd per module (`etcd_server`), each under
its own prefix; tests that stop, restart or wipe etcd get their own (`own_etcd`).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from edgenode.control.etcd import (
    Batch,
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Event,
    JsonLines,
    KeyValue,
    Snapshot,
    Watch,
    compare_mod_revision,
    compare_prefix_mod_revision,
    delete_op,
    prefix_range_end,
    put_op,
    unchanged_since,
)
from edgenode.control.follower import FollowerState, PrefixFollower, retry_delay
from tests.support.etcd import EtcdServer, etcd_binary, started
from tests.support.net import LOOPBACK, free_port, port_accepts
from tests.support.origin import in_reactor
from tests.support.waiting import wait_until

# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the module's tests that only read and write (each under its own prefix)."""
    server = started(EtcdServer(tmp_path_factory.mktemp("etcd")))
    yield server
    server.stop()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd this test may stop, restart and wipe."""
    server = started(EtcdServer(tmp_path / "etcd"))
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/edgenode-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def clients(reactor_thread: Any) -> Iterator[Callable[..., EtcdClient]]:
    """`clients(endpoints, **kwargs)` makes an EtcdClient on the real reactor; closed after."""
    made: list[EtcdClient] = []

    def make(endpoints: list[str], **kwargs: Any) -> EtcdClient:
        client = in_reactor(lambda: EtcdClient(reactor_thread, endpoints, **kwargs))
        made.append(client)
        return client

    yield make
    for client in made:
        in_reactor(client.close)


@pytest.fixture
def client(clients: Callable[..., EtcdClient], etcd_server: EtcdServer) -> EtcdClient:
    return clients([etcd_server.endpoint])


def run(coroutine: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine of the client in the reactor thread; its result (or exception)."""
    return in_reactor(lambda: Deferred.fromCoroutine(coroutine()))


class Recorder:
    """A follower's consumer: everything it was handed, and the view it builds from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.snapshots: list[Snapshot] = []
        self.batches: list[Batch] = []
        self.states: list[FollowerState] = []
        self.view: dict[str, bytes] = {}

    def on_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            self.snapshots.append(snapshot)
            self.view = {key: kv.value for key, kv in snapshot.items.items()}

    def on_batch(self, batch: Batch) -> None:
        with self._lock:
            self.batches.append(batch)
            for event in batch.events:
                if event.value is None:
                    self.view.pop(event.key, None)
                else:
                    self.view[event.key] = event.value

    def on_state(self, state: FollowerState) -> None:
        with self._lock:
            self.states.append(state)

    @property
    def state(self) -> FollowerState:
        with self._lock:
            return self.states[-1]

    def snapshot_count(self) -> int:
        with self._lock:
            return len(self.snapshots)

    def keys_changed(self) -> list[str]:
        """Every key of every batch, in order (a key delivered twice shows twice)."""
        with self._lock:
            return [event.key for batch in self.batches for event in batch.events]


@pytest.fixture
def follow(reactor_thread: Any) -> Iterator[Callable[..., tuple[PrefixFollower, Recorder]]]:
    """`follow(client, prefix, **kwargs)`: a started follower and its Recorder; stopped after."""
    followers: list[PrefixFollower] = []

    def make(
        client: EtcdClient, prefix: str, recorder: Recorder | None = None, **kwargs: Any
    ) -> tuple[PrefixFollower, Recorder]:
        rec = recorder or Recorder()
        kwargs.setdefault("backoff_initial", 0.1)
        kwargs.setdefault("backoff_max", 0.5)

        def start() -> PrefixFollower:
            follower = PrefixFollower(
                reactor_thread,
                client,
                prefix,
                on_snapshot=rec.on_snapshot,
                on_batch=rec.on_batch,
                on_state=rec.on_state,
                **kwargs,
            )
            follower.start()
            return follower

        follower = in_reactor(start)
        followers.append(follower)
        return follower, rec

    yield make
    for follower in followers:
        in_reactor(follower.stop)


def connected_at(rec: Recorder, revision: int) -> Callable[[], bool]:
    def check() -> bool:
        return bool(rec.states) and rec.state == FollowerState("connected", revision)

    return check


# --------------------------------------------------------------------------
# Pure parts: the line buffer, prefix ranges, the backoff
# --------------------------------------------------------------------------

STREAM = (
    b'{"result":{"header":{"revision":"7"},"created":true}}\n'
    b'{"result":{"header":{"revision":"8"},"events":[{"kv":{"key":"L2Uv","mod_revision":"8",'
    b'"value":"eA=="}}]}}\n'
    b"\n"
    b'{"result":{"header":{"revision":"9"},"events":[{"type":"DELETE","kv":{"key":"L2Uv",'
    b'"mod_revision":"9"}}]}}\n'
)
MESSAGES = [json.loads(line) for line in STREAM.split(b"\n") if line]  # three


def _feed_all(chunks: list[bytes]) -> list[Any]:
    lines = JsonLines()
    return [message for chunk in chunks for message in lines.feed(chunk)]


def _split(data: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_json_lines_every_split_into_two_and_three_chunks() -> None:
    """The watch's messages come out whole and in order however the body is cut into chunks."""
    for cuts in itertools.combinations(range(len(STREAM) + 1), 2):
        assert _feed_all(_split(STREAM, cuts)) == MESSAGES, cuts


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_json_lines_any_chunking(cuts: list[int]) -> None:
    """Any number of cuts, empty chunks included, gives the same messages."""
    assert _feed_all(_split(STREAM, tuple(cuts))) == MESSAGES


def test_json_lines_keeps_an_unfinished_message() -> None:
    """A message without its newline yet is held back until the rest arrives."""
    lines = JsonLines()
    assert lines.feed(b'{"a": 1}\n{"b"') == [{"a": 1}]
    assert lines.feed(b": 2}") == []
    assert lines.feed(b"\n") == [{"b": 2}]


def test_json_lines_rejects_garbage() -> None:
    """A line that is not JSON is an error, not a silently dropped message."""
    with pytest.raises(ValueError):
        JsonLines().feed(b"not json\n")


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"/edgenode/", b"/edgenode0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    """The range end covers exactly the keys that start with the prefix, as etcd clientv3's."""
    assert prefix_range_end(prefix) == end


def test_retry_delay_doubles_to_the_cap_and_jitter_only_shortens() -> None:
    """1 s doubling to 30 s; the jitter takes off at most 20%."""
    nominal = [retry_delay(n, 1.0, 30.0, lambda: 0.0) for n in range(1, 9)]
    assert nominal == [1, 2, 4, 8, 16, 30, 30, 30]
    assert retry_delay(3, 1.0, 30.0, lambda: 0.999999) == pytest.approx(3.2, rel=1e-5)
    assert retry_delay(10_000, 1.0, 30.0, lambda: 0.5) == pytest.approx(27.0)


# --------------------------------------------------------------------------
# The follower on a Clock, with a fake etcd
# --------------------------------------------------------------------------


class FakeWatch:
    """A watch the test drives: `created(rev)`, `batch(...)`, and `done` fired by hand."""

    def __init__(
        self,
        start_revision: int,
        on_batch: Callable[[Batch], None],
        on_created: Callable[[int], None] | None,
    ) -> None:
        self.start_revision = start_revision
        self.on_batch = on_batch
        self.on_created = on_created
        self.done: Deferred[None] = Deferred()
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if not self.done.called:
            self.done.callback(None)

    def created(self, revision: int) -> None:
        assert self.on_created is not None
        self.on_created(revision)


class FakeEtcd:
    """A PrefixSource: reads fail while `up` is false, else answer `snapshot`."""

    def __init__(self) -> None:
        self.up = False
        self.snapshot = Snapshot(5, {"/p/a": KeyValue("/p/a", b"1", 5)})
        self.reads = 0
        self.watches: list[FakeWatch] = []

    async def range_prefix(self, prefix: str) -> Snapshot:
        self.reads += 1
        if not self.up:
            raise EtcdUnavailable("no etcd endpoint answered /v3/kv/range: fake (refused)")
        return self.snapshot

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_batch: Callable[[Batch], None],
        *,
        on_created: Callable[[int], None] | None = None,
    ) -> FakeWatch:
        watch = FakeWatch(start_revision, on_batch, on_created)
        self.watches.append(watch)
        return watch


def _clock_follower(
    fake: FakeEtcd, random: Callable[[], float] = lambda: 0.0, **kwargs: Any
) -> tuple[Clock, PrefixFollower, Recorder]:
    clock = Clock()
    rec = Recorder()
    follower = PrefixFollower(
        clock,
        fake,
        "/p/",
        on_snapshot=rec.on_snapshot,
        on_batch=rec.on_batch,
        on_state=rec.on_state,
        random=random,
        **kwargs,
    )
    return clock, follower, rec


def _next_delay(clock: Clock) -> float:
    (call,) = clock.getDelayedCalls()
    return call.getTime() - clock.seconds()


def _retry_now(clock: Clock) -> None:
    clock.advance(_next_delay(clock))


def test_backoff_doubles_to_the_cap_then_resets_on_success() -> None:
    """Failed reads are retried after 1, 2, 4, 8, 16, 30, 30 s; after a success, 1 s again."""
    fake = FakeEtcd()
    clock, follower, rec = _clock_follower(fake)
    follower.start()
    delays = []
    for _ in range(7):
        delays.append(_next_delay(clock))
        _retry_now(clock)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert fake.reads == 8
    assert rec.state.state == "disconnected"
    assert rec.state.last_error is not None and "fake (refused)" in rec.state.last_error

    fake.up = True
    _retry_now(clock)
    fake.watches[-1].created(5)
    assert rec.state == FollowerState("connected", 5)
    fake.watches[-1].done.errback(EtcdUnavailable("lost the watch stream (fake)"))
    assert _next_delay(clock) == 1
    assert rec.state == FollowerState("disconnected", 5, "lost the watch stream (fake)")
    _retry_now(clock)
    assert fake.reads == 9  # resumed the watch, no second read
    assert fake.watches[-1].start_revision == 6


def test_backoff_jitter_from_the_injected_random() -> None:
    """The jitter comes from the `random` given: 0.5 takes a tenth off every delay."""
    fake = FakeEtcd()
    clock, follower, _ = _clock_follower(fake, random=lambda: 0.5, backoff_max=10.0)
    follower.start()
    delays = []
    for _ in range(5):
        delays.append(_next_delay(clock))
        _retry_now(clock)
    assert delays == pytest.approx([0.9, 1.8, 3.6, 7.2, 9.0])


def test_compaction_resyncs_at_once_then_backs_off_if_it_repeats() -> None:
    """A compacted resume re-reads at once; a second one in a row waits for the backoff."""
    fake = FakeEtcd()
    fake.up = True
    clock, follower, rec = _clock_follower(fake)
    follower.start()
    fake.watches[-1].created(5)
    fake.watches[-1].done.errback(Compacted("compacted (fake)", 9))
    assert rec.state.state == "connecting"
    assert _next_delay(clock) == 0
    clock.advance(0)
    assert rec.snapshot_count() == 2 and fake.watches[-1].start_revision == 6
    fake.watches[-1].created(12)
    fake.watches[-1].done.errback(Compacted("compacted again (fake)", 12))
    assert _next_delay(clock) == 1


def test_restored_etcd_behind_us_gives_a_fresh_snapshot() -> None:
    """A watch created on an etcd whose revision is below ours makes the follower re-read."""
    fake = FakeEtcd()
    fake.up = True
    clock, follower, rec = _clock_follower(fake)
    follower.start()
    fake.watches[-1].created(5)
    fake.snapshot = Snapshot(2, {"/p/b": KeyValue("/p/b", b"restored", 2)})
    fake.watches[-1].created(2)
    assert fake.watches[-1].cancelled
    clock.advance(0)
    assert rec.snapshots[-1].revision == 2 and rec.view == {"/p/b": b"restored"}
    assert fake.watches[-1].start_revision == 3


def test_stop_cancels_the_watch_and_the_retry() -> None:
    """After stop() no timer is left and nothing more is delivered."""
    fake = FakeEtcd()
    clock, follower, rec = _clock_follower(fake)
    follower.start()
    assert clock.getDelayedCalls()
    follower.stop()
    assert not clock.getDelayedCalls()
    fake.up = True
    clock.advance(60)
    assert rec.snapshot_count() == 0


# --------------------------------------------------------------------------
# The client against a real etcd
# --------------------------------------------------------------------------


def test_range_prefix_reads_exactly_the_prefix(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """Keys under the prefix, at etcd's revision; not the bare prefix nor a sibling prefix."""
    etcd_server.put(prefix + "domains/a.test", '{"a": 1}')
    etcd_server.put(prefix + "domains/b.test", "")
    etcd_server.put(prefix.rstrip("/"), "the prefix without its slash")
    etcd_server.put(prefix.rstrip("/") + "2/domains/a.test", "a sibling prefix")
    last = etcd_server.put(prefix + "domains/c.test", "c")

    snapshot: Snapshot = run(lambda: client.range_prefix(prefix))

    assert snapshot.revision == last == etcd_server.revision()
    assert sorted(snapshot.items) == [prefix + f"domains/{n}.test" for n in "abc"]
    assert snapshot.items[prefix + "domains/a.test"].value == b'{"a": 1}'
    assert snapshot.items[prefix + "domains/b.test"].value == b""
    assert snapshot.items[prefix + "domains/c.test"].mod_revision == last


def test_range_prefix_of_nothing(client: EtcdClient, prefix: str) -> None:
    """An empty prefix is an empty snapshot with the current revision."""
    snapshot: Snapshot = run(lambda: client.range_prefix(prefix))
    assert snapshot.items == {} and snapshot.revision > 0


def test_txn_applies_puts_and_deletes_at_one_revision(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """One transaction: every put and delete lands at the same revision, or none does."""
    etcd_server.put(prefix + "old", "x")
    result = run(
        lambda: client.txn(
            [], [put_op(prefix + "a", b"1"), put_op(prefix + "b", b"2"), delete_op(prefix + "old")]
        )
    )
    assert result.succeeded
    snapshot: Snapshot = run(lambda: client.range_prefix(prefix))
    assert {k: (v.value, v.mod_revision) for k, v in snapshot.items.items()} == {
        prefix + "a": (b"1", result.revision),
        prefix + "b": (b"2", result.revision),
    }

    failed = run(
        lambda: client.txn(
            [compare_mod_revision(prefix + "a", "=", 0)],  # "a does not exist": false
            [put_op(prefix + "c", b"3")],
            [put_op(prefix + "d", b"4")],
        )
    )
    assert not failed.succeeded and failed.revision == result.revision + 1
    snapshot = run(lambda: client.range_prefix(prefix))
    assert sorted(snapshot.items) == [prefix + "a", prefix + "b", prefix + "d"]


def test_prefix_compare_makes_the_second_concurrent_writer_fail(
    clients: Callable[..., EtcdClient], etcd_server: EtcdServer, prefix: str
) -> None:
    """Two read-then-write transactions guarded by "nothing under the prefix changed since
    my read": the first applies, the second fails and writes nothing."""
    etcd_server.put(prefix + "domains/a.test", "v1")
    one, two = clients([etcd_server.endpoint]), clients([etcd_server.endpoint])
    read_one: Snapshot = run(lambda: one.range_prefix(prefix))
    read_two: Snapshot = run(lambda: two.range_prefix(prefix))
    assert read_one.revision == read_two.revision

    def guarded(client: EtcdClient, read: Snapshot, value: bytes) -> Any:
        guard = [compare_prefix_mod_revision(prefix, "<", read.revision + 1)]
        return run(lambda: client.txn(guard, [put_op(prefix + "domains/b.test", value)]))

    first, second = guarded(one, read_one, b"one"), guarded(two, read_two, b"two")

    assert first.succeeded and not second.succeeded
    final: Snapshot = run(lambda: one.range_prefix(prefix))
    assert final.items[prefix + "domains/b.test"].value == b"one"
    assert final.revision == first.revision


def test_prefix_compare_on_an_empty_prefix_holds(client: EtcdClient, prefix: str) -> None:
    """A prefix with no keys compares as one absent key (mod_revision 0): a first push works."""
    read: Snapshot = run(lambda: client.range_prefix(prefix))
    guard = [compare_prefix_mod_revision(prefix, "<", read.revision + 1)]
    result = run(lambda: client.txn(guard, [put_op(prefix + "x", b"1")]))
    assert result.succeeded


def test_unchanged_since_also_catches_a_concurrent_delete(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """A delete leaves no key in the range, so the prefix compare alone misses it; the
    per-key compares of `unchanged_since` do not."""
    etcd_server.put(prefix + "a", "1")
    etcd_server.put(prefix + "b", "2")
    read: Snapshot = run(lambda: client.range_prefix(prefix))
    etcd_server.delete(prefix + "a")  # the other writer only deleted

    prefix_only = [compare_prefix_mod_revision(prefix, "<", read.revision + 1)]
    check = [put_op(prefix + "unrelated-check", b"")]
    assert run(lambda: client.txn(prefix_only, [], check)).succeeded  # the blind spot
    assert not run(lambda: client.txn(unchanged_since(prefix, read), check)).succeeded


def test_etcd_refusal_is_an_etcd_error_naming_the_endpoint(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """What etcd refuses (too many operations in one transaction) is an EtcdError, not a retry."""
    ops = [put_op(f"{prefix}{n}", b"") for n in range(129)]  # --max-txn-ops is 128
    with pytest.raises(EtcdError) as caught:
        run(lambda: client.txn([], ops))
    assert not isinstance(caught.value, EtcdUnavailable)
    assert etcd_server.endpoint in str(caught.value)
    assert "too many operations" in str(caught.value)


def test_no_endpoint_reachable_names_every_endpoint(clients: Callable[..., EtcdClient]) -> None:
    """Nothing listening: EtcdUnavailable naming each endpoint tried and why."""
    dead = [f"http://{LOOPBACK}:{free_port()}", f"http://{LOOPBACK}:{free_port()}"]
    client = clients(dead)
    with pytest.raises(EtcdUnavailable) as caught:
        run(lambda: client.range_prefix("/x/"))
    message = str(caught.value)
    assert all(f"{endpoint} (connection refused)" in message for endpoint in dead)
    assert caught.value.endpoints == tuple(dead)


def test_fails_over_and_remembers_the_endpoint_that_answered(
    clients: Callable[..., EtcdClient], etcd_server: EtcdServer
) -> None:
    """A dead first endpoint is skipped; the live one is tried first from then on."""
    dead = f"http://{LOOPBACK}:{free_port()}"
    client = clients([dead, etcd_server.endpoint])
    assert client.endpoint == dead
    run(lambda: client.range_prefix("/x/"))
    assert client.endpoint == etcd_server.endpoint


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(8)
        yield f"http://{LOOPBACK}:{sock.getsockname()[1]}"


def test_a_silent_endpoint_times_out(
    clients: Callable[..., EtcdClient], silent_endpoint: str, etcd_server: EtcdServer
) -> None:
    """An endpoint that never answers costs one timeout, then the next one is asked."""
    client = clients([silent_endpoint], timeout=0.3)
    with pytest.raises(EtcdUnavailable, match=r"no answer within 0\.3s"):
        run(lambda: client.range_prefix("/x/"))
    client = clients([silent_endpoint, etcd_server.endpoint], timeout=0.3)
    assert run(lambda: client.range_prefix("/x/")).revision > 0


def test_a_txn_that_may_have_been_sent_is_not_repeated(
    clients: Callable[..., EtcdClient], silent_endpoint: str, etcd_server: EtcdServer, prefix: str
) -> None:
    """A transaction whose answer never came is not sent again to the next endpoint."""
    client = clients([silent_endpoint, etcd_server.endpoint], timeout=0.3)
    with pytest.raises(EtcdUnavailable, match="may or may not have been applied"):
        run(lambda: client.txn([], [put_op(prefix + "once", b"1")]))
    assert run(lambda: client.range_prefix(prefix)).items == {}


# --------------------------------------------------------------------------
# Watches against a real etcd
# --------------------------------------------------------------------------


class WatchLog:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.created: list[int] = []
        self.ended: list[Any] = []

    def watch(self, client: EtcdClient, prefix: str, start_revision: int) -> Watch:
        def start() -> Watch:
            watch = client.watch_prefix(
                prefix, start_revision, self.batches.append, on_created=self.created.append
            )
            watch.done.addBoth(self.ended.append)
            return watch

        return in_reactor(start)


def test_watch_delivers_each_transaction_as_one_batch(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """Puts and deletes arrive as batches at their revisions; a 3-key txn is ONE batch."""
    start = etcd_server.put(prefix + "gone", "x")
    log = WatchLog()
    watch = log.watch(client, prefix, start + 1)
    wait_until(lambda: log.created, what="the watch to be created")
    assert log.created == [start]

    three = run(lambda: client.txn([], [put_op(prefix + k, k.encode()) for k in "abc"]))
    deleted = etcd_server.delete(prefix + "gone")
    etcd_server.put(prefix.rstrip("/") + "2/a", "sibling: not watched")
    last = etcd_server.put(prefix + "a", "A")
    wait_until(lambda: len(log.batches) == 3, what="three batches")

    puts = tuple(Event("put", prefix + k, k.encode(), three.revision) for k in "abc")
    assert log.batches == [
        Batch(three.revision, puts),
        Batch(deleted, (Event("delete", prefix + "gone", None, deleted),)),
        Batch(last, (Event("put", prefix + "a", b"A", last),)),
    ]

    in_reactor(watch.cancel)
    assert log.ended == [None]
    witness = WatchLog()
    second = witness.watch(client, prefix, last + 1)
    etcd_server.put(prefix + "after", "after the cancel")
    wait_until(lambda: witness.batches, what="a second watch to see the next write")
    assert len(log.batches) == 3 and log.ended == [None]
    in_reactor(second.cancel)


def test_watch_catching_up_on_history(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """A watch from an old revision delivers the history; batch revisions say how far it got."""
    first = etcd_server.put(prefix + "a", "1")
    etcd_server.put(prefix + "b", "2")
    last = etcd_server.put(prefix + "a", "3")
    log = WatchLog()
    watch = log.watch(client, prefix, first)
    wait_until(lambda: log.batches and log.batches[-1].revision == last, what="the history")
    events = [event for batch in log.batches for event in batch.events]
    assert [(e.key, e.value) for e in events] == [
        (prefix + "a", b"1"),
        (prefix + "b", b"2"),
        (prefix + "a", b"3"),
    ]
    in_reactor(watch.cancel)


def test_watch_from_a_compacted_revision_ends_with_compacted(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """Watching from before the compaction ends the watch with Compacted(compact_revision)."""
    old = etcd_server.put(prefix + "a", "1")
    now = etcd_server.put(prefix + "a", "2")
    etcd_server.compact(now)
    log = WatchLog()
    log.watch(client, prefix, old)
    wait_until(lambda: log.ended, what="the watch to end")
    (failure,) = log.ended
    assert failure.check(Compacted)
    assert failure.value.compact_revision == now
    assert log.batches == []


def test_watch_ends_with_unavailable_when_etcd_stops(
    clients: Callable[..., EtcdClient], own_etcd: EtcdServer, prefix: str
) -> None:
    """The stream ending (etcd stopped) fires `done` with EtcdUnavailable naming the endpoint."""
    client = clients([own_etcd.endpoint])
    log = WatchLog()
    log.watch(client, prefix, 0)
    wait_until(lambda: log.created, what="the watch to be created")
    own_etcd.stop()
    wait_until(lambda: log.ended, what="the watch to end")
    (failure,) = log.ended
    assert failure.check(EtcdUnavailable)
    assert own_etcd.endpoint in failure.getErrorMessage()


def test_cancel_while_the_watch_is_still_opening(
    clients: Callable[..., EtcdClient], silent_endpoint: str, prefix: str
) -> None:
    """A watch cancelled before etcd answered ends with None at once, and stays ended."""
    client = clients([silent_endpoint], timeout=5.0)
    log = WatchLog()
    watch = log.watch(client, prefix, 0)
    in_reactor(watch.cancel)
    assert log.ended == [None] and log.created == []
    in_reactor(watch.cancel)  # a second cancel changes nothing
    assert log.ended == [None]


def test_a_cancelled_range_raises_cancelled_error(
    clients: Callable[..., EtcdClient],
    silent_endpoint: str,
    etcd_server: EtcdServer,
    reactor_thread: Any,
) -> None:
    """Cancelling a request is not an endpoint failure: no failover, CancelledError."""
    client = clients([silent_endpoint, etcd_server.endpoint], timeout=5.0)

    def cancelled_soon() -> Deferred[Any]:
        reading = Deferred.fromCoroutine(client.range_prefix("/x/"))
        reactor_thread.callLater(0.1, reading.cancel)
        return reading

    with pytest.raises(CancelledError):
        in_reactor(cancelled_soon)
    assert client.endpoint == silent_endpoint  # the live one was never tried


def test_token_is_sent_as_the_authorization_header(
    clients: Callable[..., EtcdClient], own_etcd: EtcdServer, prefix: str
) -> None:
    """With auth on, requests without the token are refused (an EtcdError, watch included);
    with it, they are served."""
    token = own_etcd.enable_auth()
    anonymous = clients([own_etcd.endpoint])
    with pytest.raises(EtcdError, match="user name is empty"):
        run(lambda: anonymous.range_prefix(prefix))
    refused = WatchLog()
    refused.watch(anonymous, prefix, 0)
    wait_until(lambda: refused.ended, what="the refused watch to end")
    assert refused.ended[0].check(EtcdError)
    assert "user name is empty" in refused.ended[0].getErrorMessage()

    client = clients([own_etcd.endpoint], token=token)
    assert run(lambda: client.txn([], [put_op(prefix + "a", b"1")])).succeeded
    assert list(run(lambda: client.range_prefix(prefix)).items) == [prefix + "a"]
    served = WatchLog()
    watch = served.watch(client, prefix, 0)
    wait_until(lambda: served.created, what="the watch to be created")
    in_reactor(watch.cancel)


# --------------------------------------------------------------------------
# The follower against a real etcd
# --------------------------------------------------------------------------


def test_follower_snapshot_then_batches(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str, follow: Callable[..., Any]
) -> None:
    """The follower delivers the prefix, then every change, and reports itself connected."""
    start = etcd_server.put(prefix + "a", "1")
    follower, rec = follow(client, prefix)
    wait_until(connected_at(rec, start), what="connected at the first revision")
    assert [s.revision for s in rec.snapshots] == [start]
    assert rec.view == {prefix + "a": b"1"}

    three = run(lambda: client.txn([], [put_op(prefix + k, b"x") for k in "bcd"]))
    gone = etcd_server.delete(prefix + "a")
    wait_until(connected_at(rec, gone), what="the delete")
    assert [b.revision for b in rec.batches] == [three.revision, gone]
    assert rec.view == {prefix + k: b"x" for k in "bcd"}
    assert follower.state == FollowerState("connected", gone)
    assert rec.states[0] == FollowerState("connecting", 0)


def test_follower_survives_a_consumer_that_raises(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str, follow: Callable[..., Any]
) -> None:
    """Exceptions from on_snapshot, on_batch and on_state are logged; following goes on."""

    class Raising(Recorder):
        def on_snapshot(self, snapshot: Snapshot) -> None:
            super().on_snapshot(snapshot)
            raise RuntimeError("consumer bug in on_snapshot (expected by the test)")

        def on_batch(self, batch: Batch) -> None:
            super().on_batch(batch)
            raise RuntimeError("consumer bug in on_batch (expected by the test)")

        def on_state(self, state: FollowerState) -> None:
            super().on_state(state)
            raise RuntimeError("consumer bug in on_state (expected by the test)")

    start = etcd_server.revision()
    _, rec = follow(client, prefix, Raising())
    wait_until(connected_at(rec, start), what="connected")
    first = etcd_server.put(prefix + "a", "1")
    second = etcd_server.put(prefix + "b", "2")
    wait_until(connected_at(rec, second), what="both batches")
    assert [b.revision for b in rec.batches] == [first, second]


def test_follower_resyncs_after_compaction_without_losing_anything(
    clients: Callable[..., EtcdClient], own_etcd: EtcdServer, prefix: str, follow: Any
) -> None:
    """Cut off while etcd moves on and compacts past its revision, the follower comes back
    with one fresh snapshot holding every change, then follows again."""
    own_etcd.put(prefix + "a", "1")
    start = own_etcd.put(prefix + "b", "1")
    _, rec = follow(clients([own_etcd.endpoint]), prefix)
    wait_until(connected_at(rec, start), what="connected")

    own_etcd.stop()
    own_etcd.start(serve_clients=False)  # the follower's endpoint stays closed
    wait_until(lambda: rec.state.state == "disconnected", what="disconnected")
    own_etcd.put(prefix + "a", "2")
    own_etcd.delete(prefix + "b")
    moved = own_etcd.put(prefix + "c", "3")
    own_etcd.compact(moved)
    own_etcd.stop()
    own_etcd.start()

    wait_until(connected_at(rec, moved), what="connected again", timeout=10)
    assert [s.revision for s in rec.snapshots] == [start, moved]
    assert rec.batches == []
    assert rec.view == {prefix + "a": b"2", prefix + "c": b"3"}
    after = own_etcd.put(prefix + "d", "4")
    wait_until(connected_at(rec, after), what="the write after the resync")
    assert rec.keys_changed() == [prefix + "d"]


def test_follower_outage_loses_nothing_and_repeats_nothing(
    clients: Callable[..., EtcdClient], own_etcd: EtcdServer, prefix: str, follow: Any
) -> None:
    """etcd stops: disconnected, with the reason. A write made while the follower could
    not reach etcd and one made once it is back are each delivered exactly once, with
    no second snapshot."""
    start = own_etcd.put(prefix + "a", "1")
    _, rec = follow(clients([own_etcd.endpoint]), prefix, backoff_initial=0.5)
    wait_until(connected_at(rec, start), what="connected")

    own_etcd.stop()
    wait_until(lambda: rec.state.state == "disconnected", what="disconnected")
    assert rec.state.revision == start
    assert rec.state.last_error is not None and own_etcd.endpoint in rec.state.last_error

    own_etcd.start(serve_clients=False)  # etcd is back, but not for the follower yet
    during = own_etcd.put(prefix + "during", "written while the follower was cut off")
    own_etcd.stop()
    own_etcd.start()
    after = own_etcd.put(prefix + "after", "written once etcd was back")  # before any retry

    wait_until(connected_at(rec, after), what="both writes", timeout=10)
    # One batch each, or one for both if the follower came back after both (a watch
    # catching up on history merges revisions); never one twice.
    assert rec.keys_changed() == [prefix + "during", prefix + "after"]
    assert rec.batches[0].events[0].mod_revision == during
    assert rec.snapshot_count() == 1
    assert sorted(rec.view) == [prefix + "a", prefix + "after", prefix + "during"]


def test_follower_resyncs_when_etcd_comes_back_behind_it(
    clients: Callable[..., EtcdClient], own_etcd: EtcdServer, prefix: str, follow: Any
) -> None:
    """etcd restored to an older state (here: wiped, so revision 1) on the same endpoint:
    the follower notices etcd is behind it and delivers a fresh snapshot of what is there."""
    for n in range(5):
        ahead = own_etcd.put(prefix + f"k{n}", "before the restore")
    _, rec = follow(clients([own_etcd.endpoint]), prefix)
    wait_until(connected_at(rec, ahead), what="connected")

    own_etcd.wipe()
    own_etcd.start(serve_clients=False)
    restored = own_etcd.put(prefix + "only", "after the restore")
    assert restored < ahead
    own_etcd.stop()
    own_etcd.start()

    wait_until(connected_at(rec, restored), what="the fresh snapshot", timeout=10)
    assert [s.revision for s in rec.snapshots] == [ahead, restored]
    assert rec.view == {prefix + "only": b"after the restore"}
    later = own_etcd.put(prefix + "later", "x")
    wait_until(connected_at(rec, later), what="the write after the restore")
    assert rec.keys_changed() == [prefix + "later"]


# --------------------------------------------------------------------------
# The fixture itself
# --------------------------------------------------------------------------


def test_etcd_server_restarts_on_its_ports_with_its_data(own_etcd: EtcdServer) -> None:
    """stop() and start() bring the same endpoint back with the same data; wipe() empties it."""
    endpoint, written = own_etcd.endpoint, own_etcd.put("/fixture/a", "1")
    own_etcd.stop()
    assert not port_accepts(own_etcd.client_port)
    own_etcd.start(serve_clients=False)
    assert not port_accepts(own_etcd.client_port)
    assert own_etcd.revision() == written
    own_etcd.stop()
    own_etcd.start()
    assert own_etcd.endpoint == endpoint and port_accepts(own_etcd.client_port)
    own_etcd.wipe()
    own_etcd.start()
    assert own_etcd.revision() == 1


def test_missing_etcd_is_an_error_with_an_install_hint(tmp_path: Path) -> None:
    """Without etcd the tests fail with how to install it, never skip."""
    with pytest.raises(RuntimeError, match="apt-get install -y etcd-server etcd-client"):
        etcd_binary(search_path=str(tmp_path), fallback=str(tmp_path / "etcd"))


def test_a_quiet_watch_is_renewed_from_the_next_revision() -> None:
    """A watch on a connection that died silently would wait for ever: every
    REWATCH_AFTER seconds a new one replaces it, from revision + 1 (nothing lost or
    repeated), and a batch on the old one after that is not delivered."""
    fake = FakeEtcd()
    fake.up = True
    clock, follower, rec = _clock_follower(fake, rewatch_after=60.0)
    follower.start()
    first = fake.watches[-1]
    first.created(5)
    clock.advance(60.0)
    assert first.cancelled
    second = fake.watches[-1]
    assert second is not first and second.start_revision == follower.revision + 1
    second.created(5)
    assert rec.state.state == "connected"
