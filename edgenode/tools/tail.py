"""`edgenode tail`: follow the access log (SPEC §6) and summarise it, live or once.

Three layers, each usable alone:

- `Follower` turns a file that is appended to, rotated (`mv` + a new file) and
  truncated into a stream of whole lines. It polls with `stat`, so it needs no
  inotify and works on any filesystem. A line is handed out only once its "\\n" has
  been written; a torn last line is held until it is completed.
- `LogSummary` is the pure core: `add(record, now)` for each parsed record,
  `snapshot(now)` for plain data (counts, nearest-rank percentiles, origin failures,
  the last errors). Every structure in it is bounded, so memory stays flat however
  long it runs; `Rates` turns successive snapshots into requests/s and bytes/s.
- The rendering layer: a `rich` live view refreshed every second, the static
  summary of `--once`, and the matching lines themselves for `--json`.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from edgenode.accesslog import parse_line
from edgenode.hostnames import normalize_hostname

PROG: Final = "edgenode"
# The exit codes of every edgenode tool (SPEC §6; cli.py uses the same numbers).
EXIT_OK: Final = 0
EXIT_USAGE: Final = 2  # usage error, or the log could not be read

UNKNOWN_DOMAIN: Final = "_unknown"  # rows for records whose `domain` is null (unknown hosts)
OTHER_DOMAINS: Final = "_other"  # where domains beyond MAX_DOMAINS are counted
TOTAL: Final = "_total"

POLL_SECONDS: Final = 0.25  # how often the file is stat()ed when there is nothing to read
REFRESH_SECONDS: Final = 1.0  # how often the live view is redrawn
LATENCY_SAMPLES: Final = 10_000  # percentile window per domain (and for the total) ...
LATENCY_SECONDS: Final = 60.0  # ... and, when following, at most this old
RATE_WINDOW_SECONDS: Final = 10.0  # the sliding window of the second requests/s column
MAX_DOMAINS: Final = 256  # rows kept; bounds memory if a log holds very many domains
MAX_FAILURE_GROUPS: Final = 1_000
RECENT_ERRORS: Final = 10
PERCENTILES: Final = (50, 95, 99)
STATUS_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx")
ONCE_COLUMNS: Final = (
    "domain",
    "requests",
    *STATUS_CLASSES,
    *(f"p{p}_ms" for p in PERCENTILES),
    "bytes",
)


# --- following a file ----------------------------------------------------------------------


class _OpenLog:
    """One open generation of the log file: its identity, read position and partial line."""

    def __init__(self, file: IO[bytes], position: int, now: float, *, skip: bool = False) -> None:
        st = os.fstat(file.fileno())
        self.file = file
        self.identity = (st.st_dev, st.st_ino)
        self.position = position
        self.pending = b""  # bytes after the last "\n": a line still being written
        self.skipping = skip  # discard up to the next "\n" (reading started mid-line)
        self.at_eof = False
        self.last_data = now  # when it last grew; a retired file is closed once quiet
        file.seek(position)

    def close(self) -> None:
        self.file.close()


class Follower:
    """Whole lines appended to `path`, across rotation and truncation, found by polling.

    Rotation: when `path` names a different file (inode) than the one being read, the
    old file is read to its end, then the new one from its start. The old file stays
    open until it has been quiet for `drain_seconds`, so lines a writer still appends
    to it before it reopens (logrotate's `create` mode) are not lost. Truncation: when
    the file shrinks below the read position, reading restarts at 0. Each poll reads
    at most `max_read` bytes, and a line longer than `max_line` bytes is dropped
    (counted in `discarded`), so memory stays bounded whatever the file holds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        from_start: bool = False,
        clock: Callable[[], float] = time.monotonic,
        drain_seconds: float = 5.0,
        max_line: int = 1 << 20,
        read_size: int = 1 << 16,
        max_read: int = 1 << 20,
    ) -> None:
        self.path = Path(path)
        self.from_start = from_start
        self.clock = clock
        self.drain_seconds = drain_seconds
        self.max_line = max_line
        self.read_size = read_size
        self.max_read = max_read
        self.current: _OpenLog | None = None
        self.retired: list[_OpenLog] = []  # rotated-away files still being drained, oldest first
        self.size_at_open = 0
        self.discarded = 0  # partial or oversized lines dropped
        self.rotations = 0
        self.truncations = 0

    def open(self) -> None:
        """Open `path` at its end (or its start); raise OSError if it cannot be read."""
        file = self.path.open("rb", buffering=0)
        try:
            size = os.fstat(file.fileno()).st_size
            position, skip = (0, False) if self.from_start else _start_of_last_line(file, size)
            self.current = _OpenLog(file, position, self.clock(), skip=skip)
        except BaseException:
            file.close()
            raise
        self.size_at_open = size

    def close(self) -> None:
        for log in self.retired:
            log.close()
        if self.current is not None:
            self.current.close()
        self.retired = []
        self.current = None

    @property
    def at_eof(self) -> bool:
        """Everything written so far has been read (the caller may sleep before polling)."""
        logs = [*self.retired, *([self.current] if self.current else [])]
        return all(log.at_eof for log in logs)

    @property
    def position(self) -> int:
        return self.current.position if self.current else 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of a line whose "\\n" has not been written yet (a torn last line)."""
        return len(self.current.pending) if self.current else 0

    def poll(self) -> list[bytes]:
        """Check for rotation and truncation, then return the whole lines written since.

        Lines of a rotated-away file all come before those of the file that replaced it.
        Without a prior `open()`, the file is opened (when it exists) from its start.
        """
        self._check_path()
        lines: list[bytes] = []
        budget = self.max_read
        now = self.clock()
        for log in list(self.retired):
            budget = self._read(log, lines, budget)
            if not log.at_eof:
                return lines  # still catching up with an old file
            if now - log.last_data >= self.drain_seconds:
                self.retired.remove(log)
                self._close(log)
        if self.current is not None:
            self._read(self.current, lines, budget)
        return lines

    def read_available(self) -> list[bytes]:
        """The whole lines of the current file from its position: at most `max_read` bytes."""
        lines: list[bytes] = []
        if self.current is not None:
            self._read(self.current, lines, self.max_read)
        return lines

    def _check_path(self) -> None:
        if self.current is None:
            self._open_replacement()
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return  # rotated away and not yet recreated: keep reading the old file
        current = self.current
        if (st.st_dev, st.st_ino) != current.identity:
            self.rotations += 1
            self.retired.append(current)
            while len(self.retired) > 4:  # only if rotated faster than we can drain
                self._close(self.retired.pop(0))
            self.current = None
            self._open_replacement()
        elif os.fstat(current.file.fileno()).st_size < current.position:
            self.truncations += 1
            if current.pending or current.skipping:
                self.discarded += 1
            current.position = 0
            current.pending = b""
            current.skipping = False
            current.at_eof = False
            current.file.seek(0)

    def _open_replacement(self) -> None:
        """Open the file `path` now names, from its start (it appeared after a rotation)."""
        try:
            file = self.path.open("rb", buffering=0)
        except OSError:
            return  # not there (yet): try again on the next poll
        self.current = _OpenLog(file, 0, self.clock())

    def _close(self, log: _OpenLog) -> None:
        if log.pending or log.skipping:
            self.discarded += 1  # a line the old file will never complete
        log.close()

    def _read(self, log: _OpenLog, lines: list[bytes], budget: int) -> int:
        """Append the whole lines of `log` to `lines`, reading up to `budget` bytes."""
        while budget > 0:
            chunk = log.file.read(min(self.read_size, budget))
            if not chunk:
                log.at_eof = True
                return budget
            log.position += len(chunk)
            log.last_data = self.clock()
            budget -= len(chunk)
            self._split(log, chunk, lines)
        log.at_eof = False
        return 0

    def _split(self, log: _OpenLog, chunk: bytes, lines: list[bytes]) -> None:
        if log.skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            log.skipping = False
            chunk = chunk[newline + 1 :]
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            log.pending += parts[0]
        else:
            parts[0] = log.pending + parts[0]
            log.pending = parts.pop()
            lines += [part for part in parts if part]
        if len(log.pending) > self.max_line:
            self.discarded += 1
            log.pending = b""
            log.skipping = True


def _start_of_last_line(file: IO[bytes], size: int, lookback: int = 1 << 16) -> tuple[int, bool]:
    """Where `tail -f` should start: the end, or the start of a last line still being written.

    Returns (position, skip): skip means the partial line began more than `lookback`
    bytes back, so reading starts at the end and drops the rest of that line.
    """
    if size == 0:
        return 0, False
    start = max(0, size - lookback)
    file.seek(start)
    block = file.read(size - start)
    if block.endswith(b"\n"):
        return size, False
    newline = block.rfind(b"\n")
    if newline >= 0:
        return start + newline + 1, False
    return (0, False) if start == 0 else (size, True)


# --- the pure core: counting and percentiles -----------------------------------------------


def nearest_rank(sorted_values: Sequence[float], percentile: int) -> float | None:
    """The nearest-rank percentile: the smallest value with at least p% of values <= it."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, -(-percentile * n // 100))  # ceil(p/100 * n) in integers
    return sorted_values[rank - 1]


class LatencyWindow:
    """The last `size` durations and when they were seen, in memory fixed by `size`."""

    __slots__ = ("_durations", "_next", "_seen", "size")

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self.size = size
        self._durations = array("d")
        self._seen = array("d")
        self._next = 0  # where the next sample goes once the arrays are full

    def add(self, duration: float, now: float) -> None:
        if len(self._durations) < self.size:
            self._durations.append(duration)
            self._seen.append(now)
        else:
            i = self._next
            self._durations[i] = duration
            self._seen[i] = now
            self._next = (i + 1) % self.size

    def values(self, since: float | None = None) -> list[float]:
        """The durations seen at or after `since` (all kept ones if None), sorted."""
        if since is None:
            return sorted(self._durations)
        return sorted(d for d, t in zip(self._durations, self._seen, strict=True) if t >= since)


class _Counts:
    """Running totals for one row (a domain, or all of them)."""

    __slots__ = ("bytes", "classes", "errors", "latency", "requests")

    def __init__(self, latency_samples: int) -> None:
        self.requests = 0
        self.classes = [0, 0, 0, 0, 0, 0]  # index status // 100 for 1xx..5xx; 0 = no status
        self.bytes = 0
        self.errors = 0
        self.latency = LatencyWindow(latency_samples)


@attrs.frozen
class DomainStats:
    """One row of the summary: counts since the start, percentiles over the latency window."""

    domain: str
    requests: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    other_status: int  # 1xx, or no status at all
    errors: int  # records with an error code
    bytes_sent: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    latency_samples: int  # how many durations the percentiles were taken over

    def column(self, name: str) -> object:
        """The value of one of ONCE_COLUMNS."""
        if name in STATUS_CLASSES:
            return getattr(self, f"status_{name}")
        return self.bytes_sent if name == "bytes" else getattr(self, name)


@attrs.frozen
class FailureGroup:
    """Origin failures sharing (domain, origin, sni, error): TLS, certificate, connect, timeout."""

    domain: str
    origin: str | None
    sni: str | None
    error: str
    count: int
    last_ts: str | None
    last_detail: str | None


@attrs.frozen
class RecentError:
    """One of the last records that carried an error code or a 5xx status."""

    ts: str | None
    request_id: str
    domain: str
    status: int | None
    error: str | None
    detail: str | None


@attrs.frozen
class Snapshot:
    """Everything the views show, as plain data."""

    total: DomainStats
    domains: tuple[DomainStats, ...]  # most requests first, then by name
    failures: tuple[FailureGroup, ...]  # most frequent first
    recent_errors: tuple[RecentError, ...]  # newest last
    records: int
    unparsable: int
    skipped: int  # parsed, but outside the filters


class LogSummary:
    """Counts access-log records; every structure is bounded (see the *_MAX constants)."""

    def __init__(
        self,
        *,
        latency_seconds: float | None = LATENCY_SECONDS,
        latency_samples: int = LATENCY_SAMPLES,
        max_domains: int = MAX_DOMAINS,
    ) -> None:
        self.latency_seconds = latency_seconds  # None: percentiles over the last N samples only
        self.latency_samples = latency_samples
        self.max_domains = max_domains
        self.total = _Counts(latency_samples)
        self.domains: dict[str, _Counts] = {}
        self.failures: dict[tuple[str, str | None, str | None, str], list[Any]] = {}
        self.recent: collections.deque[RecentError] = collections.deque(maxlen=RECENT_ERRORS)
        self.records = 0
        self.unparsable = 0  # lines that are not access-log records (counted by the caller)
        self.skipped = 0  # records outside the filters (counted by the caller)

    def add(self, record: dict[str, Any], now: float = 0.0) -> None:
        """Count one parsed record, seen at `now` (seconds, any monotonic clock)."""
        self.records += 1
        domain = record.get("domain")
        if not isinstance(domain, str):
            domain = UNKNOWN_DOMAIN
        counts = self.domains.get(domain)
        if counts is None:
            if len(self.domains) >= self.max_domains:
                domain = OTHER_DOMAINS
            counts = self.domains.get(domain)
            if counts is None:
                counts = self.domains[domain] = _Counts(self.latency_samples)
        status = record.get("status")
        cls = status // 100 if type(status) is int and 100 <= status <= 599 else 0
        sent = record.get("bytes_sent")
        sent = sent if type(sent) is int else 0
        for row in (counts, self.total):
            row.requests += 1
            row.classes[cls] += 1
            row.bytes += sent
        duration = record.get("duration_ms")
        if type(duration) is float or type(duration) is int:
            counts.latency.add(duration, now)
            self.total.latency.add(duration, now)
        error = record.get("error")
        if error is not None or cls == 5:
            self._add_error(record, domain, error, status, counts)

    def _add_error(
        self, record: dict[str, Any], domain: str, error: Any, status: Any, counts: _Counts
    ) -> None:
        error = str(error) if error is not None else None
        detail = record.get("error_detail")
        detail = str(detail) if detail is not None else None
        ts = record.get("ts") if isinstance(record.get("ts"), str) else None
        if error is not None:
            counts.errors += 1
            self.total.errors += 1
        if error is not None and error.startswith("origin_"):
            origin, sni = record.get("origin"), record.get("sni")
            key = (
                domain,
                origin if isinstance(origin, str) else None,
                sni if isinstance(sni, str) else None,
                error,
            )
            group = self.failures.get(key)
            if group is None and len(self.failures) < MAX_FAILURE_GROUPS:
                group = self.failures[key] = [0, None, None]
            if group is not None:  # beyond MAX_FAILURE_GROUPS a new group is not counted
                group[0] += 1
                group[1] = ts
                group[2] = detail
        self.recent.append(
            RecentError(
                ts=ts,
                request_id=str(record.get("request_id")),
                domain=domain,
                status=status if type(status) is int else None,
                error=error,
                detail=detail,
            )
        )

    def snapshot(self, now: float = 0.0) -> Snapshot:
        """The counts so far and percentiles over the window ending at `now`."""
        since = None if self.latency_seconds is None else now - self.latency_seconds
        rows = [self._stats(name, counts, since) for name, counts in self.domains.items()]
        rows.sort(key=lambda row: (-row.requests, row.domain))
        failures = [
            FailureGroup(*key, count=count, last_ts=ts, last_detail=detail)
            for key, (count, ts, detail) in self.failures.items()
        ]
        failures.sort(key=lambda g: (-g.count, g.domain, g.origin or "", g.sni or "", g.error))
        return Snapshot(
            total=self._stats(TOTAL, self.total, since),
            domains=tuple(rows),
            failures=tuple(failures),
            recent_errors=tuple(self.recent),
            records=self.records,
            unparsable=self.unparsable,
            skipped=self.skipped,
        )

    @staticmethod
    def _stats(name: str, counts: _Counts, since: float | None) -> DomainStats:
        durations = counts.latency.values(since)
        p50, p95, p99 = (nearest_rank(durations, p) for p in PERCENTILES)
        c = counts.classes
        return DomainStats(
            domain=name,
            requests=counts.requests,
            status_2xx=c[2],
            status_3xx=c[3],
            status_4xx=c[4],
            status_5xx=c[5],
            other_status=c[0] + c[1],
            errors=counts.errors,
            bytes_sent=counts.bytes,
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            latency_samples=len(durations),
        )


@attrs.frozen
class Rate:
    """Requests/s and bytes/s of one row, over the last refresh and the sliding window."""

    requests_now: float
    requests_window: float
    bytes_now: float
    bytes_window: float


class Rates:
    """Per-second rates from successive snapshots' running totals (no per-record cost)."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.history: collections.deque[tuple[float, dict[str, tuple[int, int]]]] = (
            collections.deque()
        )

    def update(self, now: float, snapshot: Snapshot) -> dict[str, Rate]:
        """Record `snapshot` taken at `now`; return the rates per domain and for TOTAL."""
        totals = {row.domain: (row.requests, row.bytes_sent) for row in snapshot.domains}
        totals[TOTAL] = (snapshot.total.requests, snapshot.total.bytes_sent)
        previous = self.history[-1] if self.history else None
        self.history.append((now, totals))
        while len(self.history) > 2 and self.history[1][0] <= now - self.window:
            self.history.popleft()
        oldest = self.history[0] if len(self.history) > 1 else None
        rates: dict[str, Rate] = {}
        for name, (requests, sent) in totals.items():
            now_r, now_b = _per_second(previous, now, name, requests, sent)
            win_r, win_b = _per_second(oldest, now, name, requests, sent)
            rates[name] = Rate(now_r, win_r, now_b, win_b)
        return rates


def _per_second(
    then: tuple[float, dict[str, tuple[int, int]]] | None,
    now: float,
    name: str,
    requests: int,
    sent: int,
) -> tuple[float, float]:
    if then is None or now <= then[0]:
        return 0.0, 0.0
    before_r, before_b = then[1].get(name, (0, 0))
    elapsed = now - then[0]
    return (requests - before_r) / elapsed, (sent - before_b) / elapsed


# --- filters -------------------------------------------------------------------------------


@attrs.frozen
class StatusFilter:
    """`--status`: classes such as 5xx and exact codes such as 502, comma-separated."""

    classes: frozenset[int]
    codes: frozenset[int]
    text: str

    def __call__(self, status: object) -> bool:
        if type(status) is not int:
            return False
        return status in self.codes or status // 100 in self.classes


def parse_status_filter(text: str) -> StatusFilter:
    """'5xx', '4xx,5xx', '502' → a StatusFilter; anything else is a usage error (exit 2)."""
    classes: set[int] = set()
    codes: set[int] = set()
    for raw in text.split(","):
        item = raw.strip().lower()
        if len(item) == 3 and item[0] in "12345" and item[1:] == "xx":
            classes.add(int(item[0]))
        elif len(item) == 3 and item.isdigit() and 100 <= int(item) <= 599:
            codes.add(int(item))
        else:
            raise argparse.ArgumentTypeError(
                f"{raw.strip()!r} is not a status; use a class such as 5xx or a code such as 502"
            )
    return StatusFilter(frozenset(classes), frozenset(codes), text)


def parse_domain_filter(text: str) -> str:
    """A domain as the access log writes it: lower case, A-labels, no trailing dot."""
    if text.strip() == UNKNOWN_DOMAIN:
        return UNKNOWN_DOMAIN
    try:
        return normalize_hostname(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@attrs.frozen
class RecordFilter:
    """Which records the tool shows: all of them unless --domain / --status narrow it."""

    domains: frozenset[str] = frozenset()
    status: StatusFilter | None = None

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.domains:
            domain = record.get("domain")
            if (domain if isinstance(domain, str) else UNKNOWN_DOMAIN) not in self.domains:
                return False
        return self.status is None or self.status(record.get("status"))

    def describe(self) -> str:
        parts = [f"domain {d}" for d in sorted(self.domains)]
        if self.status is not None:
            parts.append(f"status {self.status.text}")
        return ", ".join(parts)


# --- the engine: lines → filter → summary or sink ------------------------------------------


class Tail:
    """Feeds each line the follower yields through the filter into the summary or a sink."""

    def __init__(
        self,
        follower: Follower,
        record_filter: RecordFilter,
        summary: LogSummary,
        sink: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.follower = follower
        self.filter = record_filter
        self.summary = summary
        self.sink = sink  # --json: receives the matching lines; the summary then only counts
        self._discarded_seen = 0

    def step(self, now: float) -> int:
        """Poll once (rotation, truncation, new lines); return how many lines were read."""
        return self.feed(self.follower.poll(), now)

    def feed(self, lines: Iterable[bytes], now: float) -> int:
        summary, keep, matched = self.summary, self.filter, []
        add = summary.add if self.sink is None else None
        n = 0
        for line in lines:
            n += 1
            record = parse_line(line)
            if record is None:
                summary.unparsable += 1
            elif not keep(record):
                summary.skipped += 1
            elif add is not None:
                add(record, now)
            else:
                summary.records += 1
                matched.append(line)
        discarded = self.follower.discarded
        if discarded != self._discarded_seen:
            summary.unparsable += discarded - self._discarded_seen
            self._discarded_seen = discarded
        if matched and self.sink is not None:
            self.sink(matched)
        return n

    def read_once(self, now: float) -> None:
        """Read the file as it is now, from the follower's position to the size it had."""
        follower = self.follower
        while True:
            self.feed(follower.read_available(), now)
            if follower.at_eof or follower.position >= follower.size_at_open:
                return


def follow(
    tail: Tail,
    on_refresh: Callable[[float], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    until: Callable[[], bool] | None = None,
    poll_seconds: float = POLL_SECONDS,
    refresh_seconds: float = REFRESH_SECONDS,
) -> None:
    """Poll `tail` until `until()` is true (or forever), calling `on_refresh` every second.

    A backlog is read without sleeping, at most `Follower.max_read` bytes per step,
    so the view keeps refreshing while the tool catches up.
    """
    next_refresh = clock() + refresh_seconds
    while until is None or not until():
        now = clock()
        tail.step(now)
        if on_refresh is not None and now >= next_refresh:
            on_refresh(now)
            next_refresh = now + refresh_seconds
        if tail.follower.at_eof:
            sleep(poll_seconds)


# --- rendering -----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _status_style(cls: str) -> str:
    return {"4xx": "yellow", "5xx": "red"}.get(cls, "")


def _summary_line(path: Path, snap: Snapshot, record_filter: RecordFilter, extra: str = "") -> str:
    parts = [f"{snap.records:,} records"]
    if record_filter.describe():
        parts.append(f"filter: {record_filter.describe()} ({snap.skipped:,} other records)")
    parts.append(f"{snap.unparsable:,} unparsable")
    if extra:
        parts.append(extra)
    return f"{PROG} tail {path}: " + ", ".join(parts)


def once_table(snap: Snapshot) -> Table:
    """The --once summary: one row per domain, the total as footer; columns ONCE_COLUMNS."""
    columns = [_Column(name, right=name != "domain") for name in ONCE_COLUMNS]
    rows = [[_once_cell(row, name) for name in ONCE_COLUMNS] for row in snap.domains]
    return _table(columns, rows, footer=[_once_cell(snap.total, name) for name in ONCE_COLUMNS])


def _once_cell(row: DomainStats, name: str) -> str:
    value = row.column(name)
    if name.endswith("_ms"):
        return _ms(value)  # type: ignore[arg-type]
    return str(value)


@attrs.frozen
class _Column:
    """A column of a rendered table and how it gives way on a narrow terminal."""

    name: str
    right: bool = False
    drop: int = 0  # dropped, highest first, when the table is too wide; 0 = always shown
    flexible: bool = False  # shortened with "…" (down to `shortest`) before anything is dropped
    shortest: int = 10


Cell = str | Text


def _table(
    columns: Sequence[_Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    footer: Sequence[Cell] | None = None,
    width: int | None = None,
) -> Table:
    """A borderless table; with `width`, it is fitted to that many terminal columns.

    Columns are dropped, highest `drop` first, until the rest fit with every flexible
    column at its `shortest`; flexible columns then widen, in order, into what is left
    (ending in "…" when cut).
    """
    keep = list(range(len(columns)))
    limits: dict[int, int] = {}
    if width is not None:
        sized = [*rows, footer] if footer is not None else rows
        natural = [
            max(len(str(cell)) for cell in [col.name, *(row[i] for row in sized if i < len(row))])
            for i, col in enumerate(columns)
        ]

        def least(i: int) -> int:
            return min(natural[i], columns[i].shortest) if columns[i].flexible else natural[i]

        def needed(kept: list[int]) -> int:
            return sum(least(i) for i in kept) + 3 * (len(kept) - 1)  # 3: padding, separator

        for i in sorted(range(len(columns)), key=lambda i: -columns[i].drop):
            if needed(keep) <= width or columns[i].drop == 0:
                break
            keep.remove(i)
        spare = width - needed(keep)
        for i in keep:  # flexible columns widen in column order: the first matters most
            limits[i] = least(i) + max(0, min(natural[i] - least(i), spare))
            spare -= limits[i] - least(i)
        for i in reversed(keep):  # still too wide: flexible columns give way, last first
            if spare < 0 and columns[i].flexible:
                cut = min(-spare, limits[i] - 6)
                limits[i] -= cut
                spare += cut
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE if footer is not None else box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        show_footer=footer is not None,
    )
    for i in keep:
        col = columns[i]
        table.add_column(
            col.name,
            footer=footer[i] if footer is not None else "",
            justify="right" if col.right else "left",
            no_wrap=True,
            overflow="ellipsis",
            style=_status_style(col.name),
            footer_style="bold",
            width=limits.get(i),
        )
    for row in rows:
        table.add_row(*(row[i] if i < len(row) else "" for i in keep))
    return table


def failures_table(snap: Snapshot, *, limit: int | None = None, width: int | None = None) -> Table:
    """Origin failures grouped by (domain, origin, sni, error), most frequent first."""
    columns = [
        _Column("domain", flexible=True, shortest=20),
        _Column("origin"),
        _Column("sni", flexible=True, shortest=20),
        _Column("error"),
        _Column("count", right=True),
        _Column("last", drop=2),
        _Column("detail", flexible=True, drop=1, shortest=20),
    ]
    rows = [
        [
            group.domain,
            group.origin or "-",
            group.sni or "(none)",  # no SNI extension was sent
            Text(group.error, style="red"),
            f"{group.count:,}",
            _when(group.last_ts, short=width is not None),
            group.last_detail or "",
        ]
        for group in snap.failures[:limit]
    ]
    title = "origin failures by (domain, origin, sni, error)"
    return _table(columns, rows, title=title, width=width)


def errors_table(snap: Snapshot, *, width: int | None = None) -> Table:
    """The last errors (an error code, or a 5xx), newest first, with their request ids."""
    columns = [
        _Column("ts"),
        _Column("request_id"),
        _Column("domain", flexible=True, shortest=20),
        _Column("status", right=True),
        _Column("error"),
        _Column("detail", flexible=True, drop=2, shortest=24),
    ]
    rows = [
        [
            _when(err.ts, short=width is not None),
            err.request_id,
            err.domain,
            "-" if err.status is None else str(err.status),
            err.error or "-",
            err.detail or "",
        ]
        for err in reversed(snap.recent_errors)
    ]
    return _table(columns, rows, title="last errors, newest first", width=width)


def _when(ts: str | None, *, short: bool) -> str:
    """A record's `ts`; in the live view only its time of day (UTC) with milliseconds."""
    if ts is None:
        return "-"
    return ts[11:23] if short and len(ts) >= 23 else ts


def print_once(out: IO[str], path: Path, snap: Snapshot, tail: Tail) -> None:
    """The static summary of --once: a header line, the domain table, failures, errors.

    Tables are as wide as their content (never truncated to the terminal), and
    trailing spaces are stripped, so the text is stable for scripts and tests.
    """
    extra = "1 incomplete last line (not counted)" if tail.follower.pending_bytes else ""
    parts: list[RenderableType] = [Text(_summary_line(path, snap, tail.filter, extra)), Text("")]
    parts.append(once_table(snap))
    if snap.failures:
        parts += [Text(""), failures_table(snap)]
    if snap.recent_errors:
        parts += [Text(""), errors_table(snap)]
    colour = out.isatty()
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False, force_terminal=colour, no_color=not colour)
    unlimited = console.options.update_width(1 << 16)
    console.width = max(Measurement.get(console, unlimited, part).maximum for part in parts)
    for part in parts:
        console.print(part)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
    out.flush()


def live_view(
    path: Path,
    snap: Snapshot,
    rates: dict[str, Rate],
    tail: Tail,
    *,
    width: int = 160,
    max_rows: int = 20,
) -> RenderableType:
    """One frame of the live view, fitted to a terminal `width` columns wide."""
    follower = tail.follower
    state = []
    if follower.rotations:
        state.append(_count(follower.rotations, "rotation"))
    if follower.truncations:
        state.append(_count(follower.truncations, "truncation"))
    state.append(time.strftime("%H:%M:%S"))
    header = Text(_summary_line(path, snap, tail.filter, ", ".join(state)), style="bold")

    window = f"{RATE_WINDOW_SECONDS:.0f}s"
    columns = [
        _Column("domain", flexible=True, shortest=12),
        _Column("req/s", right=True),
        _Column(f"req/s {window}", right=True, drop=7),
        _Column("requests", right=True),
        _Column("2xx", right=True, drop=5),
        _Column("3xx", right=True, drop=8),
        _Column("4xx", right=True, drop=2),
        _Column("5xx", right=True),
        _Column("p50 ms", right=True, drop=3),
        _Column("p95 ms", right=True, drop=6),
        _Column("p99 ms", right=True),
        _Column("bytes/s", right=True, drop=4),
        _Column(f"bytes/s {window}", right=True, drop=9),
    ]
    zero = Rate(0.0, 0.0, 0.0, 0.0)

    def cells(row: DomainStats) -> list[Cell]:
        rate = rates.get(row.domain, zero)
        return [
            row.domain,
            _rate(rate.requests_now),
            _rate(rate.requests_window),
            f"{row.requests:,}",
            f"{row.status_2xx:,}",
            f"{row.status_3xx:,}",
            f"{row.status_4xx:,}",
            f"{row.status_5xx:,}",
            _ms(row.p50_ms),
            _ms(row.p95_ms),
            _ms(row.p99_ms),
            _bytes(rate.bytes_now),
            _bytes(rate.bytes_window),
        ]

    rows = [cells(row) for row in snap.domains[:max_rows]]
    if len(snap.domains) > max_rows:
        rows.append([f"… {len(snap.domains) - max_rows} more"])
    traffic = _table(columns, rows, footer=cells(snap.total), width=width)
    parts: list[RenderableType] = [header, traffic]
    if snap.failures:
        parts.append(failures_table(snap, limit=8, width=width))
    if snap.recent_errors:
        parts.append(errors_table(snap, width=width))
    return Group(*parts)


# --- the command ---------------------------------------------------------------------------


def add_tail_command(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`edgenode tail PATH`: follow the access log with a live view, or summarise it once."""
    tail = subcommands.add_parser(
        "tail",
        help="follow the access log: live requests/s, statuses, latency, origin failures",
        description=(
            "Follow an access log (JSON Lines) across rotation and truncation and show a "
            "live view refreshed every second, or with --once summarise the file as it is "
            "and exit. Exit 2 if the file cannot be read."
        ),
    )
    tail.add_argument("path", metavar="PATH", help="the access log, e.g. logs/access.log")
    tail.add_argument(
        "--from-start", action="store_true", help="read the whole file first (default: its end)"
    )
    tail.add_argument(
        "--once", action="store_true", help="summarise the file as it is now and exit"
    )
    tail.add_argument(
        "--json",
        action="store_true",
        help="print the matching lines themselves, one per line, instead of the view",
    )
    tail.add_argument(
        "--domain",
        action="append",
        type=parse_domain_filter,
        metavar="D",
        help=f"only this domain (repeatable; {UNKNOWN_DOMAIN} = requests for unknown hosts)",
    )
    tail.add_argument(
        "--status",
        type=parse_status_filter,
        metavar="S",
        help="only these statuses: a class (5xx), a code (502), or a comma-separated list",
    )
    tail.set_defaults(run=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    path = Path(args.path)
    follower = Follower(path, from_start=args.from_start or args.once)
    try:
        follower.open()
    except OSError as err:
        print(f"{PROG}: cannot read {path}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    record_filter = RecordFilter(frozenset(args.domain or ()), args.status)
    summary = LogSummary(latency_seconds=None if args.once else LATENCY_SECONDS)
    sink = LineSink(sys.stdout) if args.json else None
    tail = Tail(follower, record_filter, summary, sink)
    try:
        if args.once:
            tail.read_once(time.monotonic())
            if sink is None:
                print_once(sys.stdout, path, summary.snapshot(), tail)
        elif sink is not None:
            follow(tail)
        else:
            run_live(path, tail)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follower is meant to stop
    except BrokenPipeError:
        _silence_stdout()  # `edgenode tail --json ... | head`: the reader has had enough
    finally:
        follower.close()
    return EXIT_OK


class LineSink:
    """Writes matching lines exactly as read, each batch flushed (for pipes)."""

    def __init__(self, out: IO[str]) -> None:
        out.flush()
        self.text = out
        self.binary: IO[bytes] | None = getattr(out, "buffer", None)

    def __call__(self, lines: list[bytes]) -> None:
        if self.binary is not None:
            self.binary.write(b"\n".join(lines) + b"\n")
            self.binary.flush()
        else:
            self.text.write("\n".join(line.decode("utf-8", "replace") for line in lines) + "\n")
            self.text.flush()


def run_live(path: Path, tail: Tail, clock: Callable[[], float] = time.monotonic) -> None:
    """The live view: redrawn in place every second from a snapshot, until Ctrl-C.

    When stdout is not a terminal, each frame is printed after the last (like `top -b`).
    """
    rates = Rates()
    console = Console()

    def frame(now: float) -> RenderableType:
        snap = tail.summary.snapshot(now)
        return live_view(path, snap, rates.update(now, snap), tail, width=console.width)

    if not console.is_terminal:
        follow(tail, lambda now: console.print(frame(now), "", crop=False), clock=clock)
        return
    with Live(frame(clock()), console=console, auto_refresh=False, transient=False) as live:
        follow(tail, lambda now: live.update(frame(now), refresh=True), clock=clock)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
